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

// ---- tiled family ----------------------------------------------------------------------------
// 128 threads, 32 query rows x 32 keys a tile. Thread (warp w, lane j) computes scores of query
// rows w + 4u (u < 8) against key j; for outputs it owns rows w + 4u, features j + 32r (r < R).
// Shared tiles are (32, hd + 1) so that a warp reading one feature of 32 rows hits 32 banks.

constexpr int kTile = 32;
constexpr int kTiledThreads = 128;
constexpr int kRowsPerWarp = kTile / (kTiledThreads / kWarp);  // 8

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

template <class T, int R>
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

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads, nqt = (Tn + kTile - 1) / kTile;
  const std::int64_t bh = blockIdx.x % BH, qt = nqt - 1 - blockIdx.x / BH;  // longest rows first
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
  A o[kRowsPerWarp][R];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) o[u][r] = 0;

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
      for (int r = 0; r < R; ++r) {
        const int d = lane + kWarp * r;
        if (d < hd) {
          A acc = o[u][r] * alpha;
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
    for (int r = 0; r < R; ++r) {
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
template <class T, int R>
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

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads;
  const std::int64_t bh = blockIdx.x % BH, kt = blockIdx.x / BH;  // with causal, low kt is the most work
  const std::int64_t b = bh / p.heads, h = bh % p.heads, k0 = kt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const std::int64_t base_q = b * Tn * p.q_stride + h * hd, base_k = b * Tn * p.k_stride + h * hd,
                     base_v = b * Tn * p.v_stride + h * hd, base_do = b * Tn * p.do_stride + h * hd;

  load_tile(Ks, ld, p.k + base_k, p.k_stride, k0, Tn, hd, A(1));
  load_tile(Vs, ld, p.v + base_v, p.v_stride, k0, Tn, hd, A(1));
  A dk[kRowsPerWarp][R], dv[kRowsPerWarp][R];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) dk[u][r] = dv[u][r] = 0;

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
      for (int r = 0; r < R; ++r) {
        const int d = lane + kWarp * r;
        if (d >= hd) continue;
        A gv = dv[u][r], gk = dk[u][r];
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
    for (int r = 0; r < R; ++r) {
      const int d = lane + kWarp * r;
      if (d >= hd) continue;
      if (p.dv) {
        T* x = p.dv + (b * Tn + key) * p.dv_stride + h * hd + d;
        *x = scalar_cast<T>(scalar_cast<A>(*x) + dv[u][r]);
      }
      if (p.dk) {
        T* x = p.dk + (b * Tn + key) * p.dk_stride + h * hd + d;
        *x = scalar_cast<T>(scalar_cast<A>(*x) + scale * dk[u][r]);
      }
    }
  }
}

// One block per (b, h, query tile): dQ of 32 rows, summed over the key tiles they see.
template <class T, int R>
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

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads, nqt = (Tn + kTile - 1) / kTile;
  const std::int64_t bh = blockIdx.x % BH, qt = nqt - 1 - blockIdx.x / BH;
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;

  load_tile(Qs, ld, p.q + b * Tn * p.q_stride + h * hd, p.q_stride, q0, Tn, hd, A(1));
  load_tile(dOs, ld, p.d_o + b * Tn * p.do_stride + h * hd, p.do_stride, q0, Tn, hd, A(1));
  if (threadIdx.x < kTile) {
    const std::int64_t row = q0 + threadIdx.x;
    lse_s[threadIdx.x] = row < Tn ? p.lse[bh * Tn + row] : A(0);
    delta_s[threadIdx.x] = row < Tn ? delta[bh * Tn + row] : A(0);
  }
  A dq[kRowsPerWarp][R];
#pragma unroll
  for (int u = 0; u < kRowsPerWarp; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) dq[u][r] = 0;

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
      for (int r = 0; r < R; ++r) {
        const int d = lane + kWarp * r;
        if (d >= hd) continue;
        A g = dq[u][r];
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
    for (int r = 0; r < R; ++r) {
      const int d = lane + kWarp * r;
      if (d >= hd) continue;
      T* x = p.dq + (b * Tn + row) * p.dq_stride + h * hd + d;
      *x = scalar_cast<T>(scalar_cast<A>(*x) + scale * dq[u][r]);
    }
  }
}

