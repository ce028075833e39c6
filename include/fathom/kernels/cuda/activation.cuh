// Activation kernels on CUDA: GELU (tanh form), SiLU and fused SwiGLU, forward and backward, with
// the scalar formulas of kernels/activation.hpp and 16-byte packs where aligned.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/activation.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <cstdint>

#include "fathom/kernels/activation.hpp"
#include "fathom/kernels/cuda/primitives.cuh"

namespace fathom::kernels {

namespace detail {

struct GeluFn {
  template <class A>
  __device__ A value(A x) const {
    return gelu(x);
  }
  template <class A>
  __device__ A grad(A x) const {
    return gelu_grad(x);
  }
};

struct SiluFn {
  template <class A>
  __device__ A value(A x) const {
    return silu(x);
  }
  template <class A>
  __device__ A grad(A x) const {
    return silu_grad(x);
  }
};

template <class T, class Fn>
struct ActivationMap {
  ActivationParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    auto x = map_load<N>(p.x + i);
#pragma unroll
    for (int j = 0; j < N; ++j) x.v[j] = scalar_cast<T>(Fn{}.value(scalar_cast<A>(x.v[j])));
    map_store<N>(p.y + i, x);
  }
};

template <class T, class Fn>
struct ActivationBackwardMap {
  ActivationBackwardParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto x = map_load<N>(p.x + i);
    const auto dy = map_load<N>(p.dy + i);
    MapPack<T, N> dx;
    if (p.accumulate) dx = map_load<N>(p.dx + i);  // a fresh buffer is never read
#pragma unroll
    for (int j = 0; j < N; ++j)
      dx.v[j] = scalar_cast<T>((p.accumulate ? scalar_cast<A>(dx.v[j]) : A(0)) +
                               scalar_cast<A>(dy.v[j]) * Fn{}.grad(scalar_cast<A>(x.v[j])));
    map_store<N>(p.dx + i, dx);
  }
};

template <class T>
struct SwigluMap {
  SwigluParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto g = map_load<N>(p.gate + i);
    const auto u = map_load<N>(p.up + i);
    MapPack<T, N> y;
#pragma unroll
    for (int j = 0; j < N; ++j)
      y.v[j] = scalar_cast<T>(silu(scalar_cast<A>(g.v[j])) * scalar_cast<A>(u.v[j]));
    map_store<N>(p.y + i, y);
  }
};

// dgate and dup may be the same buffer (swiglu(x, x)): dgate is stored before dup is read.
template <class T>
struct SwigluBackwardMap {
  SwigluBackwardParams<T> p;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const auto g = map_load<N>(p.gate + i);
    const auto dy = map_load<N>(p.dy + i);
    if (p.dgate) {
      const auto u = map_load<N>(p.up + i);
      MapPack<T, N> dg;
      if (p.accumulate_dgate) dg = map_load<N>(p.dgate + i);
#pragma unroll
      for (int j = 0; j < N; ++j)
        dg.v[j] = scalar_cast<T>((p.accumulate_dgate ? scalar_cast<A>(dg.v[j]) : A(0)) +
                                 scalar_cast<A>(dy.v[j]) * scalar_cast<A>(u.v[j]) *
                                     silu_grad(scalar_cast<A>(g.v[j])));
      map_store<N>(p.dgate + i, dg);
    }
    if (p.dup) {
      MapPack<T, N> du;
      if (p.accumulate_dup) du = map_load<N>(p.dup + i);
#pragma unroll
      for (int j = 0; j < N; ++j)
        du.v[j] = scalar_cast<T>((p.accumulate_dup ? scalar_cast<A>(du.v[j]) : A(0)) +
                                 scalar_cast<A>(dy.v[j]) * silu(scalar_cast<A>(g.v[j])));
      map_store<N>(p.dup + i, du);
    }
  }
};

}  // namespace detail

template <class T>
void gelu(Cuda, const ActivationParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::ActivationMap<T, detail::GeluFn>{p}, p.n, p.x,
                                             p.y);
}

template <class T>
void gelu_backward(Cuda, const ActivationBackwardParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::ActivationBackwardMap<T, detail::GeluFn>{p},
                                             p.n, p.x, p.dy, p.dx);
}

template <class T>
void silu(Cuda, const ActivationParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::ActivationMap<T, detail::SiluFn>{p}, p.n, p.x,
                                             p.y);
}

template <class T>
void silu_backward(Cuda, const ActivationBackwardParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::ActivationBackwardMap<T, detail::SiluFn>{p},
                                             p.n, p.x, p.dy, p.dx);
}

template <class T>
void swiglu(Cuda, const SwigluParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::SwigluMap<T>{p}, p.n, p.gate, p.up, p.y);
}

template <class T>
void swiglu_backward(Cuda, const SwigluBackwardParams<T>& p) {
  if (!p.dgate && !p.dup) return;
  detail::launch_map<detail::map_width<T>()>(detail::SwigluBackwardMap<T>{p}, p.n, p.gate, p.up,
                                             p.dy, p.dgate, p.dup);
}

}  // namespace fathom::kernels
