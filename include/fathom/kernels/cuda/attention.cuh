// CUDA attention, flash-style: forward and backward never store a (T, T) matrix in device memory.
// Two kernel families behind kernels::attention(Cuda, ...) and kernels::attention_backward(Cuda, ...):
//  - tiled: any head_dim <= 128, float, double or bf16; 32 x 32 tiles in shared memory, math in
//    accum_t<T>. The reference-grade fallback.
//  - mma: bf16 with head_dim 32 or 64 and 16-byte aligned rows (every GPT-2 / Llama shape we
//    train); 64 x 64 tiles on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate),
//    cp.async double buffering, the probabilities kept in registers between the two products.
// Backward (both families): D = rowsum(dO * O) first; then dK and dV by one block per key tile that
// loops over the query tiles, and dQ by a second pass, one block per query tile over the key
// tiles. The second pass recomputes Q K^T and dO V^T instead of adding dQ with atomics: the
// result is deterministic and needs no fp32 scratch for dQ. All three gradients are ADDED to.
#pragma once

#if !defined(__CUDACC__)
#error "kernels/cuda/attention.cuh must be compiled by nvcc"
#endif

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/attention.hpp"

namespace fathom::kernels {

namespace detail::attn {

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

// Device scratch from the caching allocator, released in stream order (fathom has one stream).
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) : bytes_(bytes), p_(DeviceMemory<Cuda>::allocate(bytes)) {}
  ~Scratch() { DeviceMemory<Cuda>::deallocate(p_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class U>
  U* as() const { return static_cast<U*>(p_); }

 private:
  std::size_t bytes_;
  void* p_;
};

// ---- D = rowsum(dO * O), shared by both families --------------------------------------------

// One warp per (b, t, h) row; writes delta (B, H, T) in accum_t<T>.
template <class T>
__global__ void rowsum_do_o(AttentionBackwardParams<T> p, accum_t<T>* delta) {
  using A = accum_t<T>;
  const std::int64_t row = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= p.batch * p.seq * p.heads) return;
  const std::int64_t h = row % p.heads, t = row / p.heads % p.seq, b = row / (p.heads * p.seq);
  const T* o = p.o + (b * p.seq + t) * p.o_stride + h * p.head_dim;
  const T* g = p.d_o + (b * p.seq + t) * p.do_stride + h * p.head_dim;
  A s = 0;
  for (std::int64_t d = lane; d < p.head_dim; d += kWarp) s += scalar_cast<A>(o[d]) * scalar_cast<A>(g[d]);
  s = warp_sum(s);
  if (lane == 0) delta[(b * p.heads + h) * p.seq + t] = s;
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
    const auto o = *reinterpret_cast<const uint4*>(p.o + (b * p.seq + tt) * p.o_stride + h * 8 * G + part * 8);
    const auto g = *reinterpret_cast<const uint4*>(p.d_o + (b * p.seq + tt) * p.do_stride + h * 8 * G + part * 8);
    const auto* o2 = reinterpret_cast<const __nv_bfloat162*>(&o);
    const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 a = __bfloat1622float2(o2[i]), d = __bfloat1622float2(g2[i]);
      s += a.x * d.x + a.y * d.y;
    }
  }
#pragma unroll
  for (int m = G / 2; m > 0; m /= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
  if (part == 0 && row < p.batch * p.seq * p.heads) {
    const std::int64_t h = row % p.heads, tt = row / p.heads % p.seq, b = row / (p.heads * p.seq);
    delta[(b * p.heads + h) * p.seq + tt] = s;
  }
}

// ---- tiled family ----------------------------------------------------------------------------
// 128 threads, 32 query rows x 32 keys a tile. Thread (warp w, lane j) computes scores of query
// rows w + 4u (u < 8) against key j; for outputs it owns rows w + 4u, features j + 32r. Shared
// tiles are (32, hd + 1) so that a warp reading one feature of 32 rows hits 32 banks.

// tile_order: block i works on (b, h) = i / tiles and tile i % tiles (query tiles from the last,
// which has the most keys to see under the causal mask). The blocks of one (b, h) run side by
// side, so the K/V (or Q/dO) tiles they all stream are read from device memory about once and
// then served by L2; ordering by tile first would re-read them for every tile.

constexpr int kTile = 32;
constexpr int kTiledThreads = 128;
constexpr int kRowsPerWarp = kTile / (kTiledThreads / kWarp);  // 8
// Features a thread owns: lane + 32 r for r < kFeatureChunks, enough for head_dim 128. One
// instantiation per element type serves every head_dim (unused chunks are skipped at run time),
// which keeps the build short.
constexpr int kFeatureChunks = 4;

// dst (32, ld) <- rows [row0, row0 + 32) of src (features [0, hd)), zero past `rows`, times mul.
template <class T, class A>
__device__ inline void load_tile(A* dst, int ld, const T* src, std::int64_t stride, std::int64_t row0,
                                 std::int64_t rows, int hd, A mul) {
  for (int e = threadIdx.x; e < kTile * hd; e += kTiledThreads) {
    const int r = e / hd, c = e % hd;
    const std::int64_t row = row0 + r;
    dst[r * ld + c] = row < rows ? scalar_cast<A>(src[row * stride + c]) * mul : A(0);
  }
}

template <class A>
struct TiledFwdSmem {
  static std::size_t bytes(int hd) {
    return sizeof(A) * (3 * kTile * (hd + 1) + kTile * (kTile + 1) + 3 * kTile);
  }
};

