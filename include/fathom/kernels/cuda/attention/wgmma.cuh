// The wgmma CUDA attention family (Hopper, sm_90a): bf16 with head_dim 64 and 16-byte aligned rows,
// the mma family's three passes (forward; dK/dV; dQ with D = rowsum(dO * O)) rebuilt on the
// warpgroup MMA (wgmma.mma_async, PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate"). A warpgroup (4 warps, 128 threads) owns 64 rows and multiplies 64 x N x 16 at a
// time with both operands read from shared memory by the tensor cores themselves (no ldmatrix,
// no fragments in registers) or with A in registers (the probabilities and dS, straight from the
// accumulators). kernels/cuda/attention.cuh picks it where it applies and the GPU runs sm_90a code
// (wgmma_available); everywhere else the mma family runs.
//
// Shared tiles hold rows of 64 bf16 (128 bytes) in the 128-byte swizzle that the descriptors name:
// 16-byte chunk j of row r sits at r * 128 + ((j ^ (r % 8)) * 16), tiles start on 1024 bytes. One
// tile serves both ways the products read it: K-major (its rows are the M or N side, features the
// reduction: Q, K, V, dO in S = Q K^T and dP = dO V^T) and MN-major (its rows are the reduction:
// V in O += P V, dO and Q in dV += P^T dO and dK += dS^T Q, K in dQ += dS K).
//
// Accumulators (PTX ISA, "Matrix Fragments for wgmma .m64nNk16"): warp w of the group holds rows
// 16 w + g and 16 w + g + 8 (g = lane / 4, c = lane % 4); d[4 j + e] is column 8 j + 2c + (e & 1)
// of row 16 w + g + 8 (e >> 1), the mma.m16n8 layout repeated over N / 8 column tiles, so the
// softmax, the masks and RoPE's inverse turn read them as the mma family does. The A operand in
// registers has mma.m16n8k16's A layout, so accumulator columns 16 kk .. 16 kk + 15 become the A
// of step kk by packing pairs (a_fragment_of).
#pragma once

#include <atomic>

#include "fathom/core/env.hpp"
#include "fathom/kernels/cuda/attention/mma.cuh"

namespace fathom::kernels::detail::attn {

// ---- wgmma and its shared-memory descriptors ----------------------------------------------------

// The descriptor of a 128-byte-swizzled tile starting at shared address `addr` (PTX ISA, "Matrix
// Descriptor Format"): start address >> 4 in bits 0-13; the leading byte offset (bits 16-29)
// is unused when one swizzle row spans the whole 64-element extent, and set to 1; the stride byte
// offset (bits 32-45) is 1024 >> 4, the step between groups of 8 rows; swizzle mode 1 (128 bytes)
// in bits 62-63. Moving a K-major operand 16 features on adds 32 bytes (2 in the address field);
// moving an MN-major operand 16 rows on adds 2048 bytes.
__device__ inline std::uint64_t sw128_desc(std::uint32_t addr) {
  return static_cast<std::uint64_t>((addr & 0x3FFFFu) >> 4) | (std::uint64_t{1} << 16) |
         (std::uint64_t{1024 >> 4} << 32) | (std::uint64_t{1} << 62);
}

__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ inline void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Makes this thread's generic-proxy writes to shared memory (cp.async, stores) visible to the
// async proxy that wgmma reads through; a barrier after it publishes them to the warpgroup.
__device__ inline void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma's issue
// and its wait: the asm statements that touch them carry no other dependency.
template <int R>
__device__ inline void fence_registers(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x N, fp32) = (accumulate ? d : 0) + A (64 x 16) * B (16 x N), A and B K-major in shared
// memory (descriptors a and b).
template <int N>
__device__ void wgmma_ss(float (&d)[N / 2], std::uint64_t a, std::uint64_t b, bool accumulate);
// d (64 x N, fp32) += A (64 x 16, bf16 pairs in registers) * B (16 x N), B MN-major in shared
// memory.
template <int N>
__device__ void wgmma_rs(float (&d)[N / 2], const std::uint32_t (&a)[4], std::uint64_t b);

template <>
__device__ inline void wgmma_ss<32>(float (&d)[16], std::uint64_t a, std::uint64_t b,
                                    bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15"
      "}, "
      "%16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
}

// d (64 x 64, fp32) = (accumulate ? d : 0) + A (64 x 16) * B (16 x 64) from shared memory;
// TransA / TransB 1: that operand MN-major (its rows are the 16 reduction steps, each 64 M or N
// elements), as dS^T and K are in the one-block backward's dQ = dS K.
template <int TransA, int TransB>
__device__ inline void wgmma_ss64(float (&d)[32], std::uint64_t a, std::uint64_t b,
                                  bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31"
      "}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(TransA), "n"(TransB));
}

template <>
__device__ inline void wgmma_ss<64>(float (&d)[32], std::uint64_t a, std::uint64_t b,
                                    bool accumulate) {
  wgmma_ss64<0, 0>(d, a, b, accumulate);
}

template <>
__device__ inline void wgmma_ss<128>(float (&d)[64], std::uint64_t a, std::uint64_t b,
                                     bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63"
      "}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
}

template <>
__device__ inline void wgmma_rs<64>(float (&d)[32], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31"
      "}, "
      "{%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// ---- tiles --------------------------------------------------------------------------------------

// Copies (Rows, 64) bf16 tiles into 128-byte-swizzled shared tiles with a block of Threads threads,
// asynchronously; rows past the end are zero-filled. Thread t moves chunk t % 8 of rows
// t / 8 + i * kRowStep, whose swizzle (row % 8) is the same for every i.
template <int Rows, int Threads>
struct SwizzledCopy {
  static constexpr int kRowStep = Threads / 8;
  static constexpr int kPasses = Rows >= kRowStep ? Rows / kRowStep : 1;
  static_assert(Rows % 8 == 0 && (Rows >= kRowStep ? Rows % kRowStep == 0 : kRowStep % Rows == 0),
                "tile rows: a multiple of 8, and a multiple or a divisor of a block pass's rows");
  int row, chunk;
  __device__ SwizzledCopy() : row(threadIdx.x / 8), chunk(threadIdx.x % 8) {}
  __device__ void operator()(std::uint32_t dst, const bf16* src, std::int64_t stride,
                             std::int64_t row0, std::int64_t rows) const {
    if constexpr (Rows < kRowStep) {
      if (row >= Rows) return;
    }
    const bf16* s = src + (row0 + row) * stride + chunk * 8;
    const std::int64_t left = rows - row0 - row;
    const std::uint32_t d = dst + row * 128 + ((chunk ^ (row % 8)) * 16);
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const bool valid = i * kRowStep < left;
      cp_async_16(d + i * kRowStep * 128, valid ? s + i * kRowStep * stride : src, valid);
    }
  }
};

// The first 1024-byte boundary at or after the dynamic shared memory's start (the launchers
// allocate 1024 bytes more than the tiles need).
__device__ inline std::uint32_t swizzle_base(const unsigned char* smem) {
  return (smem_address(smem) + 1023u) & ~1023u;
}

// Accumulator columns 16 kk .. 16 kk + 15 of one warp's rows as the bf16 A operand of step kk.
template <int R>
__device__ inline void a_operand(std::uint32_t (&a)[4], const float (&d)[R], int kk) {
  a[0] = pack_bf16(d[8 * kk], d[8 * kk + 1]);
  a[1] = pack_bf16(d[8 * kk + 2], d[8 * kk + 3]);
  a[2] = pack_bf16(d[8 * kk + 4], d[8 * kk + 5]);
  a[3] = pack_bf16(d[8 * kk + 6], d[8 * kk + 7]);
}

// ---- the kernels --------------------------------------------------------------------------------

constexpr int kGroupThreads = 128;  // a warpgroup
constexpr int kTileRowBytes = 128;  // a row of 64 bf16

// Forward tile shapes: Groups warpgroups of 64 query rows a block, key tiles of Keys.
template <int Keys_, int Groups_, int MinBlocks_, int GroupPairs_ = kOrderPairs>
struct WgmmaForward {
  static constexpr int HD = 64, kKeys = Keys_, kGroups = Groups_, kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;
  static constexpr int kThreads = kGroups * kGroupThreads, kBlockRows = 64 * kGroups;
  static constexpr std::size_t smem_bytes = 1024 + kTileRowBytes * (kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile), as forward_mma: each warpgroup owns 64 query rows; per key
// tile S = Q K^T (both from shared memory), the online softmax in registers, O += P V (P from
// the accumulators, V from shared memory). Needs scale > 0 (the running max is over unscaled
// scores).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    forward_wgmma(AttentionParams<bf16> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kKeys = Cfg::kKeys, kBlockRows = Cfg::kBlockRows;
  constexpr std::uint32_t kKeyTileBytes = kKeys * kTileRowBytes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t Qs = swizzle_base(smem_raw);           // (block rows, 64)
  const std::uint32_t Ks = Qs + kBlockRows * kTileRowBytes;  // [2] (key tile, 64)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;           // [2] (key tile, 64)
  const SwizzledCopy<kBlockRows, Cfg::kThreads> copy_q;
  const SwizzledCopy<kKeys, Cfg::kThreads> copy_kv;

