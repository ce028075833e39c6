// Element-wise kernels on CUDA (axpby, axpy, scale, mul and its backward, axpy_2d): the same
// Params and arithmetic as the CPU reference in kernels/elementwise.hpp, 16-byte packs where
// aligned.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/elementwise.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>

#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/elementwise.hpp"

namespace fathom::kernels {

namespace detail {

template <class T>
struct AxpbyMap {
  AxpbyParams<T> p;
  accum_t<T> alpha, beta;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto a = map_load<N>(p.a + i);
    const auto b = map_load<N>(p.b + i);
    MapPack<T, N> y;
#pragma unroll
    for (int j = 0; j < N; ++j)
      y.v[j] = scalar_cast<T>(alpha * scalar_cast<A>(a.v[j]) + beta * scalar_cast<A>(b.v[j]));
    map_store<N>(p.y + i, y);
  }
};

template <class T>
struct AxpyMap {
  AxpyParams<T> p;
  accum_t<T> alpha;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto x = map_load<N>(p.x + i);
    auto y = map_load<N>(p.y + i);
#pragma unroll
    for (int j = 0; j < N; ++j)
      y.v[j] = scalar_cast<T>(scalar_cast<A>(y.v[j]) + alpha * scalar_cast<A>(x.v[j]));
    map_store<N>(p.y + i, y);
  }
};

template <class T>
struct ScaleMap {
  ScaleParams<T> p;
  accum_t<T> s;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    auto x = map_load<N>(p.x + i);
#pragma unroll
    for (int j = 0; j < N; ++j) x.v[j] = scalar_cast<T>(s * scalar_cast<A>(x.v[j]));
    map_store<N>(p.y + i, x);
  }
};

template <class T>
struct MulMap {
  MulParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto a = map_load<N>(p.a + i);
    const auto b = map_load<N>(p.b + i);
    MapPack<T, N> y;
#pragma unroll
    for (int j = 0; j < N; ++j)
      y.v[j] = scalar_cast<T>(scalar_cast<A>(a.v[j]) * scalar_cast<A>(b.v[j]));
    map_store<N>(p.y + i, y);
  }
};

// da and db may be the same buffer (x * x): da is read, updated and stored before db is read.
template <class T>
struct MulBackwardMap {
  MulBackwardParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto g = map_load<N>(p.dy + i);
    if (p.da) {
      const auto b = map_load<N>(p.b + i);
      auto da = map_load<N>(p.da + i);
#pragma unroll
      for (int j = 0; j < N; ++j)
        da.v[j] = scalar_cast<T>(scalar_cast<A>(da.v[j]) +
                                 scalar_cast<A>(g.v[j]) * scalar_cast<A>(b.v[j]));
      map_store<N>(p.da + i, da);
    }
    if (p.db) {
      const auto a = map_load<N>(p.a + i);
      auto db = map_load<N>(p.db + i);
#pragma unroll
      for (int j = 0; j < N; ++j)
        db.v[j] = scalar_cast<T>(scalar_cast<A>(db.v[j]) +
                                 scalar_cast<A>(g.v[j]) * scalar_cast<A>(a.v[j]));
      map_store<N>(p.db + i, db);
    }
  }
};

// One thread per element of the (rows, cols) block; rows of x and y are ldx and ldy apart.
template <class T>
__global__ void axpy_2d_kernel(Axpy2dParams<T> p, accum_t<T> alpha) {
  using A = accum_t<T>;
  const std::int64_t n = p.rows * p.cols;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += step) {
    const std::int64_t r = k / p.cols, c = k % p.cols;
    T& y = p.y[r * p.ldy + c];
    y = scalar_cast<T>(scalar_cast<A>(y) + alpha * scalar_cast<A>(p.x[r * p.ldx + c]));
  }
}

}  // namespace detail

template <class T>
void axpby(Cuda, const AxpbyParams<T>& p) {
  using A = accum_t<T>;
  detail::launch_map<detail::map_width<T>()>(
      detail::AxpbyMap<T>{p, static_cast<A>(p.alpha), static_cast<A>(p.beta)}, p.n, p.a, p.b, p.y);
}

template <class T>
void axpy(Cuda, const AxpyParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(
      detail::AxpyMap<T>{p, static_cast<accum_t<T>>(p.alpha)}, p.n, p.x, p.y);
}

template <class T>
void scale(Cuda, const ScaleParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::ScaleMap<T>{p, static_cast<accum_t<T>>(p.s)},
                                             p.n, p.x, p.y);
}

template <class T>
void mul(Cuda, const MulParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::MulMap<T>{p}, p.n, p.a, p.b, p.y);
}

template <class T>
void mul_backward(Cuda, const MulBackwardParams<T>& p) {
  if (!p.da && !p.db) return;
  detail::launch_map<detail::map_width<T>()>(detail::MulBackwardMap<T>{p}, p.n, p.a, p.b, p.dy,
                                             p.da, p.db);
}

template <class T>
void axpy_2d(Cuda, const Axpy2dParams<T>& p) {
  const std::int64_t n = p.rows * p.cols;
  if (n == 0) return;
  const int threads = detail::map_threads;
  const int blocks =
      static_cast<int>(std::min(detail::map_max_blocks, (n + threads - 1) / threads));
  detail::axpy_2d_kernel<<<blocks, threads, 0, cuda::stream()>>>(p,
                                                                 static_cast<accum_t<T>>(p.alpha));
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fathom::kernels