template <class T>
__global__ void __launch_bounds__(kTiledThreads) forward_tiled(AttentionParams<T> p) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  A* Qs = reinterpret_cast<A*>(smem_raw);  // (32, ld), pre-scaled
  A* Ks = Qs + kTile * ld;                 // (32, ld)
  A* Vs = Ks + kTile * ld;                 // (32, ld)
  A* S = Vs + kTile * ld;                  // (32, 33): scores, then probabilities
  A* m_s = S + kTile * (kTile + 1);        // running row max
  A* l_s = m_s + kTile;                    // running row sum
  A* alpha_s = l_s + kTile;                // rescale of this tile

  const std::int64_t Tn = p.seq, nqt = (Tn + kTile - 1) / kTile;
  const std::int64_t bh = blockIdx.x / nqt, qt = nqt - 1 - blockIdx.x % nqt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const T* qg = p.q + b * Tn * p.q_stride + h * hd;
  const T* kg = p.k + b * Tn * p.k_stride + h * hd;
  const T* vg = p.v + b * Tn * p.v_stride + h * hd;

  load_tile(Qs, ld, qg, p.q_stride, q0, Tn, hd, static_cast<A>(p.scale));
  if (threadIdx.x < kTile) {
    m_s[threadIdx.x] = neg_inf<A>();
    l_s[threadIdx.x] = 0;
  }
  A o[kRowsPerWarp][kFeatureChunks];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) o[u][r] = 0;

  const std::int64_t k_end = p.causal ? min(Tn, q0 + kTile) : Tn;
  for (std::int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile(Ks, ld, kg, p.k_stride, k0, Tn, hd, A(1));
    load_tile(Vs, ld, vg, p.v_stride, k0, Tn, hd, A(1));
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int i = warp + 4 * u;
      A s = 0;
      for (int d = 0; d < hd; ++d) s += Qs[i * ld + d] * Ks[lane * ld + d];
      const std::int64_t key = k0 + lane, query = q0 + i;
      const bool visible = key < Tn && (!p.causal || key <= query);
      S[i * (kTile + 1) + lane] = visible ? s : neg_inf<A>();
    }
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {  // online softmax, warp w owns rows 8w .. 8w + 7
      const int i = warp * kRowsPerWarp + r;
      const A x = S[i * (kTile + 1) + lane];
      const A m_old = m_s[i], m_new = max(m_old, warp_max(x));
      const A base = m_new == neg_inf<A>() ? A(0) : m_new;  // a row with nothing visible yet
      const A e = exp_of(x - base);
      const A sum = warp_sum(e);
      S[i * (kTile + 1) + lane] = e;
      if (lane == 0) {
        const A alpha = exp_of(m_old - base);
        l_s[i] = l_s[i] * alpha + sum;
        m_s[i] = m_new;
        alpha_s[i] = alpha;
      }
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int i = warp + 4 * u;
      const A alpha = alpha_s[i];
#pragma unroll
      for (int r = 0; r < kFeatureChunks; ++r) {
        const int d = lane + kWarp * r;
        if (d < hd) {
          A acc = o[u][r] * alpha;
#pragma unroll 8
          for (int j = 0; j < kTile; ++j) acc += S[i * (kTile + 1) + j] * Vs[j * ld + d];
          o[u][r] = acc;
        }
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
    const int i = warp + 4 * u;
    const std::int64_t row = q0 + i;
    if (row >= Tn) continue;
    const A inv = A(1) / l_s[i];
    T* out = p.o + (b * Tn + row) * p.o_stride + h * hd;
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) {
      const int d = lane + kWarp * r;
      if (d < hd) out[d] = scalar_cast<T>(o[u][r] * inv);
    }
  }
  if (threadIdx.x < kTile && q0 + threadIdx.x < Tn)
    p.lse[bh * Tn + q0 + threadIdx.x] = m_s[threadIdx.x] + log_of(l_s[threadIdx.x]);
}

// Shared layout of both tiled backward kernels: four (32, hd + 1) tiles (Q, dO, K, V), P and dS
// (32, 33), and lse and delta of the query tile.
template <class A>
struct TiledBwdSmem {
  static std::size_t bytes(int hd) {
    return sizeof(A) * (4 * kTile * (hd + 1) + 2 * kTile * (kTile + 1) + 2 * kTile);
  }
};

// P[i][j] and dS[i][j] of query row i = warp + 4u and key j = lane, for the tiles in shared memory.
template <class A>
__device__ inline void tiled_probabilities(const A* Qs, const A* dOs,
                                           const A* Ks, const A* Vs, const A* lse_s, const A* delta_s,
                                           A* P, A* dS, int hd, std::int64_t q0, std::int64_t k0,
                                           std::int64_t Tn, bool causal, A scale) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, ld = hd + 1;
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
    const int i = warp + 4 * u;
    A s = 0, dp = 0;
    for (int d = 0; d < hd; ++d) {
      s += Qs[i * ld + d] * Ks[lane * ld + d];
      dp += dOs[i * ld + d] * Vs[lane * ld + d];
    }
    const std::int64_t query = q0 + i, key = k0 + lane;
    const bool visible = query < Tn && key < Tn && (!causal || key <= query);
    const A pij = visible ? exp_of(s * scale - lse_s[i]) : A(0);
    P[i * (kTile + 1) + lane] = pij;
    dS[i * (kTile + 1) + lane] = pij * (dp - delta_s[i]);
  }
}