  const std::int64_t Tn = p.seq;
  const auto [bh, b, h, q0] = query_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int group = threadIdx.x / kGroupThreads, warp = (threadIdx.x / kWarp) % 4;
  const int lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const KeyValueTiles<64, kKeys, kKeyTileBytes, SwizzledCopy<kKeys, Cfg::kThreads>> kv(
      copy_kv, Ks, Vs, p, b, h, key_tiles_seen<kKeys>(p, q0 + kBlockRows));
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t group_q0 = q0 + group * 64, warp_q0 = group_q0 + warp * 16;
  const std::uint64_t q_desc = sw128_desc(Qs + group * 64 * kTileRowBytes);

  copy_q(Qs, p.q + b * Tn * p.q_stride + h * 64, p.q_stride, q0, Tn);
  kv.load(0, 0);
  cp_async_commit();

  float o[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = 0.0f;
  float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8; max in log2 units

  for (std::int64_t kt = 0; kt < kv.tiles; ++kt) {
    const int buf = kv.next(kt);
    fence_proxy_async();
    __syncthreads();
    const std::int64_t k0 = kt * kKeys;
    // With causal, a warpgroup whose rows all precede this key tile has nothing to do here (the
    // test is uniform over the warpgroup, as wgmma needs).
    if (!p.causal || k0 <= group_q0 + 63) {
      const std::uint32_t Kb = Ks + buf * kKeyTileBytes, Vb = Vs + buf * kKeyTileBytes;
      float s[kKeys / 2];
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<kKeys>(s, q_desc + 2 * ks, sw128_desc(Kb) + 2 * ks, ks > 0);
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(s);
      // The accumulators in the mma family's (16-row m-tile) layout.
      auto& st = reinterpret_cast<float(&)[kKeys / 8][4]>(s);
      auto& ot = reinterpret_cast<float(&)[8][4]>(o);
      const bool edge = (p.causal && k0 + kKeys - 1 > warp_q0) || k0 + kKeys > Tn;
      if (edge)
        mask_scores<kKeys>(st, static_cast<int>(min(Tn - k0, std::int64_t{kKeys})),
                           static_cast<int>(warp_q0 - k0) + g, p.causal, c);
      online_softmax<kKeys, 64>(st, mx, l, ot, scale_log2);
      std::uint32_t pa[kKeys / 16][4];
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) a_operand(pa[kk], s, kk);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk)
        wgmma_rs<64>(o, pa[kk], sw128_desc(Vb + kk * 16 * kTileRowBytes));
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(o);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }

  store_forward_rows<64>(p, reinterpret_cast<const float(&)[8][4]>(o), mx, l, b, h, bh, warp_q0 + g,
                         c);
#else
  (void)p;
#endif
}

// Rows row0 + g and row0 + g + 8 (a warp's rows of a 64-column accumulator, g = lane / 4) of head
// h of batch row b, times factor, into out's (B, T, stride) rows as bf16 pairs: added to what is
// there or written (p.accumulate); rows at or past T are skipped.
__device__ inline void store_accumulator_rows(const AttentionBackwardParams<bf16>& p, bf16* out,
                                              std::int64_t stride, std::int64_t b, std::int64_t h,
                                              std::int64_t row0, const float (&acc)[32],
                                              float factor, int g, int c) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = row0 + g + r * 8;
    if (row >= p.seq) continue;
#pragma unroll
    for (int n = 0; n < 8; ++n)
      store_bf16_pair(out + (b * p.seq + row) * stride + h * 64 + n * 8 + 2 * c,
                      factor * acc[4 * n + 2 * r], factor * acc[4 * n + 2 * r + 1], p.accumulate);
  }
}

// dK/dV tile shapes: Groups warpgroups of 64 keys a block; query tiles of Queries staged in shared
// memory.
template <int Queries_, int Groups_, int MinBlocks_, int GroupPairs_ = kOrderPairs>
struct WgmmaDkdv {
  static constexpr int HD = 64, kQueries = Queries_, kGroups = Groups_, kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;
  static constexpr int kThreads = kGroups * kGroupThreads, kBlockRows = 64 * kGroups;
  static_assert(kThreads >= kQueries, "one thread stages each query's lse and delta");
  static constexpr std::size_t smem_bytes =
      1024 + kTileRowBytes * (2 * kBlockRows + 4 * kQueries) + sizeof(float) * 4 * kQueries;
};

// One block per (b, h, key tile), as backward_dkdv_mma: each warpgroup owns 64 keys, whose K and V
// tiles stay in shared memory; per query tile S^T = K Q^T and dP^T = V dO^T, then dV += P^T dO
// and dK += dS^T Q.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    backward_dkdv_wgmma(AttentionBackwardParams<bf16> p, const float* delta,
                        RopeFreqs<32> rope = {}) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kQ = Cfg::kQueries, kBlockRows = Cfg::kBlockRows;
  constexpr std::uint32_t kQueryTileBytes = kQ * kTileRowBytes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t Ks = swizzle_base(smem_raw);           // (block rows, 64)
  const std::uint32_t Vs = Ks + kBlockRows * kTileRowBytes;  // (block rows, 64)
  const std::uint32_t Qs = Vs + kBlockRows * kTileRowBytes;  // [2] (query tile, 64)
  const std::uint32_t dOs = Qs + 2 * kQueryTileBytes;        // [2] (query tile, 64)
  float* lse_s = reinterpret_cast<float*>(
      smem_raw + (dOs + 2 * kQueryTileBytes - smem_address(smem_raw)));  // [2] (tile)
  float* delta_s = lse_s + 2 * kQ;                                       // [2] (tile)

  const std::int64_t Tn = p.seq, nqt = (Tn + kQ - 1) / kQ;
  const auto [bh, b, h, k0] = key_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int group = threadIdx.x / kGroupThreads, warp = (threadIdx.x / kWarp) % 4;
  const int lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const bf16* qg = p.q + b * Tn * p.q_stride + h * 64;
  const bf16* dog = p.d_o + b * Tn * p.do_stride + h * 64;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t group_k0 = k0 + group * 64, warp_k0 = group_k0 + warp * 16;
  const std::uint64_t k_desc = sw128_desc(Ks + group * 64 * kTileRowBytes);
  const std::uint64_t v_desc = sw128_desc(Vs + group * 64 * kTileRowBytes);

  const SwizzledCopy<kQ, Cfg::kThreads> copy_q;
  const SwizzledCopy<kBlockRows, Cfg::kThreads> copy_kv;
  auto stage = [&](int buf, std::int64_t qt) {  // Q, dO, lse and delta of query tile qt
    copy_q(Qs + buf * kQueryTileBytes, qg, p.q_stride, qt * kQ, Tn);
    copy_q(dOs + buf * kQueryTileBytes, dog, p.do_stride, qt * kQ, Tn);
    stage_row_stats<kQ>(p.lse, delta, Tn, bh, qt, lse_s + buf * kQ, delta_s + buf * kQ);
  };

  const std::int64_t qt_begin = p.causal ? k0 / kQ : 0;
  copy_kv(Ks, p.k + b * Tn * p.k_stride + h * 64, p.k_stride, k0, Tn);
  copy_kv(Vs, p.v + b * Tn * p.v_stride + h * 64, p.v_stride, k0, Tn);
  stage(0, qt_begin);
  cp_async_commit();

  float dk[32], dv[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dk[i] = dv[i] = 0.0f;

  for (std::int64_t qt = qt_begin; qt < nqt; ++qt) {
    const int buf = static_cast<int>((qt - qt_begin) & 1);
    if (qt + 1 < nqt) stage(buf ^ 1, qt + 1);
    cp_async_commit();
    cp_async_wait_all_but_one();
    fence_proxy_async();
    __syncthreads();
    const std::int64_t cq0 = qt * kQ;
    // With causal, queries that precede all of this warpgroup's keys contribute nothing.
    if (!(p.causal && cq0 + kQ - 1 < group_k0)) {
      const std::uint32_t Qb = Qs + buf * kQueryTileBytes, dOb = dOs + buf * kQueryTileBytes;
      const float* lse_b = lse_s + buf * kQ;
      const float* delta_b = delta_s + buf * kQ;
      float st[kQ / 2], dpt[kQ / 2];  // (64 keys, kQ queries)
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<kQ>(st, k_desc + 2 * ks, sw128_desc(Qb) + 2 * ks, ks > 0);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<kQ>(dpt, v_desc + 2 * ks, sw128_desc(dOb) + 2 * ks, ks > 0);
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(st);
      fence_registers(dpt);
      const bool edge = (p.causal && warp_k0 + 15 > cq0) || cq0 + kQ > Tn || warp_k0 + 16 > Tn;
      dkdv_scores<kQ>(reinterpret_cast<float(&)[kQ / 8][4]>(st),
                      reinterpret_cast<float(&)[kQ / 8][4]>(dpt), lse_b, delta_b, scale_log2, edge,
                      warp_k0 + g, cq0, Tn, p.causal, c);
      std::uint32_t pa[kQ / 16][4], da[kQ / 16][4];
#pragma unroll
      for (int kk = 0; kk < kQ / 16; ++kk) {
        a_operand(pa[kk], st, kk);
        a_operand(da[kk], dpt, kk);
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kQ / 16; ++kk)
        wgmma_rs<64>(dv, pa[kk], sw128_desc(dOb + kk * 16 * kTileRowBytes));
#pragma unroll
      for (int kk = 0; kk < kQ / 16; ++kk)
        wgmma_rs<64>(dk, da[kk], sw128_desc(Qb + kk * 16 * kTileRowBytes));
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(dv);
      fence_registers(dk);
    }
    __syncthreads();
  }

  // dV first, then dK: with RoPE's turn, dV's registers are free before the turn needs its own.
  const float scale = static_cast<float>(p.scale);
  if (p.dv) store_accumulator_rows(p, p.dv, p.dv_stride, b, h, warp_k0, dv, 1.0f, g, c);
  if (p.dk) {
    if (p.rope_theta > 0)
      unturn_rope<64, 1>(reinterpret_cast<float(&)[1][8][4]>(dk), p, rope, warp_k0 + g, c);
    store_accumulator_rows(p, p.dk, p.dk_stride, b, h, warp_k0, dk, scale, g, c);
  }
#else
  (void)p, (void)delta, (void)rope;
#endif
}

