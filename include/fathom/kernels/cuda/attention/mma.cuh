// The mma CUDA attention family: bf16 with head_dim 32 or 64 and 16-byte aligned rows (every
// GPT-2 / Llama shape we train); 64 x 64 tiles on tensor cores (mma.sync m16n8k16, bf16 in, fp32
// accumulate), cp.async double buffering, the probabilities kept in registers between the two
// products. kernels/cuda/attention.cuh picks it where it applies.
#pragma once

#include "fathom/kernels/cuda/attention/common.cuh"
#include "fathom/kernels/cuda/rows.cuh"

namespace fathom::kernels::detail::attn {

// Blocks of 4 or 8 warps (the tile shapes below say which). Fragment layouts are those of
// mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): with g = lane / 4 and c = lane % 4,
// an fp32 accumulator holds rows g and g + 8, columns 2c and 2c + 1 of a 16 x 8 tile; the A operand
// (16 x 16) holds the same rows, columns 2c, 2c + 1, 2c + 8, 2c + 9; the B operand (16 x 8) holds
// rows 2c, 2c + 1, 2c + 8, 2c + 9 of column g. A warp keeps the fragments of 16 M rows of one
// operand in registers (Q for the forward and dQ, K and V for dK/dV) and streams the other
// operand's tiles through shared memory with cp.async double buffering. M = 2 halves the
// shared-memory reads per mma but needs about 255 registers; on an H200 that lost to M = 1 with 3
// to 4 blocks per SM (MmaChoice). More warps a block (same M) share each streamed tile among more
// rows: fewer tile copies from L2 per row at the same registers a thread. Shared tiles have a row
// pitch of hd + 8 elements, so the 8 rows that one ldmatrix reads fall in distinct bank groups.

__device__ inline std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (a 32-bit shared address), asynchronously; zero-filled when !valid.
__device__ inline void cp_async_16(std::uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most one committed group is still in flight.
__device__ inline void cp_async_wait_all_but_one() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

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
__device__ inline void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                std::uint32_t b1) {
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

// RoPE's frequencies (kernels/rope.hpp's RopeFreqTable, from the host) for the backward's inverse
// turn, a kernel argument; zeros when the call turns nothing back.
template <int Half>
using RopeFreqs = RopeFreqTable<float, Half>;
template <int HD>
RopeFreqs<HD / 2> rope_freqs(const AttentionBackwardParams<bf16>& p) {
  return p.rope_theta > 0 ? rope_freq_table<float, HD / 2>(p.rope_theta, HD) : RopeFreqs<HD / 2>{};
}

// RoPE's inverse turn (p.rope_theta > 0) of one thread's gradient accumulators, in registers,
// before they are stored: the pair (i, i + HD / 2) of a row lies in n-tiles n and n + HD / 16 of
// the same thread at the same element, so no data moves between threads. The thread's rows are
// row0 + 16 m + 8 r (row0 = the warp's first row + g), at positions rope_pos0 + row; columns
// n * 8 + 2c + e. Angles as the rope kernels compute them, fp32(pos) * inv_freq; their sine and
// cosine by sincos_reduced.
template <int HD, int M>
__device__ inline void unturn_rope(float (&acc)[M][HD / 8][4],
                                   const AttentionBackwardParams<bf16>& p,
                                   const RopeFreqs<HD / 2>& freqs, std::int64_t row0, int c) {
  constexpr int kHalfTiles = HD / 16;
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float pos = static_cast<float>(p.rope_pos0 + row0 + 16 * m + 8 * r);
#pragma unroll
      for (int n = 0; n < kHalfTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          // inv_freq[n * 8 + 2c + e], read at fixed indices (a runtime index into a kernel
          // argument would copy the table to local memory).
          const int base = n * 8 + e;
          const float f0 = freqs.inv_freq[base], f1 = freqs.inv_freq[base + 2],
                      f2 = freqs.inv_freq[base + 4], f3 = freqs.inv_freq[base + 6];
          const float freq = c == 0 ? f0 : c == 1 ? f1 : c == 2 ? f2 : f3;
          float sin, cos;
          sincos_reduced(pos * freq, &sin, &cos);
          float& lo = acc[m][n][2 * r + e];
          float& hi = acc[m][n + kHalfTiles][2 * r + e];
          const float x1 = lo, x2 = hi;
          lo = x1 * cos + x2 * sin;
          hi = x2 * cos - x1 * sin;
        }
      }
    }
  }
}

