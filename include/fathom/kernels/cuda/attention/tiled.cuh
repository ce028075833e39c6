// The tiled CUDA attention family: any head_dim <= 128 in float, double or bf16; 32 x 32 tiles in
// shared memory, math in accum_t<T>. The reference-grade fallback of kernels/cuda/attention.cuh.
//
// 128 threads, 32 query rows x 32 keys a tile. Thread (warp w, lane j) computes scores of query
// rows w + 4u (u < 8) against key j; for outputs it owns rows w + 4u, features j + 32r. Shared
// tiles are (32, hd + 1) so that a warp reading one feature of 32 rows hits 32 banks.
#pragma once

#include "fathom/kernels/cuda/attention/common.cuh"

namespace fathom::kernels::detail::attn {

constexpr int kTile = 32;
constexpr int kTiledThreads = 128;
constexpr int kRowsPerWarp = kTile / (kTiledThreads / kWarp);  // 8
// Features a thread owns: lane + 32 r for r < kFeatureChunks, enough for head_dim 128. One
// instantiation per element type serves every head_dim (unused chunks are skipped at run time),
// which keeps the build short.
constexpr int kFeatureChunks = 4;
constexpr int kScoresPitch = kTile + 1;  // (32, 33) score tiles

// A shared-memory layout is written once, in carve(hd, take), where take(n) hands out the next n
// elements: the kernel carves its pointers from the dynamic shared memory, and the launcher counts
// the bytes to reserve by carving with a counter.
template <class Layout>
std::size_t layout_bytes(int hd) {
  using A = typename Layout::Accum;
  std::size_t n = 0;
  Layout{}.carve(hd, [&n](int count) -> A* {
    n += static_cast<std::size_t>(count);
    return nullptr;
  });
  return n * sizeof(A);
}
template <class Layout>
__device__ inline Layout carve_layout(unsigned char* raw, int hd) {
  using A = typename Layout::Accum;
  A* at = reinterpret_cast<A*>(raw);
  Layout l;
  l.carve(hd, [&at](int count) {
    A* region = at;
    at += count;
    return region;
  });
  return l;
}

// The forward's shared memory: Q (pre-scaled), K and V tiles, the scores, and the running softmax
// statistics of the query tile.
template <class A>
struct TiledForwardSmem {
  using Accum = A;
  A *q, *k, *v;      // (32, hd + 1)
  A* s;              // (32, 33): scores, then probabilities
  A *m, *l, *alpha;  // (32): running row max, running row sum, rescale of this key tile
  template <class Take>
  __host__ __device__ void carve(int hd, Take&& take) {
    const int tile = kTile * (hd + 1);
    q = take(tile);
    k = take(tile);
    v = take(tile);
    s = take(kTile * kScoresPitch);
    m = take(kTile);
    l = take(kTile);
    alpha = take(kTile);
  }
};

// The shared memory of both backward kernels: Q, dO, K and V tiles, P and dS, and lse and delta
// of the query tile.
template <class A>
struct TiledBackwardSmem {
  using Accum = A;
  A *q, *d_o, *k, *v;  // (32, hd + 1)
  A *p, *ds;           // (32, 33)
  A *lse, *delta;      // (32)
  template <class Take>
  __host__ __device__ void carve(int hd, Take&& take) {
    const int tile = kTile * (hd + 1);
    q = take(tile);
    d_o = take(tile);
    k = take(tile);
    v = take(tile);
    p = take(kTile * kScoresPitch);
    ds = take(kTile * kScoresPitch);
    lse = take(kTile);
    delta = take(kTile);
  }
};

// dst (32, ld) <- rows [row0, row0 + 32) of src (features [0, hd)), zero past `rows`, times mul.
template <class T, class A>
__device__ inline void load_tile(A* dst, int ld, const T* src, std::int64_t stride,
                                 std::int64_t row0, std::int64_t rows, int hd, A mul) {
  for (int e = threadIdx.x; e < kTile * hd; e += kTiledThreads) {
    const int r = e / hd, c = e % hd;
    const std::int64_t row = row0 + r;
    dst[r * ld + c] = row < rows ? scalar_cast<A>(src[row * stride + c]) * mul : A(0);
  }
}

// Calls f(u, r, i, d) for each accumulator acc[u][r] a thread owns: tile row i = warp + 4u and
// feature d = lane + 32r, for d < hd. Unrolled, so the accumulators stay in registers.
template <class F>
__device__ __forceinline__ void for_each_owned(int hd, F&& f) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) {
      const int d = lane + kWarp * r;
      if (d < hd) f(u, r, warp + 4 * u, d);
    }
  }
}