// dQ tile shapes: Groups warpgroups of 64 queries a block, key tiles of Keys. D = rowsum(dO * O) of
// the block's own queries is computed here and written for the dK/dV pass, which runs after.
template <int Keys_, int Groups_, int MinBlocks_, int GroupPairs_ = kOrderPairs>
struct WgmmaDq {
  static constexpr int HD = 64, kKeys = Keys_, kGroups = Groups_, kMinBlocks = MinBlocks_;
  static constexpr int kGroupPairs = GroupPairs_;
  static constexpr int kThreads = kGroups * kGroupThreads, kBlockRows = 64 * kGroups;
  static constexpr std::size_t smem_bytes = 1024 + kTileRowBytes * (2 * kBlockRows + 4 * kKeys);
};

// One block per (b, h, query tile), as backward_dq_mma with Rowsum: each warpgroup owns 64
// queries, whose Q and dO tiles stay in shared memory; per key tile S = Q K^T and dP = dO V^T,
// then dQ += dS K.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    backward_dq_wgmma(AttentionBackwardParams<bf16> p, float* delta, RopeFreqs<32> rope = {}) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kKeys = Cfg::kKeys, kBlockRows = Cfg::kBlockRows;
  constexpr std::uint32_t kKeyTileBytes = kKeys * kTileRowBytes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t Qs = swizzle_base(smem_raw);            // (block rows, 64)
  const std::uint32_t dOs = Qs + kBlockRows * kTileRowBytes;  // (block rows, 64)
  const std::uint32_t Ks = dOs + kBlockRows * kTileRowBytes;  // [2] (key tile, 64)
  const std::uint32_t Vs = Ks + 2 * kKeyTileBytes;            // [2] (key tile, 64)
  const SwizzledCopy<kBlockRows, Cfg::kThreads> copy_q;
  const SwizzledCopy<kKeys, Cfg::kThreads> copy_kv;

  const std::int64_t Tn = p.seq;
  const auto [bh, b, h, q0] = query_tile<kBlockRows>(p, Cfg::kGroupPairs);
  const int group = threadIdx.x / kGroupThreads, warp = (threadIdx.x / kWarp) % 4;
  const int lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const KeyValueTiles<64, kKeys, kKeyTileBytes, SwizzledCopy<kKeys, Cfg::kThreads>> kv(
      copy_kv, Ks, Vs, p, b, h, key_tiles_seen<kKeys>(p, q0 + kBlockRows));
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const std::int64_t group_q0 = q0 + group * 64, warp_q0 = group_q0 + warp * 16;
  const std::uint64_t q_desc = sw128_desc(Qs + group * 64 * kTileRowBytes);
  const std::uint64_t do_desc = sw128_desc(dOs + group * 64 * kTileRowBytes);

  copy_q(Qs, p.q + b * Tn * p.q_stride + h * 64, p.q_stride, q0, Tn);
  copy_q(dOs, p.d_o + b * Tn * p.do_stride + h * 64, p.do_stride, q0, Tn);
  kv.load(0, 0);
  cp_async_commit();

  // D = rowsum(dO * O) of the warp's 16 rows, written for the dK/dV pass.
  float lse_r[2], delta_r[2];  // rows g and g + 8
  warp_rowsum<64>(p, delta, b, h, bh, warp_q0, delta_r);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = warp_q0 + g + r * 8;
    lse_r[r] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
  }
  float dq[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dq[i] = 0.0f;

  for (std::int64_t kt = 0; kt < kv.tiles; ++kt) {
    const int buf = kv.next(kt);
    fence_proxy_async();
    __syncthreads();
    const std::int64_t k0 = kt * kKeys;
    if (!p.causal || k0 <= group_q0 + 63) {
      const std::uint32_t Kb = Ks + buf * kKeyTileBytes, Vb = Vs + buf * kKeyTileBytes;
      float s[kKeys / 2], dp[kKeys / 2];  // (64 queries, kKeys keys)
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<kKeys>(s, q_desc + 2 * ks, sw128_desc(Kb) + 2 * ks, ks > 0);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<kKeys>(dp, do_desc + 2 * ks, sw128_desc(Vb) + 2 * ks, ks > 0);
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(s);
      fence_registers(dp);
      const bool edge = (p.causal && k0 + kKeys - 1 > warp_q0) || k0 + kKeys > Tn;
      dq_scores<kKeys>(reinterpret_cast<const float(&)[kKeys / 8][4]>(s),
                       reinterpret_cast<float(&)[kKeys / 8][4]>(dp), lse_r, delta_r, scale_log2,
                       edge, k0, warp_q0 + g, Tn, p.causal, c);
      std::uint32_t da[kKeys / 16][4];
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) a_operand(da[kk], dp, kk);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk)
        wgmma_rs<64>(dq, da[kk], sw128_desc(Kb + kk * 16 * kTileRowBytes));
      wgmma_commit();
      wgmma_wait_all();
      fence_registers(dq);
    }
    __syncthreads();
  }

  if (p.rope_theta > 0)
    unturn_rope<64, 1>(reinterpret_cast<float(&)[1][8][4]>(dq), p, rope, warp_q0 + g, c);
  store_accumulator_rows(p, p.dq, p.dq_stride, b, h, warp_q0, dq, static_cast<float>(p.scale), g,
                         c);