// Copies (Rows, HD) tiles into shared tiles of pitch HD + 8 with a block of Threads threads.
// Thread t always moves the 16-byte column t % (HD / 8) of rows t / (HD / 8) + i * kRowStep, so
// the per-tile address work is one 64-bit multiply and a few adds (index arithmetic otherwise
// dominates the issue slots).
template <int HD, int Rows, int Threads>
struct TileCopy {
  static constexpr int kChunks = HD / 8, kRowStep = Threads / kChunks;
  // A tile smaller than one pass of the block (32 rows of head_dim 32 by 256 threads) is moved by
  // the first Rows * kChunks threads.
  static constexpr int kPasses = Rows >= kRowStep ? Rows / kRowStep : 1;
  static constexpr int kPitchBytes = (HD + 8) * 2;
  static_assert(
      Threads % kChunks == 0 && (Rows >= kRowStep ? Rows % kRowStep == 0 : kRowStep % Rows == 0),
      "tile rows must be a multiple or a divisor of the rows one pass of the block covers");
  int row, col;
  __device__ TileCopy() : row(threadIdx.x / kChunks), col((threadIdx.x % kChunks) * 8) {}
  // Rows [row0, row0 + Rows) of src (row stride `stride`, `rows` rows in all) into the shared
  // tile at `dst`; rows past the end are zero-filled.
  __device__ void operator()(std::uint32_t dst, const bf16* src, std::int64_t stride,
                             std::int64_t row0, std::int64_t rows) const {
    if constexpr (Rows < kRowStep) {
      if (row >= Rows) return;
    }
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

// A head's K and V streamed in tiles of Keys rows through two shared buffers each (the second
// TileBytes after Ks and Vs), Copy (TileCopy or SwizzledCopy) moving each tile. Before the loop
// over the tiles: load(0, 0) and a commit; then at tile kt, next(kt) starts tile kt + 1's copies
// into the other buffers and waits for tile kt's, whose buffer it returns.
template <int HD, int Keys, std::uint32_t TileBytes, class Copy>
struct KeyValueTiles {
  const Copy& copy;
  std::uint32_t Ks, Vs;
  const bf16 *k, *v;
  std::int64_t k_stride, v_stride, seq, tiles;
  template <class P>
  __device__ KeyValueTiles(const Copy& copy, std::uint32_t Ks, std::uint32_t Vs, const P& p,
                           std::int64_t b, std::int64_t h, std::int64_t tiles)
      : copy(copy),
        Ks(Ks),
        Vs(Vs),
        k(p.k + b * p.seq * p.k_stride + h * HD),
        v(p.v + b * p.seq * p.v_stride + h * HD),
        k_stride(p.k_stride),
        v_stride(p.v_stride),
        seq(p.seq),
        tiles(tiles) {}
  __device__ void load(std::int64_t kt, int buf) const {
    copy(Ks + buf * TileBytes, k, k_stride, kt * Keys, seq);
    copy(Vs + buf * TileBytes, v, v_stride, kt * Keys, seq);
  }
  __device__ int next(std::int64_t kt) const {
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < tiles) load(kt + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait_all_but_one();
    return buf;
  }
};

// A fragments of rows [row0 + 16 m, row0 + 16 m + 16) (m < M), all HD features, of a shared tile.
template <int HD, int M>
__device__ inline void load_a_fragments(std::uint32_t (&f)[M][HD / 16][4], std::uint32_t tile,
                                        int row0) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base = tile + ((row0 + lane % 16) * kPitch + (lane / 16) * 8) * 2;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks)
      ldmatrix_x4(f[m][ks], base + (16 * m * kPitch + ks * 16) * 2);
}