// ---- mma family (bf16 on tensor cores) -------------------------------------------------------
// 128 threads = 4 warps, 64 x 64 tiles, each warp owns 16 rows of the block's tile. Fragment
// layouts are those of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): with
// g = lane / 4 and c = lane % 4, an fp32 accumulator holds rows g and g + 8, columns 2c and
// 2c + 1 of a 16 x 8 tile; the A operand (16 x 16) holds the same rows, columns 2c, 2c + 1 and
// 2c + 8, 2c + 9; the B operand (16 x 8) holds rows 2c, 2c + 1, 2c + 8, 2c + 9 of column g.
// Shared tiles have a row pitch of hd + 8 elements, so the 8 rows one ldmatrix reads fall in
// distinct 16-byte bank groups.

constexpr int kMmaRows = 64;
constexpr int kMmaThreads = 128;

__device__ inline std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (rows past T).
__device__ inline void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most one committed group is still in flight.
__device__ inline void cp_async_wait_all_but_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// Four 8 x 8 bf16 matrices; lanes 8m .. 8m + 7 give the row addresses of matrix m.
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// c (16 x 8, fp32) += a (16 x 16, bf16) * b (16 x 8, bf16).
__device__ inline void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, lo in the low half (the lower column).
__device__ inline std::uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&v);
}
__device__ inline void add_bf16_pair(bf16* dst, float lo, float hi) {
  auto* x = reinterpret_cast<__nv_bfloat162*>(dst);
  const float2 old = __bfloat1622float2(*x);
  *x = __floats2bfloat162_rn(old.x + lo, old.y + hi);
}

// Copies rows [row0, row0 + 64) of src (hd features, 16-byte chunks) into dst (64, hd + 8).
template <int HD>
__device__ inline void cp_async_tile(bf16* dst, const bf16* src, std::int64_t stride, std::int64_t row0,
                                     std::int64_t rows) {
  constexpr int kChunks = HD / 8, kPitch = HD + 8;
  for (int c = threadIdx.x; c < kMmaRows * kChunks; c += kMmaThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const std::int64_t row = row0 + r;
    const bool valid = row < rows;
    cp_async_16(dst + r * kPitch + col, src + (valid ? row : 0) * stride + col, valid);
  }
}

// A fragments (16 rows x HD) of rows [row0, row0 + 16) of a shared tile.
template <int HD>
__device__ inline void load_a_fragments(std::uint32_t (&f)[HD / 16][4], const bf16* tile, int row0) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks)
    ldmatrix_x4(f[ks], tile + (row0 + lane % 16) * kPitch + ks * 16 + (lane / 16) * 8);
}

// acc (16 x 64) = a (16 x HD) * tile^T, tile (64, HD) in shared memory: the 64 tile rows are the
// output columns (S = Q K^T with tile = K).
template <int HD>
__device__ inline void mma_a_bt(float (&acc)[8][4], const std::uint32_t (&a)[HD / 16][4], const bf16* tile) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
    for (int np = 0; np < 4; ++np) {  // tile rows np*16 .. np*16 + 15: two 8-column outputs
      std::uint32_t b[4];
      ldmatrix_x4(b, tile + (np * 16 + lane % 8 + (lane / 16) * 8) * kPitch + ks * 16 + ((lane / 8) % 2) * 8);
      mma_bf16(acc[2 * np], a[ks], b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a[ks], b[2], b[3]);
    }
  }
}

// acc (16 x HD) += p (16 x 64, as fp32 accumulators) * tile, tile (64, HD) in shared memory
// (O += P V with tile = V).
template <int HD>
__device__ inline void mma_p_b(float (&acc)[HD / 8][4], const float (&p)[8][4], const bf16* tile) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // tile rows kk*16 .. kk*16 + 15
    const std::uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                                pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int np = 0; np < HD / 16; ++np) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, tile + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kPitch + np * 16 + (lane / 16) * 8);
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