#else
  (void)p, (void)delta, (void)rope;
#endif
}

// ---- short sequences: a head's whole backward in one block -----------------------------------

// Up to T = 256 (four 64-row tiles), a head's Q, K, V and dO fit in shared memory together with
// dS. One block of two warpgroups then does the head's whole backward: each warpgroup owns key
// tiles and walks their query tiles as backward_dkdv_wgmma does (S^T, dP^T, then dV += P^T dO and
// dK += dS^T Q), and also stores each dS^T tile in shared memory; after a barrier each warpgroup
// owns query tiles and sums dQ = dS K over their key tiles from those stored tiles. Against the
// two passes this computes S and dP once instead of twice (5 products a tile pair instead of 7),
// reads each input once, computes D in the block, and launches one kernel of B H blocks instead
// of two of 4 B H. dQ is summed in a fixed order: the result is deterministic.
//
// Where it pays (fathom-attention-bench, one H200, causal, against the two passes): T = 192,
// B 32 H 12: 0.058 against 0.065 ms (full: 0.069 against 0.076); T = 128: 0.070 against 0.073;
// T = 256: slower, 0.412 against 0.374 ms at B 128 H 16. Its 216 KiB of shared memory at four
// tiles leave one block (8 warps) an SM, and Nsight Compute shows it issuing an instruction every
// 4 cycles a scheduler against every 2 for the passes: latency-bound, though it issues 40% fewer
// instructions and moves 35% fewer DRAM bytes. In training at T = 256 (llama-130m and llama-350m,
// bench/ab.sh env, both orders) it changed tokens/s by +0.3 to +0.6%, within run-to-run spread.
// So WgmmaChoice takes it up to three tiles (kShortTiles); WgmmaOneBlock also at four, for
// fathom-attention-bench and the tests.
//
// Work: warpgroup 0 owns tiles 0 and 3, warpgroup 1 tiles 1 and 2 (key tiles in the first phase,
// query tiles in the second), which under the causal mask gives both the same number of tile
// pairs (5 and 5 at four tiles). The two walk their lists in steps; a step waits, block-wide, only
// for the copies its tile pairs need: tiles 0 and 1 come first, then 2, then 3.
constexpr int kShortThreads = 2 * kGroupThreads;
constexpr int kShortMaxTiles = 4;
constexpr std::uint32_t kShortTileBytes = 64 * kTileRowBytes;