// acc (16 M x N) = a (16 M x HD) * tile^T for tile (N, HD) in shared memory: tile rows are the
// output columns (S = Q K^T with tile = K).
template <int HD, int M, int N>
__device__ inline void mma_a_bt(float (&acc)[M][N / 8][4], const std::uint32_t (&a)[M][HD / 16][4],
                                std::uint32_t tile) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base =
      tile + ((lane % 8 + (lane / 16) * 8) * kPitch + ((lane / 8) % 2) * 8) * 2;
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
__device__ inline void mma_p_b(float (&acc)[M][HD / 8][4], const float (&p)[M][K / 8][4],
                               std::uint32_t tile, int row0 = 0) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x % kWarp;
  const std::uint32_t base =
      tile + ((row0 + lane % 8 + ((lane / 8) % 2) * 8) * kPitch + (lane / 16) * 8) * 2;
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

// The forward's per-tile steps on one 16-row m-tile's scores s (N key columns; this thread holds
// columns 8n + 2c + (e & 1) of rows g and g + 8, e >> 1 picking the row), shared by the mma and
// wgmma kernels, whose accumulators have this layout.

// Scores of keys at or past `keys`, and with causal of keys after the row's query, become -inf;
// positions relative to the key tile's start, in 32 bits (fewer registers). first_query is the
// position of row g.
template <int N>
__device__ inline void mask_scores(float (&s)[N / 8][4], int keys, int first_query, bool causal,
                                   int c) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = n * 8 + 2 * c + (e & 1), query = first_query + (e >> 1) * 8;
      if (key >= keys || (causal && key > query)) s[n][e] = -INFINITY;
    }
  }
}

// One tile of the online softmax for rows g and g + 8: the running max mx (log2 units, taken over
// the unscaled scores, so that scaling and subtracting it is one FMA before each exponential), s
// turned into the unnormalized probabilities, the running sums l (this thread's columns; the
// quad is summed at the end) and the output accumulators o rescaled to the new max.
template <int N, int HD>
__device__ inline void online_softmax(float (&s)[N / 8][4], float (&mx)[2], float (&l)[2],
                                      float (&o)[HD / 8][4], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = -INFINITY;  // of the unscaled scores
#pragma unroll
    for (int n = 0; n < N / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(mx[r], tile_max * scale_log2);
    const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
    const float alpha = exp2_approx(mx[r] - base);
    mx[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < N / 8; ++n) {
      s[n][2 * r] = exp2_approx(fmaf(s[n][2 * r], scale_log2, -base));
      s[n][2 * r + 1] = exp2_approx(fmaf(s[n][2 * r + 1], scale_log2, -base));
      sum += s[n][2 * r] + s[n][2 * r + 1];
    }
    l[r] = l[r] * alpha + sum;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      o[n][2 * r] *= alpha;
      o[n][2 * r + 1] *= alpha;
    }
  }
}

// Rows row0 (= the m-tile's row g) and row0 + 8 of the output, o / l, and their log-sum-exp; rows
// past T are skipped.
template <int HD>
__device__ inline void store_forward_rows(const AttentionParams<bf16>& p,
                                          const float (&o)[HD / 8][4], const float (&mx)[2],
                                          const float (&l)[2], std::int64_t b, std::int64_t h,
                                          std::int64_t bh, std::int64_t row0, int c) {
  const std::int64_t Tn = p.seq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const std::int64_t row = row0 + r * 8;
    if (row >= Tn) continue;
    const float inv = 1.0f / sum;
    bf16* out = p.o + (b * Tn + row) * p.o_stride + h * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(out + n * 8 + 2 * c) =
          pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (c == 0) p.lse[bh * Tn + row] = mx[r] * kLn2 + logf(sum);
  }
}