// lse and delta of query rows [q0, q0 + 32) into shared memory (0 past the end).
template <class T>
__device__ inline void load_row_stats(const TiledBackwardSmem<accum_t<T>>& sm,
                                      const AttentionBackwardParams<T>& p, const accum_t<T>* delta,
                                      std::int64_t bh, std::int64_t q0) {
  if (threadIdx.x < kTile) {
    const std::int64_t row = q0 + threadIdx.x;
    sm.lse[threadIdx.x] = row < p.seq ? p.lse[bh * p.seq + row] : accum_t<T>(0);
    sm.delta[threadIdx.x] = row < p.seq ? delta[bh * p.seq + row] : accum_t<T>(0);
  }
}

template <class T>
__global__ void __launch_bounds__(kTiledThreads) forward_tiled(AttentionParams<T> p) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  const auto sm = carve_layout<TiledForwardSmem<A>>(smem_raw, hd);

  const std::int64_t Tn = p.seq, nqt = (Tn + kTile - 1) / kTile;
  const BlockWork work = block_work(static_cast<int>(nqt), static_cast<int>(p.batch * p.heads));
  const std::int64_t bh = work.bh, qt = nqt - 1 - work.rank;  // the last query tile first
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const T* qg = p.q + b * Tn * p.q_stride + h * hd;
  const T* kg = p.k + b * Tn * p.k_stride + h * hd;
  const T* vg = p.v + b * Tn * p.v_stride + h * hd;

  load_tile(sm.q, ld, qg, p.q_stride, q0, Tn, hd, static_cast<A>(p.scale));
  if (threadIdx.x < kTile) {
    sm.m[threadIdx.x] = neg_inf<A>();
    sm.l[threadIdx.x] = 0;
  }
  A o[kRowsPerWarp][kFeatureChunks] = {};

  const std::int64_t k_end = p.causal ? min(Tn, q0 + kTile) : Tn;
  for (std::int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile(sm.k, ld, kg, p.k_stride, k0, Tn, hd, A(1));
    load_tile(sm.v, ld, vg, p.v_stride, k0, Tn, hd, A(1));
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int i = warp + 4 * u;
      A s = 0;
      for (int d = 0; d < hd; ++d) s += sm.q[i * ld + d] * sm.k[lane * ld + d];
      const std::int64_t key = k0 + lane, query = q0 + i;
      const bool visible = key < Tn && (!p.causal || key <= query);
      sm.s[i * kScoresPitch + lane] = visible ? s : neg_inf<A>();
    }
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {  // online softmax, warp w owns rows 8w .. 8w + 7
      const int i = warp * kRowsPerWarp + r;
      const A x = sm.s[i * kScoresPitch + lane];
      const A m_old = sm.m[i], m_new = max(m_old, warp_max(x));
      const A base = m_new == neg_inf<A>() ? A(0) : m_new;  // a row with nothing visible yet
      const A e = exp_of(x - base);
      const A sum = warp_sum(e);
      sm.s[i * kScoresPitch + lane] = e;
      if (lane == 0) {
        const A alpha = exp_of(m_old - base);
        sm.l[i] = sm.l[i] * alpha + sum;
        sm.m[i] = m_new;
        sm.alpha[i] = alpha;
      }
    }
    __syncthreads();
    for_each_owned(hd, [&](int u, int r, int i, int d) {
      A acc = o[u][r] * sm.alpha[i];
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) acc += sm.s[i * kScoresPitch + j] * sm.v[j * ld + d];
      o[u][r] = acc;
    });
  }
  __syncthreads();
  for_each_owned(hd, [&](int u, int r, int i, int d) {
    const std::int64_t row = q0 + i;
    if (row < Tn) {
      const A inv = A(1) / sm.l[i];
      p.o[(b * Tn + row) * p.o_stride + h * hd + d] = scalar_cast<T>(o[u][r] * inv);
    }
  });
  if (threadIdx.x < kTile && q0 + threadIdx.x < Tn)
    p.lse[bh * Tn + q0 + threadIdx.x] = sm.m[threadIdx.x] + log_of(sm.l[threadIdx.x]);
}