// One block per (b, h, key tile): dK and dV of 32 keys, summed over the query tiles that see them.
template <class T>
__global__ void __launch_bounds__(kTiledThreads) backward_dkdv_tiled(AttentionBackwardParams<T> p,
                                                                     const accum_t<T>* delta) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  A* Qs = reinterpret_cast<A*>(smem_raw);
  A* dOs = Qs + kTile * ld;
  A* Ks = dOs + kTile * ld;
  A* Vs = Ks + kTile * ld;
  A* P = Vs + kTile * ld;
  A* dS = P + kTile * (kTile + 1);
  A* lse_s = dS + kTile * (kTile + 1);
  A* delta_s = lse_s + kTile;

  const std::int64_t Tn = p.seq, nkt = (Tn + kTile - 1) / kTile;
  const std::int64_t bh = blockIdx.x / nkt, kt = blockIdx.x % nkt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, k0 = kt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const std::int64_t base_q = b * Tn * p.q_stride + h * hd, base_k = b * Tn * p.k_stride + h * hd,
                     base_v = b * Tn * p.v_stride + h * hd, base_do = b * Tn * p.do_stride + h * hd;

  load_tile(Ks, ld, p.k + base_k, p.k_stride, k0, Tn, hd, A(1));
  load_tile(Vs, ld, p.v + base_v, p.v_stride, k0, Tn, hd, A(1));
  A dk[kRowsPerWarp][kFeatureChunks], dv[kRowsPerWarp][kFeatureChunks];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) dk[u][r] = dv[u][r] = 0;

  for (std::int64_t q0 = p.causal ? k0 : 0; q0 < Tn; q0 += kTile) {
    __syncthreads();
    load_tile(Qs, ld, p.q + base_q, p.q_stride, q0, Tn, hd, A(1));
    load_tile(dOs, ld, p.d_o + base_do, p.do_stride, q0, Tn, hd, A(1));
    if (threadIdx.x < kTile) {
      const std::int64_t row = q0 + threadIdx.x;
      lse_s[threadIdx.x] = row < Tn ? p.lse[bh * Tn + row] : A(0);
      delta_s[threadIdx.x] = row < Tn ? delta[bh * Tn + row] : A(0);
    }
    __syncthreads();
    tiled_probabilities<A>(Qs, dOs, Ks, Vs, lse_s, delta_s, P, dS, hd, q0, k0, Tn, p.causal,
                           static_cast<A>(p.scale));
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int j = warp + 4 * u;
#pragma unroll
      for (int r = 0; r < kFeatureChunks; ++r) {
        const int d = lane + kWarp * r;
        if (d >= hd) continue;
        A gv = dv[u][r], gk = dk[u][r];
#pragma unroll 8
        for (int i = 0; i < kTile; ++i) {
          gv += P[i * (kTile + 1) + j] * dOs[i * ld + d];
          gk += dS[i * (kTile + 1) + j] * Qs[i * ld + d];
        }
        dv[u][r] = gv;
        dk[u][r] = gk;
      }
    }
  }
  const A scale = static_cast<A>(p.scale);
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
    const std::int64_t key = k0 + warp + 4 * u;
    if (key >= Tn) continue;
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) {
      const int d = lane + kWarp * r;
      if (d >= hd) continue;
      if (p.dv) {
        T* x = p.dv + (b * Tn + key) * p.dv_stride + h * hd + d;
        *x = scalar_cast<T>(p.accumulate ? scalar_cast<A>(*x) + dv[u][r] : dv[u][r]);
      }
      if (p.dk) {
        T* x = p.dk + (b * Tn + key) * p.dk_stride + h * hd + d;
        *x = scalar_cast<T>(p.accumulate ? scalar_cast<A>(*x) + scale * dk[u][r] : scale * dk[u][r]);
      }
    }
  }
}

// One block per (b, h, query tile): dQ of 32 rows, summed over the key tiles they see.
template <class T>
__global__ void __launch_bounds__(kTiledThreads) backward_dq_tiled(AttentionBackwardParams<T> p,
                                                                   const accum_t<T>* delta) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int hd = static_cast<int>(p.head_dim), ld = hd + 1;
  A* Qs = reinterpret_cast<A*>(smem_raw);
  A* dOs = Qs + kTile * ld;
  A* Ks = dOs + kTile * ld;
  A* Vs = Ks + kTile * ld;
  A* P = Vs + kTile * ld;
  A* dS = P + kTile * (kTile + 1);
  A* lse_s = dS + kTile * (kTile + 1);
  A* delta_s = lse_s + kTile;

  const std::int64_t Tn = p.seq, nqt = (Tn + kTile - 1) / kTile;
  const std::int64_t bh = blockIdx.x / nqt, qt = nqt - 1 - blockIdx.x % nqt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;

  load_tile(Qs, ld, p.q + b * Tn * p.q_stride + h * hd, p.q_stride, q0, Tn, hd, A(1));
  load_tile(dOs, ld, p.d_o + b * Tn * p.do_stride + h * hd, p.do_stride, q0, Tn, hd, A(1));
  if (threadIdx.x < kTile) {
    const std::int64_t row = q0 + threadIdx.x;
    lse_s[threadIdx.x] = row < Tn ? p.lse[bh * Tn + row] : A(0);
    delta_s[threadIdx.x] = row < Tn ? delta[bh * Tn + row] : A(0);
  }
  A dq[kRowsPerWarp][kFeatureChunks];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) dq[u][r] = 0;

  const std::int64_t k_end = p.causal ? min(Tn, q0 + kTile) : Tn;
  for (std::int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();
    load_tile(Ks, ld, p.k + b * Tn * p.k_stride + h * hd, p.k_stride, k0, Tn, hd, A(1));
    load_tile(Vs, ld, p.v + b * Tn * p.v_stride + h * hd, p.v_stride, k0, Tn, hd, A(1));
    __syncthreads();
    tiled_probabilities<A>(Qs, dOs, Ks, Vs, lse_s, delta_s, P, dS, hd, q0, k0, Tn, p.causal,
                           static_cast<A>(p.scale));
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int i = warp + 4 * u;
#pragma unroll
      for (int r = 0; r < kFeatureChunks; ++r) {
        const int d = lane + kWarp * r;
        if (d >= hd) continue;
        A g = dq[u][r];
#pragma unroll 8
        for (int j = 0; j < kTile; ++j) g += dS[i * (kTile + 1) + j] * Ks[j * ld + d];
        dq[u][r] = g;
      }
    }
  }
  const A scale = static_cast<A>(p.scale);
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u) {
    const std::int64_t row = q0 + warp + 4 * u;
    if (row >= Tn) continue;
#pragma unroll
    for (int r = 0; r < kFeatureChunks; ++r) {
      const int d = lane + kWarp * r;
      if (d >= hd) continue;
      T* x = p.dq + (b * Tn + row) * p.dq_stride + h * hd + d;
      *x = scalar_cast<T>(p.accumulate ? scalar_cast<A>(*x) + scale * dq[u][r] : scale * dq[u][r]);
    }
  }
}

// ---- mma family (bf16 on tensor cores) -------------------------------------------------------
// 128 threads = 4 warps. Fragment layouts are those of mma.m16n8k16 (PTX ISA, "Matrix Fragments
// for mma.m16n8k16"): with g = lane / 4 and c = lane % 4, an fp32 accumulator holds rows g and
// g + 8, columns 2c and 2c + 1 of a 16 x 8 tile; the A operand (16 x 16) holds the same rows,
// columns 2c, 2c + 1, 2c + 8, 2c + 9; the B operand (16 x 8) holds rows 2c, 2c + 1, 2c + 8, 2c + 9
// of column g. A warp keeps the fragments of 16 M rows of one operand in registers (Q for the
// forward and dQ, K and V for dK/dV) and streams the other operand's tiles through shared memory
// with cp.async double buffering. M = 2 halves the shared-memory reads per mma but needs about
// 255 registers; on an H200 that lost to M = 1 with 3 to 4 blocks per SM (MmaChoice). Shared
// tiles have a row pitch of hd + 8 elements, so the 8 rows that one ldmatrix reads fall in
// distinct bank groups.