// Tile shapes of the forward: Warps warps of 16 M query rows a block, key tiles of N streamed
// through shared memory; at least MinBlocks blocks an SM (the register budget).
template <int HD_, int M_, int N_, int Warps_, int MinBlocks_, int GroupPairs_ = kOrderPairs>
struct MmaForward {
  static constexpr int HD = HD_, M = M_, kKeys = N_, kWarps = Warps_, kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;  // block order (block_work)
  static constexpr int kThreads = kWarps * kWarp;
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes = sizeof(bf16) * kPitch * (kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile); each warp owns 16 M query rows and streams over the key
// tiles: S = Q K^T, online softmax in registers, O += P V with P rounded to bf16. Needs
// scale > 0: the running max is taken over the unscaled scores, so that scaling and subtracting
// the max is one FMA before each exponential.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    forward_mma(AttentionParams<bf16> p) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kKeys = Cfg::kKeys, kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kKeyTileBytes = kKeys * kPitch * 2;
  const std::uint32_t Qs = smem_address(smem_raw);        // (block rows, pitch)
  const std::uint32_t Ks = Qs + kBlockRows * kPitch * 2;  // [2] (key tile, pitch)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;        // [2] (key tile, pitch)
  const TileCopy<HD, kBlockRows, Cfg::kThreads> copy_q;
  const TileCopy<HD, kKeys, Cfg::kThreads> copy_kv;

  const std::int64_t Tn = p.seq;
  const auto [bh, b, h, q0] = query_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_q0 = q0 + warp * kWarpRows;
  const KeyValueTiles<HD, kKeys, kKeyTileBytes, TileCopy<HD, kKeys, Cfg::kThreads>> kv(
      copy_kv, Ks, Vs, p, b, h, key_tiles_seen<kKeys>(p, q0 + kBlockRows));

  // Q alone in the first group: its fragments are taken while the first K/V tile is in flight.
  copy_q(Qs, p.q + b * Tn * p.q_stride + h * HD, p.q_stride, q0, Tn);
  cp_async_commit();
  kv.load(0, 0);
  cp_async_commit();
  cp_async_wait_all_but_one();
  __syncthreads();
  std::uint32_t qf[M][HD / 16][4];
  load_a_fragments<HD, M>(qf, Qs, warp * kWarpRows);
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

  for (std::int64_t kt = 0; kt < kv.tiles; ++kt) {
    const int buf = kv.next(kt);
    __syncthreads();
    const std::int64_t k0 = kt * kKeys;
    // With causal, a warp whose rows all precede this key tile has nothing to do here.
    if (!p.causal || k0 <= warp_q0 + kWarpRows - 1) {
      float s[M][kKeys / 8][4];
      mma_a_bt<HD, M, kKeys>(s, qf, Ks + buf * kKeyTileBytes);
      const bool edge = (p.causal && k0 + kKeys - 1 > warp_q0) || k0 + kKeys > Tn;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (edge)
          mask_scores<kKeys>(s[m], static_cast<int>(min(Tn - k0, std::int64_t{kKeys})),
                             static_cast<int>(warp_q0 - k0) + 16 * m + g, p.causal, c);
        online_softmax<kKeys, HD>(s[m], mx[m], l[m], o[m], scale_log2);
      }
      mma_p_b<HD, M, kKeys>(o, s, Vs + buf * kKeyTileBytes);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }

#pragma unroll
  for (int m = 0; m < M; ++m)
    store_forward_rows<HD>(p, o[m], mx[m], l[m], b, h, bh, warp_q0 + 16 * m + g, c);
}

// The log-sum-exp (lse, (B, H, T), into log2 units) and D (delta) of query tile qt's Queries rows
// of (b, h) = bh into shared memory, one thread a row (threads from Queries on do nothing). Rows
// past T get lse = +inf, so their probabilities are exactly 0, and D = 0.
template <int Queries>
__device__ inline void stage_row_stats(const float* lse, const float* delta, std::int64_t T,
                                       std::int64_t bh, std::int64_t qt, float* lse_s,
                                       float* delta_s) {
  if (threadIdx.x < Queries) {
    const std::int64_t row = qt * Queries + threadIdx.x;
    lse_s[threadIdx.x] = row < T ? lse[bh * T + row] * kLog2e : INFINITY;
    delta_s[threadIdx.x] = row < T ? delta[bh * T + row] : 0.0f;
  }
}

// The backward's per-tile steps on one 16-row m-tile's accumulators (the layout of the forward's
// helpers above), shared by the mma and wgmma kernels.