// P[i][j] and dS[i][j] of query row i = warp + 4u and key j = lane, for the tiles in shared memory.
template <class A>
__device__ inline void tiled_probabilities(const TiledBackwardSmem<A>& sm, int hd, std::int64_t q0,
                                           std::int64_t k0, std::int64_t Tn, bool causal, A scale) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, ld = hd + 1;
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
    const int i = warp + 4 * u;
    A s = 0, dp = 0;
    for (int d = 0; d < hd; ++d) {
      s += sm.q[i * ld + d] * sm.k[lane * ld + d];
      dp += sm.d_o[i * ld + d] * sm.v[lane * ld + d];
    }
    const std::int64_t query = q0 + i, key = k0 + lane;
    const bool visible = query < Tn && key < Tn && (!causal || key <= query);
    const A pij = visible ? exp_of(s * scale - sm.lse[i]) : A(0);
    sm.p[i * kScoresPitch + lane] = pij;
    sm.ds[i * kScoresPitch + lane] = pij * (dp - sm.delta[i]);
  }
}

// out[d] = (accumulate ? out[d] : 0) + x, for a gradient element of type T.
template <class T, class A>
__device__ inline void store_gradient(T* out, A x, bool accumulate) {
  *out = scalar_cast<T>(accumulate ? scalar_cast<A>(*out) + x : x);
}

// One block per (b, h, key tile): dK and dV of 32 keys, summed over the query tiles that see them.
template <class T>
__global__ void __launch_bounds__(kTiledThreads)
    backward_dkdv_tiled(AttentionBackwardParams<T> p, const accum_t<T>* delta) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  const auto sm = carve_layout<TiledBackwardSmem<A>>(smem_raw, hd);

  const std::int64_t Tn = p.seq, nkt = (Tn + kTile - 1) / kTile;
  const BlockWork work = block_work(static_cast<int>(nkt), static_cast<int>(p.batch * p.heads));
  const std::int64_t bh = work.bh, kt = work.rank;  // the first key tile first
  const std::int64_t b = bh / p.heads, h = bh % p.heads, k0 = kt * kTile;
  const T* qg = p.q + b * Tn * p.q_stride + h * hd;
  const T* dog = p.d_o + b * Tn * p.do_stride + h * hd;

  load_tile(sm.k, ld, p.k + b * Tn * p.k_stride + h * hd, p.k_stride, k0, Tn, hd, A(1));
  load_tile(sm.v, ld, p.v + b * Tn * p.v_stride + h * hd, p.v_stride, k0, Tn, hd, A(1));
  A dk[kRowsPerWarp][kFeatureChunks] = {}, dv[kRowsPerWarp][kFeatureChunks] = {};

  for (std::int64_t q0 = p.causal ? k0 : 0; q0 < Tn; q0 += kTile) {
    __syncthreads();
    load_tile(sm.q, ld, qg, p.q_stride, q0, Tn, hd, A(1));
    load_tile(sm.d_o, ld, dog, p.do_stride, q0, Tn, hd, A(1));
    load_row_stats(sm, p, delta, bh, q0);
    __syncthreads();
    tiled_probabilities<A>(sm, hd, q0, k0, Tn, p.causal, static_cast<A>(p.scale));
    __syncthreads();
    for_each_owned(hd, [&](int u, int r, int j, int d) {  // key j of the tile
      A gv = dv[u][r], gk = dk[u][r];
#pragma unroll 8
      for (int i = 0; i < kTile; ++i) {
        gv += sm.p[i * kScoresPitch + j] * sm.d_o[i * ld + d];
        gk += sm.ds[i * kScoresPitch + j] * sm.q[i * ld + d];
      }
      dv[u][r] = gv;
      dk[u][r] = gk;
    });
  }
  const A scale = static_cast<A>(p.scale);
  for_each_owned(hd, [&](int u, int r, int j, int d) {
    const std::int64_t key = k0 + j;
    if (key >= Tn) return;
    if (p.dv)
      store_gradient(p.dv + (b * Tn + key) * p.dv_stride + h * hd + d, dv[u][r], p.accumulate);
    if (p.dk)
      store_gradient(p.dk + (b * Tn + key) * p.dk_stride + h * hd + d, scale * dk[u][r],
                     p.accumulate);
  });
}