template <int HD>
__global__ void __launch_bounds__(kMmaThreads) forward_mma(AttentionParams<bf16> p) {
  constexpr int kPitch = HD + 8, kTileElems = kMmaRows * kPitch;
  __shared__ __align__(16) bf16 Qs[kTileElems];
  __shared__ __align__(16) bf16 Ks[2][kTileElems];
  __shared__ __align__(16) bf16 Vs[2][kTileElems];

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads, nqt = (Tn + kMmaRows - 1) / kMmaRows;
  const std::int64_t bh = blockIdx.x % BH, qt = nqt - 1 - blockIdx.x / BH;  // longest rows first
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kMmaRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* qg = p.q + b * Tn * p.q_stride + h * HD;
  const bf16* kg = p.k + b * Tn * p.k_stride + h * HD;
  const bf16* vg = p.v + b * Tn * p.v_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  cp_async_tile<HD>(Qs, qg, p.q_stride, q0, Tn);
  cp_async_tile<HD>(Ks[0], kg, p.k_stride, 0, Tn);
  cp_async_tile<HD>(Vs[0], vg, p.v_stride, 0, Tn);
  cp_async_commit();

  std::uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g and g + 8, log2 units

  const std::int64_t n_kt = p.causal ? qt + 1 : nqt;
  for (std::int64_t kt = 0; kt < n_kt; ++kt) {
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < n_kt) {
      cp_async_tile<HD>(Ks[buf ^ 1], kg, p.k_stride, (kt + 1) * kMmaRows, Tn);
      cp_async_tile<HD>(Vs[buf ^ 1], vg, p.v_stride, (kt + 1) * kMmaRows, Tn);
    }
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (kt == 0) load_a_fragments<HD>(qf, Qs, warp * 16);

    float s[8][4];
    mma_a_bt<HD>(s, qf, Ks[buf]);
    const std::int64_t k0 = kt * kMmaRows;
    const bool edge = (p.causal && kt == qt) || k0 + kMmaRows > Tn;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * scale_log2;
        if (edge) {
          const std::int64_t key = k0 + n * 8 + 2 * c + (e & 1), query = q0 + warp * 16 + g + (e >> 1) * 8;
          if (key >= Tn || (p.causal && key > query)) x = -INFINITY;
        }
        s[n][e] = x;
      }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      base[r] = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[r] - base[r]);
      m[r] = m_new;
      l[r] *= alpha;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - base[e >> 1]);
        l[e >> 1] += s[n][e];  // this thread's columns; the quad is summed at the end
      }
    }
    mma_p_b<HD>(o, s, Vs[buf]);
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const std::int64_t row = q0 + warp * 16 + g + r * 8;
    if (row >= Tn) continue;
    const float inv = 1.0f / l[r];
    bf16* out = p.o + (b * Tn + row) * p.o_stride + h * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(out + n * 8 + 2 * c) = pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (c == 0) p.lse[bh * Tn + row] = m[r] * kLn2 + logf(l[r]);
  }
}

// Shared layout of the mma dK/dV kernel: K and V of the block's key tile, double-buffered Q and
// dO tiles with their lse (log2 units) and delta.
template <int HD>
struct MmaDkdvSmem {
  static constexpr int kTileElems = kMmaRows * (HD + 8);
  static constexpr std::size_t bytes = sizeof(bf16) * 6 * kTileElems + sizeof(float) * 4 * kMmaRows;
};