// dK/dV: S^T and dP^T of keys key0 and key0 + 8 (rows g and g + 8 of the m-tile) against queries
// query0 + 8n + 2c + (e & 1). st becomes P^T = exp2(S^T scale_log2 - lse) and dpt becomes
// dS^T = P^T (dP^T - D), with lse (log2 units) and delta the queries' rows from query0; with
// `edge`, P^T is 0 for keys or queries at or past T and, with causal, for a key after its query.
template <int N>
__device__ inline void dkdv_scores(float (&st)[N / 8][4], float (&dpt)[N / 8][4], const float* lse,
                                   const float* delta, float scale_log2, bool edge,
                                   std::int64_t key0, std::int64_t query0, std::int64_t T,
                                   bool causal, int c) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int ql = n * 8 + 2 * c + (e & 1);
      float pv = exp2_approx(st[n][e] * scale_log2 - lse[ql]);
      if (edge) {
        const std::int64_t key = key0 + (e >> 1) * 8, query = query0 + ql;
        if (key >= T || query >= T || (causal && key > query)) pv = 0.0f;
      }
      st[n][e] = pv;
      dpt[n][e] = pv * (dpt[n][e] - delta[ql]);
    }
  }
}

// dQ: S and dP of queries query0 and query0 + 8 (rows g and g + 8) against keys
// key0 + 8n + 2c + (e & 1); dp becomes dS = P (dP - D) with P = exp2(S scale_log2 - lse) from the
// rows' lse (log2 units) and D; with `edge`, P is 0 for keys at or past T and, with causal, for a
// key after the query.
template <int N>
__device__ inline void dq_scores(const float (&s)[N / 8][4], float (&dp)[N / 8][4],
                                 const float (&lse)[2], const float (&delta)[2], float scale_log2,
                                 bool edge, std::int64_t key0, std::int64_t query0, std::int64_t T,
                                 bool causal, int c) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      float pv = exp2_approx(s[n][e] * scale_log2 - lse[r]);
      if (edge) {
        const std::int64_t key = key0 + n * 8 + 2 * c + (e & 1), query = query0 + r * 8;
        if (key >= T || (causal && key > query)) pv = 0.0f;
      }
      dp[n][e] = pv * (dp[n][e] - delta[r]);
    }
  }
}

// Tile shapes of the dK/dV pass: each warp owns 16 M keys, a block Warps warps' keys; query
// tiles of Q are staged in shared memory and consumed Chunk queries at a time.
template <int HD_, int M_, int Chunk_, int Q_, int Warps_, int MinBlocks_,
          int GroupPairs_ = kOrderPairs>
struct MmaDkdv {
  static constexpr int HD = HD_, M = M_, kChunk = Chunk_, kQueries = Q_, kWarps = Warps_,
                       kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;  // block order (block_work)
  static constexpr int kThreads = kWarps * kWarp;
  static_assert(kThreads >= kQueries, "one thread stages each query's lse and delta");
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes =
      sizeof(bf16) * kPitch * (2 * kBlockRows + 4 * kQueries) + sizeof(float) * 4 * kQueries;
};