// The dS tiles kept: one per (query tile, key tile) pair that the mask does not empty.
__host__ __device__ inline int short_pairs(int tiles, bool causal) {
  return causal ? tiles * (tiles + 1) / 2 : tiles * tiles;
}
__device__ inline int short_pair_index(int i, int j, int tiles, bool causal) {
  return causal ? i * (i + 1) / 2 + j : i * tiles + j;
}
inline std::size_t short_backward_smem(int tiles, bool causal) {
  return 1024 + std::size_t{kShortTileBytes} * (4 * tiles + short_pairs(tiles, causal)) +
         2 * sizeof(float) * 64 * tiles;
}
// Tile t of warpgroup w's list (0 and 3, or 1 and 2).
__device__ inline int short_owned(int w, int t) { return w == 0 ? 3 * t : 1 + t; }
// Step s of warpgroup w's first phase: the pair (query tile i, key tile j); false past its end.
__device__ inline bool short_step(int w, int s, int tiles, bool causal, int& i, int& j) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const int key = short_owned(w, t);
    if (key >= tiles) continue;
    const int first = causal ? key : 0;
    if (s < tiles - first) {
      i = first + s;
      j = key;
      return true;
    }
    s -= tiles - first;
  }
  return false;
}
// The copy group that brings tile t (groups: tiles 0 and 1, tile 2, tile 3).
__device__ inline int short_copy_group(int t) { return t <= 1 ? 0 : t - 1; }
// Waits until copy groups 0 .. g of the three committed have landed.
__device__ inline void short_wait_groups(int g) {
  if (g >= 2) {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  } else if (g == 1) {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  } else {
    asm volatile("cp.async.wait_group 2;\n" ::: "memory");
  }
}
__device__ inline void st_shared_u32(std::uint32_t addr, std::uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// dq += sum over key tiles j < Tiles of dS_ij K_j: the pairs of query tile i are consecutive
// tiles from dS_row, the key tiles consecutive from Ks; both MN-major operands.
template <int Tiles>
__device__ inline void short_dq_products(float (&dq)[32], std::uint32_t dS_row, std::uint32_t Ks) {
  fence_registers(dq);
  wgmma_fence();
#pragma unroll
  for (int j = 0; j < Tiles; ++j) {
    const std::uint64_t a = sw128_desc(dS_row + j * kShortTileBytes);
    const std::uint64_t kb = sw128_desc(Ks + j * kShortTileBytes);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss64<1, 1>(dq, a + kk * 128, kb + kk * 128, true);
  }
  wgmma_commit();
  wgmma_wait_all();
}

// One block per (b, h): p.seq <= 64 * kShortMaxTiles, dq, dk and dv all wanted. (A template, so
// that every translation unit may define it.)
template <int Unused = 0>
__global__ void __launch_bounds__(kShortThreads, 1)
    backward_short_wgmma(AttentionBackwardParams<bf16> p, RopeFreqs<32> rope) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::int64_t Tn = p.seq;
  const int tiles = static_cast<int>((Tn + 63) / 64);
  const bool causal = p.causal;
  const std::uint32_t Ks = swizzle_base(smem_raw);          // [tiles] (64, 64)
  const std::uint32_t Vs = Ks + tiles * kShortTileBytes;    // [tiles]
  const std::uint32_t Qs = Vs + tiles * kShortTileBytes;    // [tiles]
  const std::uint32_t dOs = Qs + tiles * kShortTileBytes;   // [tiles]
  const std::uint32_t dSs = dOs + tiles * kShortTileBytes;  // [pairs] dS^T: rows keys
  float* lse_s = reinterpret_cast<float*>(
      smem_raw + (dSs + short_pairs(tiles, causal) * kShortTileBytes - smem_address(smem_raw)));
  float* delta_s = lse_s + 64 * tiles;

  const std::int64_t bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads;
  // The warpgroup and warp through a shuffle, which the compiler knows to be uniform over the warp:
  // computed from threadIdx.x alone, every branch on them counts as divergent, and ptxas then
  // serializes the wgmma inside (C7520).
  const int group = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / kGroupThreads, 0);
  const int warp = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / kWarp % 4, 0);
  const int lane = threadIdx.x % kWarp, g = lane / 4, c = lane % 4;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const float scale = static_cast<float>(p.scale);

  const SwizzledCopy<64, kShortThreads> copy;
  for (int grp = 0; grp < 3; ++grp) {
    for (int t = grp == 0 ? 0 : grp + 1; t <= grp + 1 && t < tiles; ++t) {
      const std::uint32_t at = t * kShortTileBytes;
      copy(Ks + at, p.k + b * Tn * p.k_stride + h * 64, p.k_stride, t * 64, Tn);
      copy(Vs + at, p.v + b * Tn * p.v_stride + h * 64, p.v_stride, t * 64, Tn);
      copy(Qs + at, p.q + b * Tn * p.q_stride + h * 64, p.q_stride, t * 64, Tn);
      copy(dOs + at, p.d_o + b * Tn * p.do_stride + h * 64, p.do_stride, t * 64, Tn);
    }
    cp_async_commit();
  }

  // lse (log2 units) and D = rowsum(dO * O) of every row, one thread a row, while the tiles land.
  if (threadIdx.x < 64 * tiles) {
    const std::int64_t row = threadIdx.x;
    float d = 0.0f;
    if (row < Tn)
      d = dot_bf16_pieces<8>(p.o + (b * Tn + row) * p.o_stride + h * 64,
                             p.d_o + (b * Tn + row) * p.do_stride + h * 64, d);
    lse_s[row] = row < Tn ? p.lse[bh * Tn + row] * kLog2e : INFINITY;
    delta_s[row] = d;
  }

  // Phase 1: dK and dV of the warpgroup's key tiles, and dS^T of every tile pair.
  float dk[32], dv[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) dk[e] = dv[e] = 0.0f;
  int landed = -1;  // copy groups known to have landed, block-wide
  int steps = 0;
  for (int w = 0; w < 2; ++w) {
    int i, j, n = 0;
    while (short_step(w, n, tiles, causal, i, j)) ++n;
    steps = max(steps, n);
  }
  for (int s = 0; s < steps; ++s) {
    int need = landed;
    for (int w = 0; w < 2; ++w) {
      int i, j;
      if (short_step(w, s, tiles, causal, i, j)) need = max(need, short_copy_group(max(i, j)));
    }
    if (need > landed) {  // uniform over the block
      short_wait_groups(need);
      fence_proxy_async();
      __syncthreads();
      landed = need;
    }
    int i, j;
    if (!short_step(group, s, tiles, causal, i, j)) continue;
    const std::uint32_t Qb = Qs + i * kShortTileBytes, dOb = dOs + i * kShortTileBytes;
    const std::uint32_t Kb = Ks + j * kShortTileBytes, Vb = Vs + j * kShortTileBytes;
    const std::int64_t cq0 = i * 64, warp_k0 = j * 64 + warp * 16;
    float st[32], dpt[32];  // (64 keys, 64 queries)
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      wgmma_ss<64>(st, sw128_desc(Kb) + 2 * ks, sw128_desc(Qb) + 2 * ks, ks > 0);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      wgmma_ss<64>(dpt, sw128_desc(Vb) + 2 * ks, sw128_desc(dOb) + 2 * ks, ks > 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_registers(st);
    fence_registers(dpt);
    const bool edge = (causal && warp_k0 + 15 > cq0) || cq0 + 64 > Tn || warp_k0 + 16 > Tn;
    dkdv_scores<64>(reinterpret_cast<float(&)[8][4]>(st), reinterpret_cast<float(&)[8][4]>(dpt),
                    lse_s + i * 64, delta_s + i * 64, scale_log2, edge, warp_k0 + g, cq0, Tn,
                    causal, c);
    std::uint32_t pa[4][4], da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      a_operand(pa[kk], st, kk);
      a_operand(da[kk], dpt, kk);
    }
    // dS^T as bf16 into the pair's tile (rows: keys; 16-byte chunk n holds queries 8n .. 8n + 7),
    // swizzled as the copies swizzle; the rows of a thread are warp 16 + g and + 8, both g mod 8.
    const std::uint32_t slot = dSs + short_pair_index(i, j, tiles, causal) * kShortTileBytes;
    const std::uint32_t row0 = slot + (warp * 16 + g) * kTileRowBytes + 4 * c;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const std::uint32_t lo = ((2 * kk) ^ g) * 16, hi = ((2 * kk + 1) ^ g) * 16;
      st_shared_u32(row0 + lo, da[kk][0]);
      st_shared_u32(row0 + 8 * kTileRowBytes + lo, da[kk][1]);
      st_shared_u32(row0 + hi, da[kk][2]);
      st_shared_u32(row0 + 8 * kTileRowBytes + hi, da[kk][3]);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs<64>(dv, pa[kk], sw128_desc(dOb + kk * 16 * kTileRowBytes));
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs<64>(dk, da[kk], sw128_desc(Qb + kk * 16 * kTileRowBytes));
    wgmma_commit();
    wgmma_wait_all();
    fence_registers(dv);
    fence_registers(dk);
    int next_i, next_j;
    if (short_step(group, s + 1, tiles, causal, next_i, next_j) && next_j == j) continue;
    // The key tile's last query tile: dV, then dK (turned back by RoPE), and start the next.
    store_accumulator_rows(p, p.dv, p.dv_stride, b, h, warp_k0, dv, 1.0f, g, c);
    if (p.rope_theta > 0)
      unturn_rope<64, 1>(reinterpret_cast<float(&)[1][8][4]>(dk), p, rope, warp_k0 + g, c);
    store_accumulator_rows(p, p.dk, p.dk_stride, b, h, warp_k0, dk, scale, g, c);
#pragma unroll
    for (int e = 0; e < 32; ++e) dk[e] = dv[e] = 0.0f;
  }

  // Phase 2: dQ of the warpgroup's query tiles, dQ_i = sum over key tiles j of dS_ij K_j, with
  // dS_ij read through its stored transpose.
  fence_proxy_async();  // this thread's dS stores, for the wgmma reads below
  __syncthreads();