// One block per (b, h, key tile of 64): each warp owns 16 keys and computes, per query tile,
// S^T = K Q^T and dP^T = V dO^T (16 x 64), then dV += P^T dO and dK += dS^T Q.
template <int HD>
__global__ void __launch_bounds__(kMmaThreads) backward_dkdv_mma(AttentionBackwardParams<bf16> p,
                                                                 const float* delta) {
  constexpr int kTileElems = MmaDkdvSmem<HD>::kTileElems;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kTileElems;
  bf16* Qs = Vs + kTileElems;         // [2][kTileElems]
  bf16* dOs = Qs + 2 * kTileElems;    // [2][kTileElems]
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * kTileElems);  // [2][64]
  float* delta_s = lse_s + 2 * kMmaRows;                           // [2][64]

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads, nqt = (Tn + kMmaRows - 1) / kMmaRows;
  const std::int64_t bh = blockIdx.x % BH, kt = blockIdx.x / BH;  // with causal, low kt is the most work
  const std::int64_t b = bh / p.heads, h = bh % p.heads, k0 = kt * kMmaRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* qg = p.q + b * Tn * p.q_stride + h * HD;
  const bf16* dog = p.d_o + b * Tn * p.do_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  auto stage = [&](int buf, std::int64_t qt) {  // Q, dO, lse and delta of query tile qt
    cp_async_tile<HD>(Qs + buf * kTileElems, qg, p.q_stride, qt * kMmaRows, Tn);
    cp_async_tile<HD>(dOs + buf * kTileElems, dog, p.do_stride, qt * kMmaRows, Tn);
    if (threadIdx.x < kMmaRows) {
      const std::int64_t row = qt * kMmaRows + threadIdx.x;
      // Rows past T get lse = +inf, so their probabilities are exactly 0.
      lse_s[buf * kMmaRows + threadIdx.x] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
      delta_s[buf * kMmaRows + threadIdx.x] = row < Tn ? delta[bh * Tn + row] : 0.0f;
    }
  };

  const std::int64_t qt_begin = p.causal ? kt : 0;
  cp_async_tile<HD>(Ks, p.k + b * Tn * p.k_stride + h * HD, p.k_stride, k0, Tn);
  cp_async_tile<HD>(Vs, p.v + b * Tn * p.v_stride + h * HD, p.v_stride, k0, Tn);
  stage(0, qt_begin);
  cp_async_commit();

  std::uint32_t kf[HD / 16][4], vf[HD / 16][4];
  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;

  for (std::int64_t qt = qt_begin; qt < nqt; ++qt) {
    const int buf = static_cast<int>((qt - qt_begin) & 1);
    if (qt + 1 < nqt) stage(buf ^ 1, qt + 1);
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (qt == qt_begin) {
      load_a_fragments<HD>(kf, Ks, warp * 16);
      load_a_fragments<HD>(vf, Vs, warp * 16);
    }
    const bf16* Qb = Qs + buf * kTileElems;
    const bf16* dOb = dOs + buf * kTileElems;
    const float* lse_b = lse_s + buf * kMmaRows;
    const float* delta_b = delta_s + buf * kMmaRows;

    float st[8][4], dpt[8][4];  // (16 keys, 64 queries)
    mma_a_bt<HD>(st, kf, Qb);
    mma_a_bt<HD>(dpt, vf, dOb);
    const std::int64_t q0 = qt * kMmaRows;
    const bool edge = (p.causal && qt == kt) || q0 + kMmaRows > Tn || k0 + kMmaRows > Tn;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ql = n * 8 + 2 * c + (e & 1);
        float pv = exp2f(st[n][e] * scale_log2 - lse_b[ql]);
        if (edge) {
          const std::int64_t key = k0 + warp * 16 + g + (e >> 1) * 8, query = q0 + ql;
          if (key >= Tn || query >= Tn || (p.causal && key > query)) pv = 0.0f;
        }
        st[n][e] = pv;
        dpt[n][e] = pv * (dpt[n][e] - delta_b[ql]);
      }
    }
    mma_p_b<HD>(dv, st, dOb);
    mma_p_b<HD>(dk, dpt, Qb);
    __syncthreads();
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t key = k0 + warp * 16 + g + r * 8;
    if (key >= Tn) continue;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      const int col = n * 8 + 2 * c;
      if (p.dv) add_bf16_pair(p.dv + (b * Tn + key) * p.dv_stride + h * HD + col, dv[n][2 * r], dv[n][2 * r + 1]);
      if (p.dk)
        add_bf16_pair(p.dk + (b * Tn + key) * p.dk_stride + h * HD + col, scale * dk[n][2 * r],
                      scale * dk[n][2 * r + 1]);
    }
  }
}

template <int HD>
struct MmaDqSmem {
  static constexpr int kTileElems = kMmaRows * (HD + 8);
  static constexpr std::size_t bytes = sizeof(bf16) * 6 * kTileElems;
};