// One block per (b, h, key tile): each warp owns 16 M keys, keeps their K and V fragments in
// registers, and for every chunk of queries computes S^T = K Q^T and dP^T = V dO^T, then
// dV += P^T dO and dK += dS^T Q.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    backward_dkdv_mma(AttentionBackwardParams<bf16> p, const float* delta,
                      RopeFreqs<Cfg::HD / 2> rope = {}) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kQ = Cfg::kQueries, kChunk = Cfg::kChunk,
                kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kQueryTileBytes = kQ * kPitch * 2;
  const std::uint32_t Ks = smem_address(smem_raw);        // (block rows, pitch)
  const std::uint32_t Vs = Ks + kBlockRows * kPitch * 2;  // (block rows, pitch)
  const std::uint32_t Qs = Vs + kBlockRows * kPitch * 2;  // [2] (query tile, pitch)
  const std::uint32_t dOs = Qs + 2 * kQueryTileBytes;     // [2] (query tile, pitch)
  float* lse_s = reinterpret_cast<float*>(smem_raw + 2 * kBlockRows * kPitch * 2 +
                                          4 * kQueryTileBytes);  // [2] (query tile), log2 units
  float* delta_s = lse_s + 2 * kQ;                               // [2] (query tile)

  const std::int64_t Tn = p.seq, nqt = (Tn + kQ - 1) / kQ;
  const auto [bh, b, h, k0] = key_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* qg = p.q + b * Tn * p.q_stride + h * HD;
  const bf16* dog = p.d_o + b * Tn * p.do_stride + h * HD;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_k0 = k0 + warp * kWarpRows;

  const TileCopy<HD, kQ, Cfg::kThreads> copy_q;
  const TileCopy<HD, kBlockRows, Cfg::kThreads> copy_kv;
  auto stage = [&](int buf, std::int64_t qt) {  // Q, dO, lse and delta of query tile qt
    copy_q(Qs + buf * kQueryTileBytes, qg, p.q_stride, qt * kQ, Tn);
    copy_q(dOs + buf * kQueryTileBytes, dog, p.do_stride, qt * kQ, Tn);
    stage_row_stats<kQ>(p.lse, delta, Tn, bh, qt, lse_s + buf * kQ, delta_s + buf * kQ);
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
      for (int m = 0; m < M; ++m)
        dkdv_scores<kChunk>(st[m], dpt[m], lse_b + ch * kChunk, delta_b + ch * kChunk, scale_log2,
                            edge, warp_k0 + 16 * m + g, cq0, Tn, p.causal, c);
      mma_p_b<HD, M, kChunk>(dv, st, dOb, ch * kChunk);
      mma_p_b<HD, M, kChunk>(dk, dpt, Qb, ch * kChunk);
    }
    __syncthreads();
  }

  // dV first, then dK: with RoPE's turn, dV's registers are free before the turn needs its own.
  const float scale = static_cast<float>(p.scale);
  auto store = [&](bf16* out, std::int64_t stride, float(&acc)[M][HD / 8][4], float factor) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const std::int64_t key = warp_k0 + 16 * m + g + r * 8;
        if (key >= Tn) continue;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
          store_bf16_pair(out + (b * Tn + key) * stride + h * HD + n * 8 + 2 * c,
                          factor * acc[m][n][2 * r], factor * acc[m][n][2 * r + 1], p.accumulate);
      }
    }
  };
  if (p.dv) store(p.dv, p.dv_stride, dv, 1.0f);
  if (p.dk) {
    if (p.rope_theta > 0) unturn_rope<HD, M>(dk, p, rope, warp_k0 + g, c);
    store(p.dk, p.dk_stride, dk, scale);
  }
}

// D = rowsum(dO * O) of rows [row0, row0 + 16) of (b, h), by one warp from device memory (the
// rows are 16-byte aligned, as for the tile copies): lanes 2i and 2i + 1 sum the two halves of
// row row0 + i. Writes D to delta (B, H, T) and returns in d[0] and d[1] the D of rows row0 + g
// and row0 + g + 8 (g = lane / 4, the rows of the mma fragments; 0 for rows past T).
template <int HD>
__device__ inline void warp_rowsum(const AttentionBackwardParams<bf16>& p, float* delta,
                                   std::int64_t b, std::int64_t h, std::int64_t bh,
                                   std::int64_t row0, float (&d)[2]) {
  constexpr int kHalf = HD / 2;
  const int lane = threadIdx.x % kWarp, g = lane / 4;
  const std::int64_t Tn = p.seq, row = row0 + lane / 2;
  const int col = static_cast<int>(h) * HD + (lane % 2) * kHalf;
  float sum = 0.0f;
  if (row < Tn)
    sum = dot_bf16_pieces<kHalf / 8>(p.o + (b * Tn + row) * p.o_stride + col,
                                     p.d_o + (b * Tn + row) * p.do_stride + col, sum);
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  if (lane % 2 == 0 && row < Tn) delta[bh * Tn + row] = sum;
  d[0] = __shfl_sync(0xffffffffu, sum, 2 * g);
  d[1] = __shfl_sync(0xffffffffu, sum, 2 * (g + 8));
}

// Tile shapes of the dQ pass: each warp owns 16 M queries, a block Warps warps' queries; key
// tiles of N stream through shared memory. With Rowsum, the pass computes D = rowsum(dO * O) of
// its own queries and writes it for the dK/dV pass, which then runs after it (no separate pass).
template <int HD_, int M_, int N_, int Warps_, int MinBlocks_, bool Rowsum_,
          int GroupPairs_ = kOrderPairs>
