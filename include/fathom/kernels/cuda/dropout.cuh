// Dropout on CUDA: the mask is recomputed from rng::uniform(seed, offset + i) in forward and
// backward, exactly as the CPU reference in kernels/dropout.hpp draws it, so both masks agree.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/dropout.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <cstdint>

#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/dropout.hpp"

namespace fathom::kernels {

namespace detail {

template <class T>
struct DropoutMap {
  DropoutParams<T> p;
  accum_t<T> keep_scale;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    auto x = map_load<N>(p.x + i);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool keep = dropout_keeps(p.seed, p.offset + static_cast<std::uint64_t>(i + j), p.p);
      x.v[j] = keep ? scalar_cast<T>(keep_scale * scalar_cast<A>(x.v[j])) : scalar_cast<T>(0.0f);
    }
    map_store<N>(p.y + i, x);
  }
};

template <class T>
struct DropoutBackwardMap {
  DropoutBackwardParams<T> p;
  accum_t<T> keep_scale;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto dy = map_load<N>(p.dy + i);
    auto dx = map_load<N>(p.dx + i);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (dropout_keeps(p.seed, p.offset + static_cast<std::uint64_t>(i + j), p.p))
        dx.v[j] = scalar_cast<T>(scalar_cast<A>(dx.v[j]) + keep_scale * scalar_cast<A>(dy.v[j]));
    }
    map_store<N>(p.dx + i, dx);
  }
};

}  // namespace detail

template <class T>
void dropout(Cuda, const DropoutParams<T>& p) {
  const auto keep_scale = static_cast<accum_t<T>>(1.0 / (1.0 - p.p));
  detail::launch_map<detail::map_width<T>()>(detail::DropoutMap<T>{p, keep_scale}, p.n, p.x, p.y);
}

template <class T>
void dropout_backward(Cuda, const DropoutBackwardParams<T>& p) {
  const auto keep_scale = static_cast<accum_t<T>>(1.0 / (1.0 - p.p));
  detail::launch_map<detail::map_width<T>()>(detail::DropoutBackwardMap<T>{p, keep_scale}, p.n,
                                             p.dy, p.dx);
}

}  // namespace fathom::kernels