constexpr int kMmaThreads = 128;
constexpr int kMmaWarps = kMmaThreads / kWarp;

__device__ inline std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (a 32-bit shared address), asynchronously; zero-filled when !valid.
__device__ inline void cp_async_16(std::uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most one committed group is still in flight.
__device__ inline void cp_async_wait_all_but_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// Four 8 x 8 bf16 matrices; lanes 8m .. 8m + 7 give the row addresses of matrix m.
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c (16 x 8, fp32) += a (16 x 16, bf16) * b (16 x 8, bf16).
__device__ inline void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x by the special-function unit (about 2 ulp; flushes denormal results to 0, which the
// probabilities tolerate).
__device__ inline float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as a bf16 pair, lo in the low half (the lower column).
__device__ inline std::uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&v);
}
// dst[0..1] += (lo, hi), or = (lo, hi) without accumulate (dst then is never read).
__device__ inline void store_bf16_pair(bf16* dst, float lo, float hi, bool accumulate) {
  auto* x = reinterpret_cast<__nv_bfloat162*>(dst);
  if (accumulate) {
    const float2 old = __bfloat1622float2(*x);
    lo += old.x;
    hi += old.y;
  }
  *x = __floats2bfloat162_rn(lo, hi);
}

// Copies (Rows, HD) tiles into shared tiles of pitch HD + 8. Thread t always moves the 16-byte
// column t % (HD / 8) of rows t / (HD / 8) + i * kRowStep, so the per-tile address work is one
// 64-bit multiply and a few adds (index arithmetic otherwise dominates the issue slots).
template <int HD, int Rows>
struct TileCopy {
  static constexpr int kChunks = HD / 8, kRowStep = kMmaThreads / kChunks, kPasses = Rows / kRowStep;
  static constexpr int kPitchBytes = (HD + 8) * 2;
  static_assert(Rows % kRowStep == 0, "tile rows must be a multiple of the rows one pass covers");
  int row, col;
  __device__ TileCopy() : row(threadIdx.x / kChunks), col((threadIdx.x % kChunks) * 8) {}
  // Rows [row0, row0 + Rows) of src (row stride `stride`, `rows` rows in all) into the shared
  // tile at `dst`; rows past the end are zero-filled.
  __device__ void operator()(std::uint32_t dst, const bf16* src, std::int64_t stride, std::int64_t row0,
                             std::int64_t rows) const {
    const bf16* s = src + (row0 + row) * stride + col;
    const std::int64_t left = rows - row0 - row;
    const std::uint32_t d = dst + row * kPitchBytes + col * 2;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const bool valid = i * kRowStep < left;
      cp_async_16(d + i * kRowStep * kPitchBytes, valid ? s + i * kRowStep * stride : src, valid);
    }
  }
};

// A fragments of rows [row0 + 16 m, row0 + 16 m + 16) (m < M), all HD features, of a shared tile.
template <int HD, int M>
__device__ inline void load_a_fragments(std::uint32_t (&f)[M][HD / 16][4], std::uint32_t tile, int row0) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base = tile + ((row0 + lane % 16) * kPitch + (lane / 16) * 8) * 2;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) ldmatrix_x4(f[m][ks], base + (16 * m * kPitch + ks * 16) * 2);
}

// acc (16 M x N) = a (16 M x HD) * tile^T for tile (N, HD) in shared memory: tile rows are the
// output columns (S = Q K^T with tile = K).
template <int HD, int M, int N>
__device__ inline void mma_a_bt(float (&acc)[M][N / 8][4], const std::uint32_t (&a)[M][HD / 16][4],
                                std::uint32_t tile) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base = tile + ((lane % 8 + (lane / 16) * 8) * kPitch + ((lane / 8) % 2) * 8) * 2;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {  // tile rows np*16 .. np*16 + 15: two 8-column outputs
      std::uint32_t b[4];
      ldmatrix_x4(b, base + (np * 16 * kPitch + ks * 16) * 2);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma_bf16(acc[m][2 * np], a[m][ks], b[0], b[1]);
        mma_bf16(acc[m][2 * np + 1], a[m][ks], b[2], b[3]);
      }
    }
  }
}

// The accumulators of columns [16 kk, 16 kk + 16) of p (16 x N, fp32) as a bf16 A fragment.
template <int N>
__device__ inline void a_fragment_of(std::uint32_t (&a)[4], const float (&p)[N / 8][4], int kk) {
  a[0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

// acc (16 M x HD) += p (16 M x K, fp32 accumulators, rounded to bf16) * tile for tile (K, HD) in
// shared memory (O += P V with tile = V). Tile rows [row0, row0 + K) are used.
template <int HD, int M, int K>
__device__ inline void mma_p_b(float (&acc)[M][HD / 8][4], const float (&p)[M][K / 8][4], std::uint32_t tile,
                               int row0 = 0) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base = tile + ((row0 + lane % 8 + ((lane / 8) % 2) * 8) * kPitch + (lane / 16) * 8) * 2;
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    std::uint32_t a[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) a_fragment_of<K>(a[m], p[m], kk);
#pragma unroll
    for (int np = 0; np < HD / 16; ++np) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, base + (kk * 16 * kPitch + np * 16) * 2);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma_bf16(acc[m][2 * np], a[m], b[0], b[1]);
        mma_bf16(acc[m][2 * np + 1], a[m], b[2], b[3]);
      }
    }
  }
}

template <int HD_, int M_, int N_, int MinBlocks_>
struct MmaForward {
  static constexpr int HD = HD_, M = M_, kKeys = N_, kMinBlocks = MinBlocks_;
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kMmaWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes = sizeof(bf16) * kPitch * (kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile); each warp owns 16 M query rows and streams over the key
// tiles: S = Q K^T, online softmax in registers, O += P V with P rounded to bf16.
template <class Cfg>
__global__ void __launch_bounds__(kMmaThreads, Cfg::kMinBlocks) forward_mma(AttentionParams<bf16> p) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kKeys = Cfg::kKeys, kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kKeyTileBytes = kKeys * kPitch * 2;
  const std::uint32_t Qs = smem_address(smem_raw);        // (block rows, pitch)
  const std::uint32_t Ks = Qs + kBlockRows * kPitch * 2;  // [2] (key tile, pitch)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;        // [2] (key tile, pitch)
  const TileCopy<HD, kBlockRows> copy_q;
  const TileCopy<HD, kKeys> copy_kv;