struct MmaDq {
  static constexpr int HD = HD_, M = M_, kKeys = N_, kWarps = Warps_, kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;  // block order (block_work)
  static constexpr bool kRowsum = Rowsum_;
  static constexpr int kThreads = kWarps * kWarp;
  static constexpr int kWarpRows = 16 * M, kBlockRows = kWarpRows * kWarps;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t smem_bytes = sizeof(bf16) * kPitch * (2 * kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile): each warp owns 16 M queries, keeps their Q and dO fragments
// in registers, and for every key tile computes S = Q K^T and dP = dO V^T, then dQ += dS K.
// delta (B, H, T) is read, or with Cfg::kRowsum computed here and written.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    backward_dq_mma(AttentionBackwardParams<bf16> p, float* delta,
                    RopeFreqs<Cfg::HD / 2> rope = {}) {
  constexpr int HD = Cfg::HD, M = Cfg::M, kKeys = Cfg::kKeys, kPitch = Cfg::kPitch;
  constexpr int kWarpRows = Cfg::kWarpRows, kBlockRows = Cfg::kBlockRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr std::uint32_t kKeyTileBytes = kKeys * kPitch * 2;
  const std::uint32_t Qs = smem_address(smem_raw);         // (block rows, pitch)
  const std::uint32_t dOs = Qs + kBlockRows * kPitch * 2;  // (block rows, pitch)
  const std::uint32_t Ks = dOs + kBlockRows * kPitch * 2;  // [2] (key tile, pitch)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;         // [2] (key tile, pitch)
  const TileCopy<HD, kBlockRows, Cfg::kThreads> copy_q;
  const TileCopy<HD, kKeys, Cfg::kThreads> copy_kv;

  const std::int64_t Tn = p.seq;
  const auto [bh, b, h, q0] = query_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t warp_q0 = q0 + warp * kWarpRows;
  const KeyValueTiles<HD, kKeys, kKeyTileBytes, TileCopy<HD, kKeys, Cfg::kThreads>> kv(
      copy_kv, Ks, Vs, p, b, h, key_tiles_seen<kKeys>(p, q0 + kBlockRows));

  copy_q(Qs, p.q + b * Tn * p.q_stride + h * HD, p.q_stride, q0, Tn);
  copy_q(dOs, p.d_o + b * Tn * p.do_stride + h * HD, p.do_stride, q0, Tn);
  kv.load(0, 0);
  cp_async_commit();

  float lse_r[M][2], delta_r[M][2];  // rows g and g + 8 of each m-tile
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if constexpr (Cfg::kRowsum) warp_rowsum<HD>(p, delta, b, h, bh, warp_q0 + 16 * m, delta_r[m]);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = warp_q0 + 16 * m + g + r * 8;
      lse_r[m][r] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
      if constexpr (!Cfg::kRowsum) delta_r[m][r] = row < Tn ? delta[bh * Tn + row] : 0.0f;
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

  for (std::int64_t kt = 0; kt < kv.tiles; ++kt) {
    const int buf = kv.next(kt);
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
      for (int m = 0; m < M; ++m)
        dq_scores<kKeys>(s[m], dp[m], lse_r[m], delta_r[m], scale_log2, edge, k0,
                         warp_q0 + 16 * m + g, Tn, p.causal, c);
      mma_p_b<HD, M, kKeys>(dq, dp, Kb);
    }
    __syncthreads();
  }

  if (p.rope_theta > 0) unturn_rope<HD, M>(dq, p, rope, warp_q0 + g, c);
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const std::int64_t row = warp_q0 + 16 * m + g + r * 8;
      if (row >= Tn) continue;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        store_bf16_pair(p.dq + (b * Tn + row) * p.dq_stride + h * HD + n * 8 + 2 * c,
                        scale * dq[m][n][2 * r], scale * dq[m][n][2 * r + 1], p.accumulate);
    }
  }
}