// One block per (b, h, query tile): dQ of 32 rows, summed over the key tiles they see.
template <class T>
__global__ void __launch_bounds__(kTiledThreads)
    backward_dq_tiled(AttentionBackwardParams<T> p, const accum_t<T>* delta) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  const auto sm = carve_layout<TiledBackwardSmem<A>>(smem_raw, hd);

  const std::int64_t Tn = p.seq, nqt = (Tn + kTile - 1) / kTile;
  const BlockWork work = block_work(static_cast<int>(nqt), static_cast<int>(p.batch * p.heads));
  const std::int64_t bh = work.bh, qt = nqt - 1 - work.rank;  // the last query tile first
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kTile;
  const T* kg = p.k + b * Tn * p.k_stride + h * hd;
  const T* vg = p.v + b * Tn * p.v_stride + h * hd;

  load_tile(sm.q, ld, p.q + b * Tn * p.q_stride + h * hd, p.q_stride, q0, Tn, hd, A(1));
  load_tile(sm.d_o, ld, p.d_o + b * Tn * p.do_stride + h * hd, p.do_stride, q0, Tn, hd, A(1));
  load_row_stats(sm, p, delta, bh, q0);
  A dq[kRowsPerWarp][kFeatureChunks] = {};

  const std::int64_t k_end = p.causal ? min(Tn, q0 + kTile) : Tn;
  for (std::int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();
    load_tile(sm.k, ld, kg, p.k_stride, k0, Tn, hd, A(1));
    load_tile(sm.v, ld, vg, p.v_stride, k0, Tn, hd, A(1));
    __syncthreads();
    tiled_probabilities<A>(sm, hd, q0, k0, Tn, p.causal, static_cast<A>(p.scale));
    __syncthreads();
    for_each_owned(hd, [&](int u, int r, int i, int d) {
      A g = dq[u][r];
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) g += sm.ds[i * kScoresPitch + j] * sm.k[j * ld + d];
      dq[u][r] = g;
    });
  }
  const A scale = static_cast<A>(p.scale);
  for_each_owned(hd, [&](int u, int r, int i, int d) {
    const std::int64_t row = q0 + i;
    if (row < Tn)
      store_gradient(p.dq + (b * Tn + row) * p.dq_stride + h * hd + d, scale * dq[u][r],
                     p.accumulate);
  });
}

template <class T>
void launch_forward_tiled(const AttentionParams<T>& p) {
  const std::size_t smem = layout_bytes<TiledForwardSmem<accum_t<T>>>(static_cast<int>(p.head_dim));
  allow_shared_memory<forward_tiled<T>>(smem);
  const std::int64_t nqt = (p.seq + kTile - 1) / kTile;
  forward_tiled<T><<<grid_of(nqt, p.batch * p.heads), kTiledThreads, smem, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward_tiled(const AttentionBackwardParams<T>& p, const accum_t<T>* delta) {
  const std::size_t smem =
      layout_bytes<TiledBackwardSmem<accum_t<T>>>(static_cast<int>(p.head_dim));
  const unsigned grid = grid_of((p.seq + kTile - 1) / kTile, p.batch * p.heads);
  if (p.dk || p.dv) {
    allow_shared_memory<backward_dkdv_tiled<T>>(smem);
    backward_dkdv_tiled<T><<<grid, kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  if (p.dq) {
    allow_shared_memory<backward_dq_tiled<T>>(smem);
    backward_dq_tiled<T><<<grid, kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fathom::kernels::detail::attn