  const std::int64_t Tn = p.seq, nqt = (Tn + kBlockRows - 1) / kBlockRows;
  const std::int64_t bh = blockIdx.x / nqt, qt = nqt - 1 - blockIdx.x % nqt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kBlockRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* kg = p.k + b * Tn * p.k_stride + h * HD;
  const bf16* vg = p.v + b * Tn * p.v_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_q0 = q0 + warp * kWarpRows;

  copy_q(Qs, p.q + b * Tn * p.q_stride + h * HD, p.q_stride, q0, Tn);
  copy_kv(Ks, kg, p.k_stride, 0, Tn);
  copy_kv(Vs, vg, p.v_stride, 0, Tn);
  cp_async_commit();

  std::uint32_t qf[M][HD / 16][4];
  float o[M][HD / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[m][n][e] = 0.0f;
  float mx[M][2], l[M][2];  // rows g and g + 8 of each m-tile; max in log2 units
#pragma unroll
  for (int m = 0; m < M; ++m) mx[m][0] = mx[m][1] = -INFINITY, l[m][0] = l[m][1] = 0.0f;

  const std::int64_t nkt = (Tn + kKeys - 1) / kKeys;
  const std::int64_t n_kt = p.causal ? min(nkt, (q0 + kBlockRows + kKeys - 1) / kKeys) : nkt;
  for (std::int64_t kt = 0; kt < n_kt; ++kt) {
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < n_kt) {
      copy_kv(Ks + (buf ^ 1) * kKeyTileBytes, kg, p.k_stride, (kt + 1) * kKeys, Tn);
      copy_kv(Vs + (buf ^ 1) * kKeyTileBytes, vg, p.v_stride, (kt + 1) * kKeys, Tn);
    }
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (kt == 0) load_a_fragments<HD, M>(qf, Qs, warp * kWarpRows);
    const std::int64_t k0 = kt * kKeys;
    // With causal, a warp whose rows all precede this key tile has nothing to do here.
    if (!p.causal || k0 <= warp_q0 + kWarpRows - 1) {
      float s[M][kKeys / 8][4];
      mma_a_bt<HD, M, kKeys>(s, qf, Ks + buf * kKeyTileBytes);
      const bool edge = (p.causal && k0 + kKeys - 1 > warp_q0) || k0 + kKeys > Tn;
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[m][n][e] * scale_log2;
            if (edge) {
              const std::int64_t key = k0 + n * 8 + 2 * c + (e & 1), query = warp_q0 + 16 * m + g + (e >> 1) * 8;
              if (key >= Tn || (p.causal && key > query)) x = -INFINITY;
            }
            s[m][n][e] = x;
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float tile_max = -INFINITY;
#pragma unroll
          for (int n = 0; n < kKeys / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[m][n][2 * r], s[m][n][2 * r + 1]));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
          const float m_new = fmaxf(mx[m][r], tile_max);
          const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
          const float alpha = exp2_approx(mx[m][r] - base);
          mx[m][r] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int n = 0; n < kKeys / 8; ++n) {
            s[m][n][2 * r] = exp2_approx(s[m][n][2 * r] - base);
            s[m][n][2 * r + 1] = exp2_approx(s[m][n][2 * r + 1] - base);
            sum += s[m][n][2 * r] + s[m][n][2 * r + 1];
          }
          l[m][r] = l[m][r] * alpha + sum;  // this thread's columns; the quad is summed at the end
#pragma unroll
          for (int n = 0; n < HD / 8; ++n) {
            o[m][n][2 * r] *= alpha;
            o[m][n][2 * r + 1] *= alpha;
          }
        }
      }
      mma_p_b<HD, M, kKeys>(o, s, Vs + buf * kKeyTileBytes);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }

#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[m][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const std::int64_t row = warp_q0 + 16 * m + g + r * 8;
      if (row >= Tn) continue;
      const float inv = 1.0f / sum;
      bf16* out = p.o + (b * Tn + row) * p.o_stride + h * HD;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        *reinterpret_cast<std::uint32_t*>(out + n * 8 + 2 * c) = pack_bf16(o[m][n][2 * r] * inv, o[m][n][2 * r + 1] * inv);
      if (c == 0) p.lse[bh * Tn + row] = mx[m][r] * kLn2 + logf(sum);
    }
  }
}

// Tile shapes of the dK/dV pass: each warp owns 16 M keys, a block 4 warps' keys; query tiles
// of Q are staged in shared memory and consumed Chunk queries at a time.
template <int HD_, int M_, int Chunk_, int Q_, int MinBlocks_>
struct MmaDkdv {
  static constexpr int HD = HD_, M = M_, kChunk = Chunk_, kQueries = Q_, kMinBlocks = MinBlocks_;
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kMmaWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes =
      sizeof(bf16) * kPitch * (2 * kBlockRows + 4 * kQueries) + sizeof(float) * 4 * kQueries;
};

