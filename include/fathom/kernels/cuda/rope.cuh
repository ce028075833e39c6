// CUDA RoPE (Hugging Face Llama convention, see kernels/rope.hpp), forward and backward, on a
// (B, T, C) tensor or in place on the q and k thirds of a fused (B, T, 3C) projection.
//
// A grid-stride loop over (token, group of rope_group_heads heads, pack of pair indices). Each
// block first fills a shared-memory table of inv_freq from the kernel's argument (computed on the
// host in double by the CPU kernel's own function, rounded once; in the kernel only for head sizes
// beyond rope_table_half pairs); every thread then computes the angles of its pack once, in accum
// precision with sincos (bf16: the reduced sincos of rows.cuh), and turns that pack in each head of
// its group, the group's loads all issued before the first is used: no position table to build or
// keep. Loads and stores are 16-byte packs when hd/2 allows.
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
constexpr std::int64_t rope_max_blocks = 65536;  // a grid-stride loop covers the rest
// Heads a thread turns with one pack's angles: the sines and cosines are computed once for all of
// them, and their 2 x rope_group_heads loads are in flight together.
constexpr int rope_group_heads = 4;
// Pairs of a head whose frequencies travel in the kernel's argument (head_dim up to 256).
constexpr int rope_table_half = 128;

// The frequencies of a head's first rope_table_half pairs, from the host (kernels/rope.hpp).
// Computed in each block instead, a double pow a pair held every block's loads back behind a
// barrier.
template <class A>
using RopeTable = RopeFreqTable<A, rope_table_half>;

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
__global__ void __launch_bounds__(rope_threads)
    rope_kernel(RopeArgs<T> a, const RopeTable<accum_t<T>> table) {
  using A = accum_t<T>;
  constexpr int G = rope_group_heads;
  extern __shared__ unsigned char rope_shared[];
  A* inv_freq = reinterpret_cast<A*>(rope_shared);  // (hd / 2)
  const std::int64_t half = a.head_dim / 2;
  for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x)
    inv_freq[i] =
        half <= rope_table_half ? table.inv_freq[i] : rope_inv_freq<A>(a.theta, i, a.head_dim);
  __syncthreads();

  const std::int64_t packs_per_half = half / N;
  const std::int64_t groups = (a.n_heads + G - 1) / G;
  const std::int64_t total = a.tokens * groups * packs_per_half;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += step) {
    const std::int64_t i0 = (idx % packs_per_half) * N;
    const std::int64_t rest = idx / packs_per_half;
    const std::int64_t head0 = (rest % groups) * G, token = rest / groups;
    const int heads = static_cast<int>(min(std::int64_t{G}, a.n_heads - head0));
    const A pos = static_cast<A>(a.pos0 + token % a.seq);
    const T* in1 = a.in + token * a.in_stride + head0 * a.head_dim + i0;
    T* out0 = a.out + token * a.out_stride + head0 * a.head_dim + i0;
    const int hd = static_cast<int>(a.head_dim), hh = static_cast<int>(half);
    WordPack<T, N> x1[G], x2[G];  // kept as loaded (bf16: half the registers of accum values)
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h < heads) {
        x1[h] = word_load<N>(in1 + h * hd);
        x2[h] = word_load<N>(in1 + h * hd + hh);
      }
    }
    A sin[N], cos[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      // bf16 keeps 8 bits: the reduced sine's 2^-21 is far below its rounding, and sincosf's
      // instructions kept the pass from the memory's rate. fp32 and double keep the exact one.
      if constexpr (std::is_same_v<T, bf16>)
        sincos_reduced(pos * inv_freq[i0 + j], &sin[j], &cos[j]);
      else
        row_sincos(pos * inv_freq[i0 + j], &sin[j], &cos[j]);
      sin[j] *= a.sign;
    }
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= heads) continue;
      T* out1 = out0 + h * hd;
      A y1[N], y2[N];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A v1 = x1[h].template get<A>(j), v2 = x2[h].template get<A>(j);
        y1[j] = v1 * cos[j] - v2 * sin[j];
        y2[j] = v2 * cos[j] + v1 * sin[j];
      }
      if (a.accumulate) {
        A o1[N], o2[N];
        row_load<N>(out1, o1);
        row_load<N>(out1 + hh, o2);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          y1[j] += o1[j];
          y2[j] += o2[j];
        }
      }
      round_store<N>(out1, y1);
      round_store<N>(out1 + hh, y2);
    }
  }
}

template <class T>
void launch_rope(const RopeArgs<T>& a) {
  using A = accum_t<T>;
  const std::int64_t half = a.head_dim / 2;
  if (a.tokens == 0 || half == 0) return;
  const auto table = rope_freq_table<A, rope_table_half>(a.theta, a.head_dim);
  constexpr int N = map_width<T>();
  const bool packed = half % N == 0 && a.in_stride % N == 0 && a.out_stride % N == 0 &&
                      map_aligned(a.in) && map_aligned(a.out);
  const std::int64_t work = a.tokens * ((a.n_heads + rope_group_heads - 1) / rope_group_heads) *
                            (packed ? half / N : half);
  const int blocks =
      static_cast<int>(std::min(rope_max_blocks, (work + rope_threads - 1) / rope_threads));
  const std::size_t shared = static_cast<std::size_t>(half) * sizeof(A);
  FATHOM_CHECK(shared <= 48 * 1024,
               "rope: head size " << a.head_dim << " needs " << shared
                                  << " bytes for its frequency table, expected at most 48 KiB");
  if (packed) {
    rope_kernel<T, N><<<blocks, rope_threads, shared, cuda::stream()>>>(a, table);
  } else {
    rope_kernel<T, 1><<<blocks, rope_threads, shared, cuda::stream()>>>(a, table);
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