#pragma unroll 1
  for (int t = 0; t < 2; ++t) {
    const int i = short_owned(group, t);
    if (i >= tiles) continue;
    float dq[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) dq[e] = 0.0f;
    // One straight run of products per count of key tiles: a branch between two wgmma makes ptxas
    // fence the accumulators there (C7519).
    const std::uint32_t dS_row = dSs + short_pair_index(i, 0, tiles, causal) * kShortTileBytes;
    switch (causal ? i + 1 : tiles) {
      case 1:
        short_dq_products<1>(dq, dS_row, Ks);
        break;
      case 2:
        short_dq_products<2>(dq, dS_row, Ks);
        break;
      case 3:
        short_dq_products<3>(dq, dS_row, Ks);
        break;
      default:
        short_dq_products<4>(dq, dS_row, Ks);
        break;
    }
    fence_registers(dq);
    const std::int64_t warp_q0 = i * 64 + warp * 16;
    if (p.rope_theta > 0)
      unturn_rope<64, 1>(reinterpret_cast<float(&)[1][8][4]>(dq), p, rope, warp_q0 + g, c);
    store_accumulator_rows(p, p.dq, p.dq_stride, b, h, warp_q0, dq, scale, g, c);
  }
#else
  (void)p, (void)rope;
#endif
}

// Whether backward_short_wgmma takes p (bf16, head_dim 64, rows aligned as the wgmma family
// needs): every gradient wanted, T <= 256, and its tiles within the 227 KiB of shared memory a
// Hopper block may have (causal: T <= 256; without the mask, which keeps all T^2 / 4096 dS tiles:
// T <= 192). FATHOM_ATTENTION_SHORT=0 turns it off (the two passes run), for comparisons.
inline bool short_backward_applies(const AttentionBackwardParams<bf16>& p) {
  static const bool disabled = !env_switch("FATHOM_ATTENTION_SHORT", true);
  constexpr std::size_t kHopperBlockSmem = 227 * 1024;
  if (disabled || !p.dq || !p.dk || !p.dv || p.seq > 64 * kShortMaxTiles) return false;
  return short_backward_smem(static_cast<int>((p.seq + 63) / 64), p.causal) <= kHopperBlockSmem;
}