// One block per (b, h, key tile): each warp owns 16 M keys, keeps their K and V fragments in
// registers, and for every chunk of queries computes S^T = K Q^T and dP^T = V dO^T, then
// dV += P^T dO and dK += dS^T Q.
template <class Cfg>
__global__ void __launch_bounds__(kMmaThreads, Cfg::kMinBlocks) backward_dkdv_mma(AttentionBackwardParams<bf16> p,
                                                                                 const float* delta) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kQ = Cfg::kQueries, kChunk = Cfg::kChunk, kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kQueryTileBytes = kQ * kPitch * 2;
  const std::uint32_t Ks = smem_address(smem_raw);        // (block rows, pitch)
  const std::uint32_t Vs = Ks + kBlockRows * kPitch * 2;  // (block rows, pitch)
  const std::uint32_t Qs = Vs + kBlockRows * kPitch * 2;  // [2] (query tile, pitch)
  const std::uint32_t dOs = Qs + 2 * kQueryTileBytes;     // [2] (query tile, pitch)
  float* lse_s = reinterpret_cast<float*>(smem_raw + 2 * kBlockRows * kPitch * 2 + 4 * kQueryTileBytes);  // [2] (query tile), log2 units
  float* delta_s = lse_s + 2 * kQ;                                 // [2] (query tile)

  const std::int64_t Tn = p.seq, nqt = (Tn + kQ - 1) / kQ, nkt = (Tn + kBlockRows - 1) / kBlockRows;
  const std::int64_t bh = blockIdx.x / nkt, kt = blockIdx.x % nkt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, k0 = kt * kBlockRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* qg = p.q + b * Tn * p.q_stride + h * HD;
  const bf16* dog = p.d_o + b * Tn * p.do_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_k0 = k0 + warp * kWarpRows;

  const TileCopy<HD, kQ> copy_q;
  const TileCopy<HD, kBlockRows> copy_kv;
  auto stage = [&](int buf, std::int64_t qt) {  // Q, dO, lse and delta of query tile qt
    copy_q(Qs + buf * kQueryTileBytes, qg, p.q_stride, qt * kQ, Tn);
    copy_q(dOs + buf * kQueryTileBytes, dog, p.do_stride, qt * kQ, Tn);
    if (threadIdx.x < kQ) {
      const std::int64_t row = qt * kQ + threadIdx.x;
      // Rows past T get lse = +inf, so their probabilities are exactly 0.
      lse_s[buf * kQ + threadIdx.x] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
      delta_s[buf * kQ + threadIdx.x] = row < Tn ? delta[bh * Tn + row] : 0.0f;
    }
  };

  const std::int64_t qt_begin = p.causal ? k0 / kQ : 0;
  copy_kv(Ks, p.k + b * Tn * p.k_stride + h * HD, p.k_stride, k0, Tn);
  copy_kv(Vs, p.v + b * Tn * p.v_stride + h * HD, p.v_stride, k0, Tn);
  stage(0, qt_begin);
  cp_async_commit();

  std::uint32_t kf[M][HD / 16][4], vf[M][HD / 16][4];
  float dk[M][HD / 8][4], dv[M][HD / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[m][n][e] = dv[m][n][e] = 0.0f;

  for (std::int64_t qt = qt_begin; qt < nqt; ++qt) {
    const int buf = static_cast<int>((qt - qt_begin) & 1);
    if (qt + 1 < nqt) stage(buf ^ 1, qt + 1);
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (qt == qt_begin) {
      load_a_fragments<HD, M>(kf, Ks, warp * kWarpRows);
      load_a_fragments<HD, M>(vf, Vs, warp * kWarpRows);
    }
    const std::uint32_t Qb = Qs + buf * kQueryTileBytes;
    const std::uint32_t dOb = dOs + buf * kQueryTileBytes;
    const float* lse_b = lse_s + buf * kQ;
    const float* delta_b = delta_s + buf * kQ;
#pragma unroll
    for (int ch = 0; ch < kQ / kChunk; ++ch) {
      const std::int64_t cq0 = qt * kQ + ch * kChunk;
      // With causal, queries that precede all of this warp's keys contribute nothing.
      if (p.causal && cq0 + kChunk - 1 < warp_k0) continue;
      if (cq0 >= Tn) continue;
      float st[M][kChunk / 8][4], dpt[M][kChunk / 8][4];  // (32 keys, 16 queries)
      mma_a_bt<HD, M, kChunk>(st, kf, Qb + ch * kChunk * kPitch * 2);
      mma_a_bt<HD, M, kChunk>(dpt, vf, dOb + ch * kChunk * kPitch * 2);
      const bool edge = (p.causal && warp_k0 + kWarpRows - 1 > cq0) || cq0 + kChunk > Tn ||
                        warp_k0 + kWarpRows > Tn;
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int n = 0; n < kChunk / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int ql = ch * kChunk + n * 8 + 2 * c + (e & 1);
            float pv = exp2_approx(st[m][n][e] * scale_log2 - lse_b[ql]);
            if (edge) {
              const std::int64_t key = warp_k0 + 16 * m + g + (e >> 1) * 8, query = qt * kQ + ql;
              if (key >= Tn || query >= Tn || (p.causal && key > query)) pv = 0.0f;
            }
            st[m][n][e] = pv;
            dpt[m][n][e] = pv * (dpt[m][n][e] - delta_b[ql]);
          }
        }
      }
      mma_p_b<HD, M, kChunk>(dv, st, dOb, ch * kChunk);
      mma_p_b<HD, M, kChunk>(dk, dpt, Qb, ch * kChunk);
    }
    __syncthreads();
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t key = warp_k0 + 16 * m + g + r * 8;
      if (key >= Tn) continue;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n) {
        const int col = n * 8 + 2 * c;
        if (p.dv)
          store_bf16_pair(p.dv + (b * Tn + key) * p.dv_stride + h * HD + col, dv[m][n][2 * r],
                          dv[m][n][2 * r + 1], p.accumulate);
        if (p.dk)
          store_bf16_pair(p.dk + (b * Tn + key) * p.dk_stride + h * HD + col, scale * dk[m][n][2 * r],
                          scale * dk[m][n][2 * r + 1], p.accumulate);
      }
    }
  }
}

// Tile shapes of the dQ pass: each warp owns 16 M queries, a block 4 warps' queries; key tiles
// of N stream through shared memory.
template <int HD_, int M_, int N_, int MinBlocks_>
struct MmaDq {
  static constexpr int HD = HD_, M = M_, kKeys = N_, kMinBlocks = MinBlocks_;
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kMmaWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes = sizeof(bf16) * kPitch * (2 * kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile): each warp owns 16 M queries, keeps their Q and dO fragments
// in registers, and for every key tile computes S = Q K^T and dP = dO V^T, then dQ += dS K.
template <class Cfg>
__global__ void __launch_bounds__(kMmaThreads, Cfg::kMinBlocks) backward_dq_mma(AttentionBackwardParams<bf16> p,
                                                                               const float* delta) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kKeys = Cfg::kKeys, kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kKeyTileBytes = kKeys * kPitch * 2;
  const std::uint32_t Qs = smem_address(smem_raw);         // (block rows, pitch)
  const std::uint32_t dOs = Qs + kBlockRows * kPitch * 2;  // (block rows, pitch)
  const std::uint32_t Ks = dOs + kBlockRows * kPitch * 2;  // [2] (key tile, pitch)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;         // [2] (key tile, pitch)
  const TileCopy<HD, kBlockRows> copy_q;
  const TileCopy<HD, kKeys> copy_kv;