// Launches one of the kernels above with its tile shapes Cfg: one block per (b, h, block rows).
template <class Cfg, auto Kernel, class Params, class... Rest>
void launch_mma(const Params& p, Rest... rest) {
  constexpr std::size_t smem = Cfg::smem_bytes;
  allow_shared_memory<Kernel>(smem);
  const std::int64_t tiles = (p.seq + Cfg::kBlockRows - 1) / Cfg::kBlockRows;
  Kernel<<<grid_of(tiles, p.batch * p.heads), Cfg::kThreads, smem, cuda::stream()>>>(p, rest...);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// The tile shapes used for each head_dim. The backward's were chosen by timing the variants on an
// H200 (bf16, causal, B 128 T 256 and B 32 T 1024, H 12, hd 64): with 3 to 4 blocks of 128
// threads per SM the scheduler hides the latency of the mma/ldmatrix/exp chains; larger per-warp
// tiles (M = 2, key tiles of 128) cost registers and occupancy and ran 5 to 30% slower. They need
// more than 128 registers a thread, so 8 warps a block would drop them to one block an SM. The
// forward keeps 4 warps of 16 rows (64-row blocks, 4 blocks an SM). A forward of 8 warps (128
// rows sharing each K/V tile: half the L2 -> shared traffic) was timed against it on an H200 and
// did not pay: 0.262 against 0.263 ms at B 32 T 1024, and 0.116 against 0.105 ms at B 128 T 256
// (fathom-attention-bench; the `forward-128-rows` variant still times it).
// fathom-attention-bench (examples/attention_bench) times these shapes against the previous ones.
template <int HD>
struct MmaChoice {
  using Forward = MmaForward<HD, 1, 64, 4, 4>;
  using Dkdv = MmaDkdv<HD, 1, 32, 64, 4, 3>;
  using Dq = MmaDq<HD, 1, 64, 4, 3, true>;
};

// An alternative to MmaChoice's backward passes, 128-row blocks: 8 warps, 2 blocks an SM at 128
// registers a thread (16 warps an SM against 12), each streamed tile shared by 128 rows (half
// the L2 -> shared traffic), for half-size tiles between barriers (32 keys for dQ; 32 queries in
// chunks of 16 for dK/dV, which spills a few registers at head_dim 64). Not yet timed against
// MmaChoice: fathom-attention-bench's backward-128-rows variant does; the [attention] tests check
// it.
template <int HD>
struct MmaBackward128Rows {
  using Forward = typename MmaChoice<HD>::Forward;
  using Dkdv = MmaDkdv<HD, 1, 16, 32, 8, 2>;
  using Dq = MmaDq<HD, 1, 32, 8, 2, true>;
};

// Shapes: MmaChoice<HD> or another struct with the same three members.
template <int HD, class Shapes = MmaChoice<HD>>
void launch_forward_mma(const AttentionParams<bf16>& p) {
  using Cfg = typename Shapes::Forward;
  launch_mma<Cfg, forward_mma<Cfg>>(p);
}

// The whole backward: D = rowsum(dO * O) into `delta` (B, H, T) (by the dQ pass when it can,
// else by its own pass first), dK and dV, dQ.
template <int HD, class Shapes = MmaChoice<HD>>
void launch_backward_mma(const AttentionBackwardParams<bf16>& p, float* delta) {
  using Dkdv = typename Shapes::Dkdv;
  using Dq = typename Shapes::Dq;
  const auto* read_only = static_cast<const float*>(delta);
  const auto freqs = rope_freqs<HD>(p);
  if constexpr (Dq::kRowsum) {
    if (p.dq) {
      launch_mma<Dq, backward_dq_mma<Dq>>(p, delta, freqs);
    } else {
      launch_rowsum(p, delta, /*vectorized=*/true);
    }
    if (p.dk || p.dv) launch_mma<Dkdv, backward_dkdv_mma<Dkdv>>(p, read_only, freqs);
  } else {
    launch_rowsum(p, delta, /*vectorized=*/true);
    if (p.dk || p.dv) launch_mma<Dkdv, backward_dkdv_mma<Dkdv>>(p, read_only, freqs);
    if (p.dq) launch_mma<Dq, backward_dq_mma<Dq>>(p, delta, freqs);
  }
}

}  // namespace fathom::kernels::detail::attn