// One block per (b, h, query tile of 64): each warp owns 16 queries and computes, per key tile,
// S = Q K^T and dP = dO V^T (16 x 64), then dQ += dS K.
template <int HD>
__global__ void __launch_bounds__(kMmaThreads) backward_dq_mma(AttentionBackwardParams<bf16> p,
                                                               const float* delta) {
  constexpr int kTileElems = MmaDqSmem<HD>::kTileElems;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kTileElems;
  bf16* Ks = dOs + kTileElems;       // [2][kTileElems]
  bf16* Vs = Ks + 2 * kTileElems;    // [2][kTileElems]

  const std::int64_t Tn = p.seq, BH = p.batch * p.heads, nqt = (Tn + kMmaRows - 1) / kMmaRows;
  const std::int64_t bh = blockIdx.x % BH, qt = nqt - 1 - blockIdx.x / BH;
  const std::int64_t b = bh / p.heads, h = bh % p.heads, q0 = qt * kMmaRows;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* kg = p.k + b * Tn * p.k_stride + h * HD;
  const bf16* vg = p.v + b * Tn * p.v_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  cp_async_tile<HD>(Qs, p.q + b * Tn * p.q_stride + h * HD, p.q_stride, q0, Tn);
  cp_async_tile<HD>(dOs, p.d_o + b * Tn * p.do_stride + h * HD, p.do_stride, q0, Tn);
  cp_async_tile<HD>(Ks, kg, p.k_stride, 0, Tn);
  cp_async_tile<HD>(Vs, vg, p.v_stride, 0, Tn);
  cp_async_commit();

  float lse_r[2], delta_r[2];  // rows g and g + 8 of this warp
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = q0 + warp * 16 + g + r * 8;
    lse_r[r] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
    delta_r[r] = row < Tn ? delta[bh * Tn + row] : 0.0f;
  }
  std::uint32_t qf[HD / 16][4], of[HD / 16][4];
  float dq[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.0f;

  const std::int64_t n_kt = p.causal ? qt + 1 : nqt;
  for (std::int64_t kt = 0; kt < n_kt; ++kt) {
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < n_kt) {
      cp_async_tile<HD>(Ks + (buf ^ 1) * kTileElems, kg, p.k_stride, (kt + 1) * kMmaRows, Tn);
      cp_async_tile<HD>(Vs + (buf ^ 1) * kTileElems, vg, p.v_stride, (kt + 1) * kMmaRows, Tn);
    }
    cp_async_commit();
    cp_async_wait_all_but_one();
    __syncthreads();
    if (kt == 0) {
      load_a_fragments<HD>(qf, Qs, warp * 16);
      load_a_fragments<HD>(of, dOs, warp * 16);
    }
    const bf16* Kb = Ks + buf * kTileElems;
    const bf16* Vb = Vs + buf * kTileElems;
    float s[8][4], dp[8][4];  // (16 queries, 64 keys)
    mma_a_bt<HD>(s, qf, Kb);
    mma_a_bt<HD>(dp, of, Vb);
    const std::int64_t k0 = kt * kMmaRows;
    const bool edge = (p.causal && kt == qt) || k0 + kMmaRows > Tn;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pv = exp2f(s[n][e] * scale_log2 - lse_r[r]);
        if (edge) {
          const std::int64_t key = k0 + n * 8 + 2 * c + (e & 1), query = q0 + warp * 16 + g + r * 8;
          if (key >= Tn || (p.causal && key > query)) pv = 0.0f;
        }
        dp[n][e] = pv * (dp[n][e] - delta_r[r]);
      }
    }
    mma_p_b<HD>(dq, dp, Kb);
    __syncthreads();
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = q0 + warp * 16 + g + r * 8;
    if (row >= Tn) continue;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      add_bf16_pair(p.dq + (b * Tn + row) * p.dq_stride + h * HD + n * 8 + 2 * c, scale * dq[n][2 * r],
                    scale * dq[n][2 * r + 1]);
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
         aligned_rows(p.d_o, p.do_stride, 16) && (!p.dq || aligned_rows(p.dq, p.dq_stride, 4)) &&
         (!p.dk || aligned_rows(p.dk, p.dk_stride, 4)) && (!p.dv || aligned_rows(p.dv, p.dv_stride, 4));
}

inline unsigned grid_of(std::int64_t tiles, std::int64_t bh) {
  const std::int64_t n = tiles * bh;
  FATHOM_CHECK(n < (std::int64_t{1} << 31), "attention (CUDA): " << n << " blocks exceed the grid limit");
  return static_cast<unsigned>(n);
}

