// Activation kernels on CUDA: GELU (tanh form), SiLU and fused SwiGLU (gate and up separate, or
// the two halves of one tensor's rows), forward and backward, with the scalar formulas of
// kernels/activation.hpp and 16-byte packs where aligned.
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

// Where element i of a SwiGLU call sits: row and column of the rows x cols grid (SwigluRows).
struct SwigluPos {
  std::int64_t row, col;
};

// One contiguous row: element i at offset i in every view.
struct SwigluOneRow {
  __device__ SwigluPos at(std::int64_t i) const { return {0, i}; }
};

// Rows of `cols`: one division per pack, in U (32 bits when every index fits: cheaper).
template <class U>
struct SwigluSplitRows {
  U cols;
  __device__ SwigluPos at(std::int64_t i) const {
    const U r = static_cast<U>(i) / cols;
    return {static_cast<std::int64_t>(r),
            i - static_cast<std::int64_t>(r) * static_cast<std::int64_t>(cols)};
  }
};

// A pack of N never straddles two rows (the launcher packs strided rows only when cols and the
// strides are multiples of N), so its elements are consecutive in every view.
template <class T, class Pos>
struct SwigluMap {
  SwigluParams<T> p;  // strides resolved (swiglu_rows)
  Pos pos;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const SwigluPos at = pos.at(i);
    const std::int64_t in = at.row * p.in_stride + at.col;
    A g[N], u[N], y[N];
    unpack(map_load<N>(p.gate + in), g);
    unpack(map_load<N>(p.up + in), u);
#pragma unroll
    for (int j = 0; j < N; ++j) y[j] = silu(g[j]) * u[j];
    round_store<N>(p.y + i, y);
  }
};

// dgate and dup may be the same buffer (swiglu(x, x)): dgate is stored before dup is read.
template <class T, class Pos>
struct SwigluBackwardMap {
  SwigluBackwardParams<T> p;  // strides resolved (swiglu_rows)
  Pos pos;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const SwigluPos at = pos.at(i);
    const std::int64_t in = at.row * p.in_stride + at.col;
    const std::int64_t out = at.row * p.grad_stride + at.col;
    A gv[N], dy[N], s[N];
    unpack(map_load<N>(p.gate + in), gv);
    unpack(map_load<N>(p.dy + i), dy);
    // One sigmoid an element for both gradients: computed inside each branch (the stores between
    // them keep the compiler from sharing it) it was two exponentials and two divisions an element,
    // most of the pass's instructions.
#pragma unroll
    for (int j = 0; j < N; ++j) s[j] = sigmoid(gv[j]);
    if (p.dgate) {
      A u[N], dg[N] = {};  // dg: what the gradient holds when accumulating, else 0
      unpack(map_load<N>(p.up + in), u);
      if (p.accumulate_dgate) unpack(map_load<N>(p.dgate + out), dg);
#pragma unroll
      for (int j = 0; j < N; ++j) dg[j] = dg[j] + dy[j] * u[j] * silu_grad_given(gv[j], s[j]);
      round_store<N>(p.dgate + out, dg);
    }
    if (p.dup) {
      A du[N] = {};
      if (p.accumulate_dup) unpack(map_load<N>(p.dup + out), du);
#pragma unroll
      for (int j = 0; j < N; ++j) du[j] = du[j] + dy[j] * silu_given(gv[j], s[j]);
      round_store<N>(p.dup + out, du);
    }
  }
};

// Runs Map<T, Pos>{p, pos} over p.n elements laid out as `l`: a plain map when every view is
// contiguous; else rows, in 16-byte packs when the pointers are aligned and cols and the strides
// are multiples of a pack (the halves of a (rows, 2F) tensor with F % 8 == 0 in bf16), one
// element at a time otherwise.
template <template <class, class> class Map, class T, class Params, class... Ptrs>
void launch_swiglu_map(const Params& p, const SwigluRows& l, const Ptrs*... ptrs) {
  constexpr int N = map_width<T>();
  if (l.contiguous()) {
    launch_map<N>(Map<T, SwigluOneRow>{p, {}}, p.n, ptrs...);
    return;
  }
  const bool whole_packs = l.cols % N == 0 && l.in_stride % N == 0 && l.grad_stride % N == 0;
  auto run = [&](auto pos) {
    using Pos = decltype(pos);
    if (whole_packs)
      launch_map<N>(Map<T, Pos>{p, pos}, p.n, ptrs...);
    else
      launch_map<1>(Map<T, Pos>{p, pos}, p.n, ptrs...);
  };
  if (p.n <= static_cast<std::int64_t>(UINT32_MAX))
    run(SwigluSplitRows<std::uint32_t>{static_cast<std::uint32_t>(l.cols)});
  else
    run(SwigluSplitRows<std::uint64_t>{static_cast<std::uint64_t>(l.cols)});
}

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
  const auto l = detail::swiglu_rows(p.n, p.cols, p.in_stride, 0);
  SwigluParams<T> q = p;
  q.cols = l.cols;
  q.in_stride = l.in_stride;
  detail::launch_swiglu_map<detail::SwigluMap, T>(q, l, q.gate, q.up, q.y);
}

template <class T>
void swiglu_backward(Cuda, const SwigluBackwardParams<T>& p) {
  if (!p.dgate && !p.dup) return;
  const auto l = detail::swiglu_rows(p.n, p.cols, p.in_stride, p.grad_stride);
  SwigluBackwardParams<T> q = p;
  q.cols = l.cols;
  q.in_stride = l.in_stride;
  q.grad_stride = l.grad_stride;
  detail::launch_swiglu_map<detail::SwigluBackwardMap, T>(q, l, q.gate, q.up, q.dy, q.dgate, q.dup);
}

}  // namespace fathom::kernels
