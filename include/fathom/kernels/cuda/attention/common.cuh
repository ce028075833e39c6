// What both CUDA attention families share: warp reductions, the launch helpers, and the first
// pass of the backward, D = rowsum(dO * O). Included by attention/tiled.cuh and attention/mma.cuh.
#pragma once

#if !defined(__CUDACC__)
#error "kernels/cuda/attention/common.cuh must be compiled by nvcc"
#endif

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/attention.hpp"

namespace fathom::kernels::detail::attn {

constexpr int kWarp = 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <class A>
__device__ inline A neg_inf() {
  return -static_cast<A>(INFINITY);
}
__device__ inline float exp_of(float x) { return expf(x); }
__device__ inline double exp_of(double x) { return exp(x); }
__device__ inline float log_of(float x) { return logf(x); }
__device__ inline double log_of(double x) { return log(x); }

template <class A>
__device__ inline A warp_max(A x) {
  for (int m = kWarp / 2; m > 0; m /= 2) x = max(x, __shfl_xor_sync(0xffffffffu, x, m));
  return x;
}
template <class A>
__device__ inline A warp_sum(A x) {
  for (int m = kWarp / 2; m > 0; m /= 2) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// Raises a kernel's dynamic shared memory limit the first time it needs more than the default.
template <auto Kernel>
void allow_shared_memory(std::size_t bytes) {
  static std::size_t allowed = 48 * 1024;  // one per kernel: Kernel is a template argument
  if (bytes > allowed) {
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
    allowed = bytes;
  }
}

// Blocks for `tiles` tiles of each of `bh` (batch, head) pairs, checked against the grid limit.
inline unsigned grid_of(std::int64_t tiles, std::int64_t bh) {
  const std::int64_t n = tiles * bh;
  FATHOM_CHECK(n < (std::int64_t{1} << 31),
               "attention (CUDA): " << n << " blocks exceed the grid limit");
  return static_cast<unsigned>(n);
}

// Which work block `block` of a grid of tiles * pairs blocks does: (b, h) pair `bh` and tile rank
// `rank`, 0 being the pair's heaviest tile (under the causal mask the last query tile, which sees
// every key, or the first key tile, which every query sees). Blocks start about in index order,
// so the order decides two things. Locality: the blocks of one (b, h) run close together, so the
// K/V (or Q/dO) tiles they all stream are read from device memory about once and then served by
// L2 (a group of `group` pairs streams group * T * head_dim * 4 bytes: 8 MB for 32 pairs of
// T = 1024, head_dim 64). Balance: inside a group the heaviest tiles of all its pairs go first and
// the lightest last, so the blocks still running when the grid drains are short ones. With
// group = 1 this is pair-major order, heaviest tile first within each pair, which ends the grid
// with the last pairs' heaviest blocks still running: in a list-scheduling model of GPT-2's
// attention (B 32, H 12, T 1024) about 7 to 10% past the ideal end, 2 to 3% with groups of 32.
constexpr int kOrderPairs = 32;
struct BlockWork {
  int bh, rank;
};
__host__ __device__ inline BlockWork block_work(unsigned block, int tiles, int pairs, int group) {
  const std::int64_t per_group = std::int64_t{group} * tiles;  // may pass 2^31
  const int first = static_cast<int>(block / per_group) * group;
  const int j = static_cast<int>(block % per_group);
  const int size = std::min(group, pairs - first);  // the last group may be short
  return {first + j % size, j / size};
}
__device__ inline BlockWork block_work(int tiles, int pairs, int group = kOrderPairs) {
  return block_work(blockIdx.x, tiles, pairs, group);
}

// The work of a block that owns one tile of BlockRows rows of a (b, h) pair: the pair, its index
// bh = b * heads + h, and the tile's first row, the heaviest tiles first (block_work): under the
// causal mask the last query tile (the forward and dQ passes: query_tile) or the first key tile
// (the dK/dV pass: key_tile). P: AttentionParams or AttentionBackwardParams.
struct TileWork {
  std::int64_t bh, b, h, row0;
};
template <int BlockRows, bool LastFirst, class P>
__device__ inline TileWork tile_work(const P& p, int group_pairs) {
  const std::int64_t tiles = (p.seq + BlockRows - 1) / BlockRows;
  const BlockWork work =
      block_work(static_cast<int>(tiles), static_cast<int>(p.batch * p.heads), group_pairs);
  const std::int64_t bh = work.bh, tile = LastFirst ? tiles - 1 - work.rank : work.rank;
  return {bh, bh / p.heads, bh % p.heads, tile * BlockRows};
}
template <int BlockRows, class P>
__device__ inline TileWork query_tile(const P& p, int group_pairs) {
  return tile_work<BlockRows, true>(p, group_pairs);
}
template <int BlockRows, class P>
__device__ inline TileWork key_tile(const P& p, int group_pairs) {
  return tile_work<BlockRows, false>(p, group_pairs);
}
// How many key tiles of Keys the query rows before `end` see: all, or under the causal mask those
// that start before `end`.
template <int Keys, class P>
__device__ inline std::int64_t key_tiles_seen(const P& p, std::int64_t end) {
  const std::int64_t all = (p.seq + Keys - 1) / Keys;
  return p.causal ? min(all, (end + Keys - 1) / Keys) : all;
}

// ---- D = rowsum(dO * O) ----------------------------------------------------------------------

// One warp per (b, t, h) row; writes delta (B, H, T) in accum_t<T>.
template <class T>
__global__ void rowsum_do_o(AttentionBackwardParams<T> p, accum_t<T>* delta) {
  using A = accum_t<T>;
  const std::int64_t row =
      (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= p.batch * p.seq * p.heads) return;
  const std::int64_t h = row % p.heads, t = row / p.heads % p.seq, b = row / (p.heads * p.seq);
  const T* o = p.o + (b * p.seq + t) * p.o_stride + h * p.head_dim;
  const T* g = p.d_o + (b * p.seq + t) * p.do_stride + h * p.head_dim;
  A s = 0;
  for (std::int64_t d = lane; d < p.head_dim; d += kWarp)
    s += scalar_cast<A>(o[d]) * scalar_cast<A>(g[d]);
  s = warp_sum(s);
  if (lane == 0) delta[(b * p.heads + h) * p.seq + t] = s;
}

// sum + the dot product of Pieces consecutive 16-byte pieces (8 bf16 each) of o and d_o, in
// order: the D = rowsum(dO * O) step of every bf16 kernel that computes D.
template <int Pieces>
__device__ inline float dot_bf16_pieces(const bf16* o, const bf16* d_o, float sum) {
#pragma unroll
  for (int i = 0; i < Pieces; ++i) {
    const auto ov = *reinterpret_cast<const uint4*>(o + 8 * i);
    const auto gv = *reinterpret_cast<const uint4*>(d_o + 8 * i);
    const auto* o2 = reinterpret_cast<const __nv_bfloat162*>(&ov);
    const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 x = __bfloat1622float2(o2[j]), y = __bfloat1622float2(g2[j]);
      sum += x.x * y.x + x.y * y.y;
    }
  }
  return sum;
}

// bf16 rows of HD = 8 G features: G threads a row, each reading 16 bytes of o and of d_o.
template <int G>
__global__ void rowsum_do_o_bf16(AttentionBackwardParams<bf16> p, float* delta) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t row = t / G;
  const int part = static_cast<int>(t % G);
  float s = 0.0f;
  if (row < p.batch * p.seq * p.heads) {  // no early return: the whole warp shuffles below
    const std::int64_t h = row % p.heads, tt = row / p.heads % p.seq, b = row / (p.heads * p.seq);
    const std::int64_t column = h * 8 * G + part * 8;
    s = dot_bf16_pieces<1>(p.o + (b * p.seq + tt) * p.o_stride + column,
                           p.d_o + (b * p.seq + tt) * p.do_stride + column, s);
  }
#pragma unroll
  for (int m = G / 2; m > 0; m /= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
  if (part == 0 && row < p.batch * p.seq * p.heads) {
    const std::int64_t h = row % p.heads, tt = row / p.heads % p.seq, b = row / (p.heads * p.seq);
    delta[(b * p.heads + h) * p.seq + tt] = s;
  }
}

// delta (B, H, T) = rowsum(d_o * o); `vectorized` (bf16, head_dim 32 or 64, 16-byte aligned rows)
// reads the rows in 16-byte pieces.
template <class T>
void launch_rowsum(const AttentionBackwardParams<T>& p, accum_t<T>* delta, bool vectorized) {
  const std::int64_t rows = p.batch * p.seq * p.heads;
  constexpr int kThreads = 256;
  if constexpr (std::is_same_v<T, bf16>) {
    if (vectorized) {
      const int g = static_cast<int>(p.head_dim / 8);
      const unsigned blocks = grid_of((rows * g + kThreads - 1) / kThreads, 1);
      if (g == 8) {
        rowsum_do_o_bf16<8><<<blocks, kThreads, 0, cuda::stream()>>>(p, delta);
      } else {
        rowsum_do_o_bf16<4><<<blocks, kThreads, 0, cuda::stream()>>>(p, delta);
      }
      FATHOM_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  constexpr int kRowsPerBlock = kThreads / kWarp;
  const unsigned blocks = grid_of((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1);
  rowsum_do_o<T><<<blocks, kThreads, 0, cuda::stream()>>>(p, delta);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fathom::kernels::detail::attn