  const std::int64_t Tn = p.seq, nqt = (Tn + kBlockRows - 1) / kBlockRows;
  const std::int64_t bh = blockIdx.x / nqt, qt = nqt - 1 - blockIdx.x % nqt;  // see tile_order
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kBlockRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* kg = p.k + b * Tn * p.k_stride + h * HD;
  const bf16* vg = p.v + b * Tn * p.v_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_q0 = q0 + warp * kWarpRows;

  copy_q(Qs, p.q + b * Tn * p.q_stride + h * HD, p.q_stride, q0, Tn);
  copy_q(dOs, p.d_o + b * Tn * p.do_stride + h * HD, p.do_stride, q0, Tn);
  copy_kv(Ks, kg, p.k_stride, 0, Tn);
  copy_kv(Vs, vg, p.v_stride, 0, Tn);
  cp_async_commit();

  float lse_r[M][2], delta_r[M][2];  // rows g and g + 8 of each m-tile
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = warp_q0 + 16 * m + g + r * 8;
      lse_r[m][r] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
      delta_r[m][r] = row < Tn ? delta[bh * Tn + row] : 0.0f;
    }
  }
  std::uint32_t qf[M][HD / 16][4], of[M][HD / 16][4];
  float dq[M][HD / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq[m][n][e] = 0.0f;

  const std::int64_t nkt = (Tn + kKeys - 1) / kKeys;
  const std::int64_t n_kt = p.causal ? min(nkt, (q0 + kBlockRows + kKeys - 1) / kKeys) : nkt;
  for (std::int64_t kt = 0; kt < n_kt; ++kt) {
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < n_kt) {
      copy_kv(Ks + (buf ^ 1) * kKeyTileBytes, kg, p.k_stride, (kt + 1) * kKeys, Tn);
      copy_kv(Vs + (buf ^ 1) * kKeyTileBytes, vg, p.v_stride, (kt + 1) * kKeys, Tn);
    }
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (kt == 0) {
      load_a_fragments<HD, M>(qf, Qs, warp * kWarpRows);
      load_a_fragments<HD, M>(of, dOs, warp * kWarpRows);
    }
    const std::int64_t k0 = kt * kKeys;
    if (!p.causal || k0 <= warp_q0 + kWarpRows - 1) {
      const std::uint32_t Kb = Ks + buf * kKeyTileBytes;
      float s[M][kKeys / 8][4], dp[M][kKeys / 8][4];  // (32 queries, 32 keys)
      mma_a_bt<HD, M, kKeys>(s, qf, Kb);
      mma_a_bt<HD, M, kKeys>(dp, of, Vs + buf * kKeyTileBytes);
      const bool edge = (p.causal && k0 + kKeys - 1 > warp_q0) || k0 + kKeys > Tn;
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            float pv = exp2_approx(s[m][n][e] * scale_log2 - lse_r[m][r]);
            if (edge) {
              const std::int64_t key = k0 + n * 8 + 2 * c + (e & 1), query = warp_q0 + 16 * m + g + r * 8;
              if (key >= Tn || (p.causal && key > query)) pv = 0.0f;
            }
            dp[m][n][e] = pv * (dp[m][n][e] - delta_r[m][r]);
          }
        }
      }
      mma_p_b<HD, M, kKeys>(dq, dp, Kb);
    }
    __syncthreads();
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = warp_q0 + 16 * m + g + r * 8;
      if (row >= Tn) continue;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        store_bf16_pair(p.dq + (b * Tn + row) * p.dq_stride + h * HD + n * 8 + 2 * c, scale * dq[m][n][2 * r],
                        scale * dq[m][n][2 * r + 1], p.accumulate);
    }
  }
}

// ---- dispatch --------------------------------------------------------------------------------

inline bool aligned_rows(const void* ptr, std::int64_t stride, std::int64_t bytes_multiple) {
  return reinterpret_cast<std::uintptr_t>(ptr) % static_cast<std::uintptr_t>(bytes_multiple) == 0 &&
         (stride * static_cast<std::int64_t>(sizeof(bf16))) % bytes_multiple == 0;
}

// The mma kernels read rows in 16-byte pieces and write output pairs as 4 bytes.
inline bool use_mma(const AttentionParams<bf16>& p) {
  return (p.head_dim == 32 || p.head_dim == 64) && aligned_rows(p.q, p.q_stride, 16) &&
         aligned_rows(p.k, p.k_stride, 16) && aligned_rows(p.v, p.v_stride, 16) && aligned_rows(p.o, p.o_stride, 4);
}
inline bool use_mma(const AttentionBackwardParams<bf16>& p) {
  return (p.head_dim == 32 || p.head_dim == 64) && aligned_rows(p.q, p.q_stride, 16) &&
         aligned_rows(p.k, p.k_stride, 16) && aligned_rows(p.v, p.v_stride, 16) &&
         aligned_rows(p.d_o, p.do_stride, 16) && aligned_rows(p.o, p.o_stride, 16) && (!p.dq || aligned_rows(p.dq, p.dq_stride, 4)) &&
         (!p.dk || aligned_rows(p.dk, p.dk_stride, 4)) && (!p.dv || aligned_rows(p.dv, p.dv_stride, 4));
}

inline unsigned grid_of(std::int64_t tiles, std::int64_t bh) {
  const std::int64_t n = tiles * bh;
  FATHOM_CHECK(n < (std::int64_t{1} << 31), "attention (CUDA): " << n << " blocks exceed the grid limit");
  return static_cast<unsigned>(n);
}