inline void launch_backward_short(const AttentionBackwardParams<bf16>& p) {
  const int tiles = static_cast<int>((p.seq + 63) / 64);
  const std::size_t smem = short_backward_smem(tiles, p.causal);
  allow_shared_memory<backward_short_wgmma<>>(smem);
  backward_short_wgmma<><<<grid_of(1, p.batch * p.heads), kShortThreads, smem, cuda::stream()>>>(
      p, rope_freqs<64>(p));
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// ---- choosing and launching ---------------------------------------------------------------------

// Whether this program's kernels for the current GPU were compiled as sm_90a (wgmma exists only
// there): a one-thread kernel reports it, once per device. FATHOM_ATTENTION_WGMMA=0 turns the
// family off (the mma kernels run), for comparisons. The first query synchronizes fathom's
// stream once; while the stream is being captured into a CUDA graph the answer is "no" until a
// query outside a capture has run.
template <int Unused = 0>  // a template, so that every translation unit may define it
__global__ void wgmma_compiled_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// Whether this process runs sm_90a code on the current device: built with it (90a among the CUDA
// architectures) and a GPU of compute capability 9.0. The wgmma attention and fathom's own Hopper
// GEMM (gemm_sm90.cuh) need it.
inline bool sm90a_available() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices];  // 0 unknown, 1 yes, -1 no
  int device = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kDevices) return false;
  if (const int k = known[device].load(std::memory_order_relaxed); k != 0) return k > 0;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  FATHOM_CUDA_CHECK(cudaStreamIsCapturing(cuda::stream(), &capture));
  if (capture != cudaStreamCaptureStatusNone) return false;
  cudaDeviceProp prop{};
  FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int answer = 0;
  if (prop.major == 9 && prop.minor == 0) {
    int* flag = nullptr;
    FATHOM_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    wgmma_compiled_kernel<><<<1, 1, 0, cuda::stream()>>>(flag);
    const cudaError_t launched = cudaGetLastError();
    if (launched == cudaSuccess) {
      FATHOM_CUDA_CHECK(
          cudaMemcpyAsync(&answer, flag, sizeof(int), cudaMemcpyDeviceToHost, cuda::stream()));
      FATHOM_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    }
    FATHOM_CUDA_CHECK(cudaFree(flag));
  }
  known[device].store(answer == 1 ? 1 : -1, std::memory_order_relaxed);
  return answer == 1;
}

inline bool wgmma_available() {
  static const bool disabled = !env_switch("FATHOM_ATTENTION_WGMMA", true);
  return !disabled && sm90a_available();
}

// The tile shapes in use (head_dim 64), timed on an H200 (fathom-attention-bench, bf16, causal,
// B 32 T 1024 H 12 and B 128 T 256 H 12 and 16; bench/NOTES.md): one warpgroup of 64 rows a
// block and 3 blocks an SM, so that while one block waits on its wgmma or its softmax another's
// run; 64-row tiles in both backward passes (32-row ones did 4 blocks an SM and lost 3 to 9%).
struct WgmmaChoice {
  using Forward = WgmmaForward<64, 1, 3>;
  using Dkdv = WgmmaDkdv<64, 1, 3>;
  using Dq = WgmmaDq<64, 1, 3>;
  // backward_short_wgmma where it applies with up to this many 64-row tiles (T <= 192): at four
  // (T = 256) the two passes were faster. Above, the two passes: a one-pass backward that adds dQ
  // from the dK/dV blocks through running fp32 tiles in L2, key tiles in a fixed order behind a
  // counter per query tile, lost to them (0.709 against 0.643 ms at B 32 H 12 T 1024; commit
  // 5675bf8 and bench/NOTES.md, twenty-fifth session).
  static constexpr int kShortTiles = 3;
};

// Alternatives that fathom-attention-bench times against WgmmaChoice (the [attention] tests check
// them): 128-row forward blocks (two warpgroups sharing each K/V tile); 32-row backward tiles with
// 4 blocks an SM; 128-key tiles in the forward and the dQ pass.
// WgmmaChoice's tiles with the two passes at every T, or with one block a head wherever that
// applies (T = 256 too).
struct WgmmaTwoPass : WgmmaChoice {
  static constexpr int kShortTiles = 0;
};
struct WgmmaOneBlock : WgmmaChoice {
  static constexpr int kShortTiles = kShortMaxTiles;
};
struct WgmmaWide {
  using Forward = WgmmaForward<64, 2, 2>;
  using Dkdv = WgmmaDkdv<64, 1, 3>;
  using Dq = WgmmaDq<64, 1, 3>;
  static constexpr int kShortTiles = 0;
};
struct WgmmaNarrow {
  using Forward = WgmmaForward<64, 1, 4>;
  using Dkdv = WgmmaDkdv<32, 1, 4>;
  using Dq = WgmmaDq<32, 1, 4>;
  static constexpr int kShortTiles = 0;
};
struct WgmmaLongKeys {
  using Forward = WgmmaForward<128, 1, 2>;
  using Dkdv = WgmmaDkdv<64, 1, 3>;
  using Dq = WgmmaDq<128, 1, 2>;
  static constexpr int kShortTiles = 0;
};

template <class Shapes = WgmmaChoice>
void launch_forward_wgmma(const AttentionParams<bf16>& p) {
  using Cfg = typename Shapes::Forward;
  launch_mma<Cfg, forward_wgmma<Cfg>>(p);
}

// The whole backward: one block a head where backward_short_wgmma applies and T takes at most
// Shapes::kShortTiles tiles; else the dQ pass (which writes D) when dq is wanted, else D by its
// own pass; then dK and dV.
template <class Shapes = WgmmaChoice>
void launch_backward_wgmma(const AttentionBackwardParams<bf16>& p, float* delta) {
  if (p.seq <= 64 * Shapes::kShortTiles && short_backward_applies(p))
    return launch_backward_short(p);
  using Dkdv = typename Shapes::Dkdv;
  using Dq = typename Shapes::Dq;
  const auto freqs = rope_freqs<64>(p);
  if (p.dq) {
    launch_mma<Dq, backward_dq_wgmma<Dq>>(p, delta, freqs);
  } else {
    launch_rowsum(p, delta, /*vectorized=*/true);
  }
  if (p.dk || p.dv)
    launch_mma<Dkdv, backward_dkdv_wgmma<Dkdv>>(p, static_cast<const float*>(delta), freqs);
}

}  // namespace fathom::kernels::detail::attn
