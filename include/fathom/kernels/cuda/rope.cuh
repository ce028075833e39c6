// CUDA RoPE (Hugging Face Llama convention, see kernels/rope.hpp), forward and backward, on a
// (B, T, C) tensor or in place on the q and k thirds of a fused (B, T, 3C) projection.
//
// A grid-stride loop over (token, head, pack of pair indices). Each block first fills a
// shared-memory table of inv_freq (computed in double as on the CPU, rounded once), then every
// thread turns its pairs by angles computed on the fly in accum precision with sincos (bf16: the
// reduced sincos of rows.cuh): no position table to build or keep. Loads and stores are 16-byte
// packs when hd/2 allows.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/rope.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/cuda/rows.cuh"
#include "fathom/kernels/rope.hpp"

namespace fathom::kernels {

namespace detail {

constexpr int rope_threads = 256;
constexpr std::int64_t rope_max_blocks = 4096;  // a grid-stride loop covers the rest

// n_heads heads of head_dim at the start of each row; rows in_stride (out_stride) elements apart.
// in may equal out: each thread reads its pairs before it writes them, and no other thread
// touches them.
template <class T>
struct RopeArgs {
  const T* in;  // (B, T, in_stride)
  T* out;       // (B, T, out_stride)
  std::int64_t tokens, seq, in_stride, out_stride, head_dim;
  int n_heads;
  double theta;
  std::int64_t pos0;
  accum_t<T> sign;  // 1: rotate by +angle (forward); -1: by -angle (backward)
  bool accumulate;
};

template <class T, int N>
__global__ void __launch_bounds__(rope_threads) rope_kernel(RopeArgs<T> a) {
  using A = accum_t<T>;
  extern __shared__ unsigned char rope_shared[];
  A* inv_freq = reinterpret_cast<A*>(rope_shared);  // (hd / 2)
  const std::int64_t half = a.head_dim / 2;
  for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x)
    inv_freq[i] = rope_inv_freq<A>(a.theta, i, a.head_dim);
  __syncthreads();

  const std::int64_t packs_per_half = half / N;
  const std::int64_t total = a.tokens * a.n_heads * packs_per_half;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += step) {
    const std::int64_t i0 = (idx % packs_per_half) * N;
    const std::int64_t rest = idx / packs_per_half;
    const std::int64_t head = rest % a.n_heads, token = rest / a.n_heads;
    const A pos = static_cast<A>(a.pos0 + token % a.seq);
    const std::int64_t in1 = token * a.in_stride + head * a.head_dim + i0, in2 = in1 + half;
    const std::int64_t k1 = token * a.out_stride + head * a.head_dim + i0, k2 = k1 + half;
    A x1[N], x2[N], y1[N], y2[N];
    row_load<N>(a.in + in1, x1);
    row_load<N>(a.in + in2, x2);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      A sin, cos;
      // bf16 keeps 8 bits: the reduced sine's 2^-21 is far below its rounding, and sincosf's
      // instructions kept the pass from the memory's rate. fp32 and double keep the exact one.
      if constexpr (std::is_same_v<T, bf16>)
        sincos_reduced(pos * inv_freq[i0 + j], &sin, &cos);
      else
        row_sincos(pos * inv_freq[i0 + j], &sin, &cos);
      sin *= a.sign;
      y1[j] = x1[j] * cos - x2[j] * sin;
      y2[j] = x2[j] * cos + x1[j] * sin;
    }
    if (a.accumulate) {
      A o1[N], o2[N];
      row_load<N>(a.out + k1, o1);
      row_load<N>(a.out + k2, o2);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        y1[j] += o1[j];
        y2[j] += o2[j];
      }
    }
    row_store<N>(a.out + k1, y1);
    row_store<N>(a.out + k2, y2);
  }
}

template <class T>
void launch_rope(const RopeArgs<T>& a) {
  using A = accum_t<T>;
  const std::int64_t half = a.head_dim / 2;
  if (a.tokens == 0 || half == 0) return;
  constexpr int N = map_width<T>();
  const bool packed = half % N == 0 && a.in_stride % N == 0 && a.out_stride % N == 0 &&
                      map_aligned(a.in) && map_aligned(a.out);
  const std::int64_t work = a.tokens * a.n_heads * (packed ? half / N : half);
  const int blocks =
      static_cast<int>(std::min(rope_max_blocks, (work + rope_threads - 1) / rope_threads));
  const std::size_t shared = static_cast<std::size_t>(half) * sizeof(A);
  FATHOM_CHECK(shared <= 48 * 1024,
               "rope: head size " << a.head_dim << " needs " << shared
                                  << " bytes for its frequency table, expected at most 48 KiB");
  if (packed) {
    rope_kernel<T, N><<<blocks, rope_threads, shared, cuda::stream()>>>(a);
  } else {
    rope_kernel<T, 1><<<blocks, rope_threads, shared, cuda::stream()>>>(a);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

template <class T>
void rope(Cuda, const RopeParams<T>& p) {
  detail::launch_rope(detail::RopeArgs<T>{p.x, p.y, p.batch * p.seq, p.seq, p.channels, p.channels,
                                          p.channels / p.n_heads, p.n_heads, p.theta, p.pos0,
                                          accum_t<T>(1), false});
}

template <class T>
void rope_backward(Cuda, const RopeBackwardParams<T>& p) {
  detail::launch_rope(detail::RopeArgs<T>{p.dy, p.dx, p.batch * p.seq, p.seq, p.channels,
                                          p.channels, p.channels / p.n_heads, p.n_heads, p.theta,
                                          p.pos0, accum_t<T>(-1), p.accumulate});
}

// One launch over the q and k thirds: 2 n_heads heads at the start of rows 3C apart (see the CPU
// reference), turned in place.
template <class T>
void rope_qkv(Cuda, const RopeQkvParams<T>& p) {
  const std::int64_t stride = 3 * p.channels;
  detail::launch_rope(detail::RopeArgs<T>{p.qkv, p.qkv, p.batch * p.seq, p.seq, stride, stride,
                                          p.channels / p.n_heads, 2 * p.n_heads, p.theta, p.pos0,
                                          accum_t<T>(p.inverse ? -1 : 1), false});
}

}  // namespace fathom::kernels