template <class T>
void launch_forward_tiled(const AttentionParams<T>& p) {
  const std::size_t smem = TiledFwdSmem<accum_t<T>>::bytes(static_cast<int>(p.head_dim));
  allow_shared_memory<forward_tiled<T>>(smem);
  const std::int64_t nqt = (p.seq + kTile - 1) / kTile;
  forward_tiled<T><<<grid_of(nqt, p.batch * p.heads), kTiledThreads, smem, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward_tiled(const AttentionBackwardParams<T>& p, const accum_t<T>* delta) {
  const std::size_t smem = TiledBwdSmem<accum_t<T>>::bytes(static_cast<int>(p.head_dim));
  const std::int64_t tiles = (p.seq + kTile - 1) / kTile, bh = p.batch * p.heads;
  if (p.dk || p.dv) {
    allow_shared_memory<backward_dkdv_tiled<T>>(smem);
    backward_dkdv_tiled<T><<<grid_of(tiles, bh), kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  if (p.dq) {
    allow_shared_memory<backward_dq_tiled<T>>(smem);
    backward_dq_tiled<T><<<grid_of(tiles, bh), kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

template <class Cfg>
void launch_forward_mma(const AttentionParams<bf16>& p) {
  constexpr std::size_t smem = Cfg::smem_bytes;
  allow_shared_memory<forward_mma<Cfg>>(smem);
  const std::int64_t tiles = (p.seq + Cfg::kBlockRows - 1) / Cfg::kBlockRows;
  forward_mma<Cfg><<<grid_of(tiles, p.batch * p.heads), kMmaThreads, smem, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class Cfg>
void launch_backward_dkdv_mma(const AttentionBackwardParams<bf16>& p, const float* delta) {
  constexpr std::size_t smem = Cfg::smem_bytes;
  allow_shared_memory<backward_dkdv_mma<Cfg>>(smem);
  const std::int64_t tiles = (p.seq + Cfg::kBlockRows - 1) / Cfg::kBlockRows;
  backward_dkdv_mma<Cfg><<<grid_of(tiles, p.batch * p.heads), kMmaThreads, smem, cuda::stream()>>>(p, delta);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class Cfg>
void launch_backward_dq_mma(const AttentionBackwardParams<bf16>& p, const float* delta) {
  constexpr std::size_t smem = Cfg::smem_bytes;
  allow_shared_memory<backward_dq_mma<Cfg>>(smem);
  const std::int64_t tiles = (p.seq + Cfg::kBlockRows - 1) / Cfg::kBlockRows;
  backward_dq_mma<Cfg><<<grid_of(tiles, p.batch * p.heads), kMmaThreads, smem, cuda::stream()>>>(p, delta);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// The tile shapes used for each head_dim, chosen by timing the variants on an H200 (bf16, causal,
// B 128 T 256 and B 32 T 1024, H 12, hd 64). With 3 to 4 blocks of 128 threads per SM the
// scheduler hides the latency of the mma/ldmatrix/exp chains; larger per-warp tiles (M = 2, key
// tiles of 128) cost registers and occupancy and ran 5 to 30% slower.
template <int HD>
struct MmaChoice {
  using Forward = MmaForward<HD, 1, 64, 4>;
  using Dkdv = MmaDkdv<HD, 1, 32, 64, 3>;
  using Dq = MmaDq<HD, 1, 64, 3>;
};

template <int HD>
void launch_forward_mma(const AttentionParams<bf16>& p) {
  launch_forward_mma<typename MmaChoice<HD>::Forward>(p);
}
template <int HD>
void launch_backward_mma(const AttentionBackwardParams<bf16>& p, const float* delta) {
  if (p.dk || p.dv) launch_backward_dkdv_mma<typename MmaChoice<HD>::Dkdv>(p, delta);
  if (p.dq) launch_backward_dq_mma<typename MmaChoice<HD>::Dq>(p, delta);
}

// delta (B, H, T) = rowsum(d_o * o).
template <class T>
void launch_rowsum(const AttentionBackwardParams<T>& p, accum_t<T>* delta, bool vectorized) {
  const std::int64_t rows = p.batch * p.seq * p.heads;
  constexpr int kThreads = 256;
  if constexpr (std::is_same_v<T, bf16>) {
    if (vectorized) {
      const int g = static_cast<int>(p.head_dim / 8);
      const unsigned blocks = grid_of((rows * g + kThreads - 1) / kThreads, 1);
      if (g == 8) rowsum_do_o_bf16<8><<<blocks, kThreads, 0, cuda::stream()>>>(p, delta);
      else rowsum_do_o_bf16<4><<<blocks, kThreads, 0, cuda::stream()>>>(p, delta);
      FATHOM_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  constexpr int kRowsPerBlock = kThreads / kWarp;
  rowsum_do_o<T><<<grid_of((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1), kThreads, 0, cuda::stream()>>>(p, delta);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

inline void check_head_dim(std::int64_t hd) {
  FATHOM_CHECK(hd >= 1 && hd <= 128, "attention (CUDA): expected head_dim in [1, 128], got " << hd);
}

}  // namespace detail::attn

template <class T>
void attention(Cuda, const AttentionParams<T>& p) {
  namespace a = detail::attn;
  a::check_head_dim(p.head_dim);
  if (p.batch == 0 || p.seq == 0 || p.heads == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (a::use_mma(p)) {
      if (p.head_dim == 64) return a::launch_forward_mma<64>(p);
      return a::launch_forward_mma<32>(p);
    }
  }
  a::launch_forward_tiled<T>(p);
}

template <class T>
void attention_backward(Cuda, const AttentionBackwardParams<T>& p) {
  namespace a = detail::attn;
  using A = accum_t<T>;
  a::check_head_dim(p.head_dim);
  if (p.batch == 0 || p.seq == 0 || p.heads == 0 || (!p.dq && !p.dk && !p.dv)) return;
  bool mma = false;
  if constexpr (std::is_same_v<T, bf16>) mma = a::use_mma(p);
  a::Scratch delta(static_cast<std::size_t>(p.batch * p.seq * p.heads) * sizeof(A));  // (B, H, T)
  a::launch_rowsum(p, delta.as<A>(), mma);
  if constexpr (std::is_same_v<T, bf16>) {
    if (mma) {
      if (p.head_dim == 64) return a::launch_backward_mma<64>(p, delta.as<float>());
      return a::launch_backward_mma<32>(p, delta.as<float>());
    }
  }
  a::launch_backward_tiled<T>(p, delta.as<A>());
}

}  // namespace fathom::kernels
