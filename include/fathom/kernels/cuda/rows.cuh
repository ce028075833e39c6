// Machinery shared by the CUDA kernels that work one row per block (norms, softmax, cross-entropy):
// 16-byte pack loads into accum precision, a row visitor that handles rows not starting on a
// 16-byte boundary, block-wide reductions broadcast to every thread, and the online max/sum-of-exp.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/rows.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cuda/std/limits>

#include "fathom/core/scalar.hpp"
#include "fathom/kernels/cuda/primitives.cuh"

namespace fathom::kernels::detail {

// Math in accum precision (float or double) without relying on overloads of the C names.
__device__ inline float row_exp(float x) { return expf(x); }
__device__ inline double row_exp(double x) { return exp(x); }
__device__ inline float row_log(float x) { return logf(x); }
__device__ inline double row_log(double x) { return log(x); }
__device__ inline float row_sqrt(float x) { return sqrtf(x); }
__device__ inline double row_sqrt(double x) { return sqrt(x); }
__device__ inline void row_sincos(float x, float* s, float* c) { sincosf(x, s, c); }
__device__ inline void row_sincos(double x, double* s, double* c) { sincos(x, s, c); }

// sin and cos of x for |x| up to about 1e5 (RoPE's angles: a position times a frequency <= 1):
// x less k pi/2 in three FMA steps (pi/2 split into three floats, Cody-Waite), then the
// special-function unit's sin and cos of the remainder in [-pi/4, pi/4] (absolute error about
// 2^-21 there), swapped and signed by the quadrant k mod 4. A fraction of sincosf's instructions,
// which made the attention backward's RoPE turn cost more than half of the rope pass it
// replaced, and kept the bf16 rope pass from the memory's rate.
__device__ inline void sincos_reduced(float x, float* sin, float* cos) {
  const float k = rintf(x * 0.636619772367581343f);  // 2 / pi
  float r = fmaf(-k, 1.57079625129699707031f, x);
  r = fmaf(-k, 7.54978941586159635335e-08f, r);
  r = fmaf(-k, 5.39030252995776476554e-15f, r);
  const float sr = __sinf(r), cr = __cosf(r);
  const int quadrant = static_cast<int>(k) & 3;
  *sin = quadrant == 0 ? sr : quadrant == 1 ? cr : quadrant == 2 ? -sr : -cr;
  *cos = quadrant == 0 ? cr : quadrant == 1 ? -sr : quadrant == 2 ? -cr : sr;
}

// W consecutive elements of T (one 16-byte load when W == map_width<T>()) into accum precision A.
template <int W, class T, class A>
__device__ inline void row_load(const T* p, A (&out)[W]) {
  unpack(map_load<W>(p), out);
}

template <int W>
struct RowWidth {
  static constexpr int value = W;
};

// Calls f(col, RowWidth<W>{}) for the chunks of a row of n elements starting at `row`, dealt to the
// block's threads round-robin: single elements (W = 1) up to the first 16-byte boundary, packs of
// N elements after it, and single elements for the tail. Other rows of the same length whose base
// pointers are 16-byte aligned share the row's alignment, so the same chunks line up in them.
// When `row` is 16-byte aligned (norms check that every row is) each thread gets the same columns
// in every row.
// The chunks go to `workers` threads (the block, or a warp with `worker` its lane).
// The elements of a row of n before its first 16-byte boundary (none when N == 1).
template <int N, class T>
__device__ inline std::int64_t row_head(const T* row, std::int64_t n) {
  if constexpr (N == 1) return 0;
  const auto misaligned =
      static_cast<std::int64_t>((reinterpret_cast<std::uintptr_t>(row) / sizeof(T)) % N);
  return misaligned ? (n < N - misaligned ? n : N - misaligned) : 0;
}

template <int N, class T, class F>
__device__ inline void for_each_row_chunk(const T* row, std::int64_t n, F&& f, int worker,
                                          int workers) {
  const std::int64_t head = row_head<N>(row, n);
  if constexpr (N > 1) {
    for (std::int64_t c = worker; c < head; c += workers) f(c, RowWidth<1>{});
  }
  const std::int64_t packs = (n - head) / N;
  for (std::int64_t k = worker; k < packs; k += workers) f(head + k * N, RowWidth<N>{});
  if constexpr (N > 1) {
    for (std::int64_t c = head + packs * N + worker; c < n; c += workers) f(c, RowWidth<1>{});
  }
}
template <int N, class T, class F>
__device__ inline void for_each_row_chunk(const T* row, std::int64_t n, F&& f) {
  for_each_row_chunk<N>(row, n, static_cast<F&&>(f), static_cast<int>(threadIdx.x),
                        static_cast<int>(blockDim.x));
}

// Calls f(v) with the values (in accum precision A) of each chunk of the row, in the order
// for_each_row_chunk deals them to this thread, v an A[W] of the chunk's W elements; the 16-byte
// loads of `Ahead` consecutive packs of a thread are issued before the first of them is used. A
// read-only pass over a long row (cross-entropy's statistics) otherwise has one pack in flight a
// thread, because each pack's math waits for its load before the next load is issued; the order of
// the calls, so every sum, stays that of for_each_row_chunk.
template <int N, int Ahead, class A, class T, class F>
__device__ inline void for_each_row_values(const T* row, std::int64_t n, F&& f) {
  const int worker = static_cast<int>(threadIdx.x), workers = static_cast<int>(blockDim.x);
  const std::int64_t head = row_head<N>(row, n);
  auto one = [&](std::int64_t c) {
    A v[1];
    row_load<1>(row + c, v);
    f(v);
  };
  for (std::int64_t c = worker; c < head; c += workers) one(c);
  const std::int64_t packs = (n - head) / N;
  const T* body = row + head;
  std::int64_t k = worker;
  for (; k + static_cast<std::int64_t>(Ahead - 1) * workers < packs;
       k += static_cast<std::int64_t>(Ahead) * workers) {
    MapPack<T, N> p[Ahead];
#pragma unroll
    for (int j = 0; j < Ahead; ++j) p[j] = map_load<N>(body + (k + j * workers) * N);
#pragma unroll
    for (int j = 0; j < Ahead; ++j) {
      A v[N];
#pragma unroll
      for (int e = 0; e < N; ++e) v[e] = scalar_cast<A>(p[j].v[e]);
      f(v);
    }
  }
  for (; k < packs; k += workers) {
    A v[N];
    row_load<N>(body + k * N, v);
    f(v);
  }
  if constexpr (N > 1) {
    for (std::int64_t c = head + packs * N + worker; c < n; c += workers) one(c);
  }
}

struct RowPlus {
  template <class V>
  __device__ V operator()(const V& a, const V& b) const {
    return a + b;
  }
};

// Two sums reduced together (one block reduction instead of two).
template <class A>
struct RowPair {
  A a, b;
  __device__ RowPair operator+(const RowPair& o) const { return {a + o.a, b + o.b}; }
};

// The sum of v over the 32 lanes of a warp, returned to every lane. The butterfly adds the same
// two values on both lanes of each exchange, so every lane ends with the same bits.
template <class A>
__device__ inline A row_warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
template <class A>
__device__ inline RowPair<A> row_warp_sum(RowPair<A> v) {
  return {row_warp_sum(v.a), row_warp_sum(v.b)};
}

// The reduction of every thread's v over the block (blockDim.x == Threads), returned to every
// thread. Safe to call repeatedly in one kernel: it synchronizes before returning.
template <int Threads, class V, class Op>
__device__ inline V block_all_reduce(V v, Op op) {
  using Reduce = cub::BlockReduce<V, Threads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ V result;
  V r = Reduce(temp).Reduce(v, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  r = result;
  __syncthreads();
  return r;
}

// Running maximum m and sum of exp(x - m) of a set of values: the online softmax state.
template <class A>
struct RowMaxSum {
  A m, s;

  __device__ static RowMaxSum empty() {
    return {-::cuda::std::numeric_limits<A>::infinity(), A(0)};
  }
  // W values at once: one rescale per pack (when its maximum is a new maximum) instead of one
  // branch per element. A NaN reaches s: fmax passes over it (one instruction a value, where a
  // compare and select took two and, with a NaN first, made the pack's maximum a NaN that no test
  // takes), and while every value so far is -inf the terms are taken against 0 instead of m
  // (exp(-inf - -inf) is a NaN): the -inf values add 0 and a NaN adds a NaN.
  template <int W>
  __device__ void add(const A (&v)[W]) {
    A top = v[0];
#pragma unroll
    for (int j = 1; j < W; ++j) top = fmax(top, v[j]);
    if (top > m) {
      s *= row_exp(m - top);  // 0 while m is -inf (a NaN s stays a NaN)
      m = top;
    }
    const A base = m == -::cuda::std::numeric_limits<A>::infinity() ? A(0) : m;
#pragma unroll
    for (int j = 0; j < W; ++j) s += row_exp(v[j] - base);
  }
  // log(sum exp(x)) of every value added.
  __device__ A log_sum_exp() const { return m + row_log(s); }
};

struct RowMaxSumMerge {
  template <class A>
  __device__ RowMaxSum<A> operator()(const RowMaxSum<A>& x, const RowMaxSum<A>& y) const {
    // Values, not references to x or y: selecting between two addresses puts both in local memory.
    const bool x_high = x.m >= y.m;
    const RowMaxSum<A> hi{x_high ? x.m : y.m, x_high ? x.s : y.s};
    const RowMaxSum<A> lo{x_high ? y.m : x.m, x_high ? y.s : x.s};
    // lo all -inf: its s is 0, or a NaN that must carry over (exp(-inf - hi.m) would be a NaN
    // when hi.m is -inf too).
    if (lo.m == -::cuda::std::numeric_limits<A>::infinity()) return {hi.m, hi.s + lo.s * A(0)};
    return {hi.m, hi.s + lo.s * row_exp(lo.m - hi.m)};
  }
};

}  // namespace fathom::kernels::detail