template <class T, int R>
void launch_forward_tiled(const AttentionParams<T>& p) {
  const std::size_t smem = TiledFwdSmem<accum_t<T>>::bytes(static_cast<int>(p.head_dim));
  allow_shared_memory<forward_tiled<T, R>>(smem);
  const std::int64_t nqt = (p.seq + kTile - 1) / kTile;
  forward_tiled<T, R><<<grid_of(nqt, p.batch * p.heads), kTiledThreads, smem, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T, int R>
void launch_backward_tiled(const AttentionBackwardParams<T>& p, const accum_t<T>* delta) {
  const std::size_t smem = TiledBwdSmem<accum_t<T>>::bytes(static_cast<int>(p.head_dim));
  const std::int64_t tiles = (p.seq + kTile - 1) / kTile, bh = p.batch * p.heads;
  if (p.dk || p.dv) {
    allow_shared_memory<backward_dkdv_tiled<T, R>>(smem);
    backward_dkdv_tiled<T, R><<<grid_of(tiles, bh), kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  if (p.dq) {
    allow_shared_memory<backward_dq_tiled<T, R>>(smem);
    backward_dq_tiled<T, R><<<grid_of(tiles, bh), kTiledThreads, smem, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

template <int HD>
void launch_forward_mma(const AttentionParams<bf16>& p) {
  const std::int64_t nqt = (p.seq + kMmaRows - 1) / kMmaRows;
  forward_mma<HD><<<grid_of(nqt, p.batch * p.heads), kMmaThreads, 0, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <int HD>
void launch_backward_mma(const AttentionBackwardParams<bf16>& p, const float* delta) {
  const std::int64_t tiles = (p.seq + kMmaRows - 1) / kMmaRows, bh = p.batch * p.heads;
  if (p.dk || p.dv) {
    allow_shared_memory<backward_dkdv_mma<HD>>(MmaDkdvSmem<HD>::bytes);
    backward_dkdv_mma<HD><<<grid_of(tiles, bh), kMmaThreads, MmaDkdvSmem<HD>::bytes, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  if (p.dq) {
    allow_shared_memory<backward_dq_mma<HD>>(MmaDqSmem<HD>::bytes);
    backward_dq_mma<HD><<<grid_of(tiles, bh), kMmaThreads, MmaDqSmem<HD>::bytes, cuda::stream()>>>(p, delta);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
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
  switch ((p.head_dim + a::kWarp - 1) / a::kWarp) {
    case 1: return a::launch_forward_tiled<T, 1>(p);
    case 2: return a::launch_forward_tiled<T, 2>(p);
    case 3: return a::launch_forward_tiled<T, 3>(p);
    default: return a::launch_forward_tiled<T, 4>(p);
  }
}

template <class T>
void attention_backward(Cuda, const AttentionBackwardParams<T>& p) {
  namespace a = detail::attn;
  using A = accum_t<T>;
  a::check_head_dim(p.head_dim);
  if (p.batch == 0 || p.seq == 0 || p.heads == 0 || (!p.dq && !p.dk && !p.dv)) return;
  const std::int64_t rows = p.batch * p.seq * p.heads;
  a::Scratch delta(static_cast<std::size_t>(rows) * sizeof(A));  // (B, H, T)
  constexpr int kRowsPerBlock = 8;
  a::rowsum_do_o<T><<<a::grid_of((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1), kRowsPerBlock * a::kWarp, 0,
                      cuda::stream()>>>(p, delta.as<A>());
  FATHOM_CUDA_CHECK(cudaGetLastError());
  if constexpr (std::is_same_v<T, bf16>) {
    if (a::use_mma(p)) {
      if (p.head_dim == 64) return a::launch_backward_mma<64>(p, delta.as<float>());
      return a::launch_backward_mma<32>(p, delta.as<float>());
    }
  }
  switch ((p.head_dim + a::kWarp - 1) / a::kWarp) {
    case 1: return a::launch_backward_tiled<T, 1>(p, delta.as<A>());
    case 2: return a::launch_backward_tiled<T, 2>(p, delta.as<A>());
    case 3: return a::launch_backward_tiled<T, 3>(p, delta.as<A>());
    default: return a::launch_backward_tiled<T, 4>(p, delta.as<A>());
  }
}

}  // namespace fathom::kernels
