// A bf16 GEMM for Hopper (sm_90a) written for fathom's own epilogues: C (M, N) = A (M, K) B (N,
// K)^T with fp32 accumulation, both operands K-major (row-major with K contiguous: the forward
// linear layers' X W^T), and the epilogue a class of the caller's (a plain bf16 store, SwiGLU on
// the gate and up halves of a stacked projection, ...), which cuBLASLt cannot run.
//
// Layout of the work (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate" and
// "Tensor Copy"): a persistent grid, one block an SM, walks 128 x 256 output tiles. Warpgroup 0 is
// the producer: one thread issues the tensor-memory-accelerator copies of each 64-wide K slice
// (A: 128 x 64, B: two boxes of 128 x 64) into a ring of kStages shared-memory stages, each
// signalled by a transaction-counting mbarrier. Warpgroups 1 and 2 each own 64 rows of the tile:
// per stage four wgmma.m64n256k16 from the 128-byte-swizzled tiles, at most two stages' products in
// flight, and each stage handed back to the producer (a second mbarrier) once its products are
// done. The producer runs ahead into the next tile while the consumers store this one.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/gemm_sm90.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <mutex>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/kernels/activation.hpp"
#include "fathom/kernels/cuda/attention/wgmma.cuh"
#include "fathom/kernels/cuda/primitives.cuh"

namespace fathom::kernels::detail::sm90 {

using attn::fence_registers;
using attn::pack_bf16;
using attn::smem_address;
using attn::sw128_desc;
using attn::wgmma_commit;
using attn::wgmma_fence;

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 3;
constexpr int kThreads = 384;                    // producer warpgroup + two consumer warpgroups
constexpr int kABytes = kBM * kBK * 2;           // 16 KiB
constexpr int kBBoxBytes = (kBN / 2) * kBK * 2;  // 16 KiB, two boxes a stage
constexpr int kStageBytes = kABytes + 2 * kBBoxBytes;
constexpr int kOutBytes = 64 * kBN * 2;  // a consumer's staged output: 64 x 256 bf16
constexpr int kGroupM = 8;               // M tiles a raster group walks together
constexpr int kWorkerThreads = 96;       // the producer warpgroup's warps 1-3
constexpr std::size_t kSmemBytes =
    1024 + kStages * kStageBytes + 2 * kOutBytes + (2 * kStages + 4) * sizeof(std::uint64_t);

// ---- mbarriers and the tensor copy --------------------------------------------------------------

__device__ inline void mbar_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Arrives once and adds `bytes` to the transactions the current phase waits for.
__device__ inline void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ inline void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed (a fresh barrier counts parity 1 as done).
__device__ inline void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// The box at (c0 along the contiguous dimension, c1 along rows) of `map` into shared memory at
// dst; completes `bytes` of the barrier's transactions (out-of-range elements arrive as zeros).
__device__ inline void tma_load_2d(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar,
                                   int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, "
      "%4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

// The 64 x 64 box of shared memory at src to (c0 along the contiguous dimension, c1 along rows) of
// `map`, as one bulk group of this thread's (the part outside the tensor is not written).
__device__ inline void tma_store_2d(const CUtensorMap* map, std::uint32_t src, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
          reinterpret_cast<std::uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1)
      : "memory");
}
__device__ inline void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until this thread's bulk stores have read their shared memory (Read) or completed.
template <bool Read>
__device__ inline void bulk_wait() {
  if constexpr (Read)
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  else
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
__device__ inline void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ inline void st_shared_u32(std::uint32_t addr, std::uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
template <class Pack>
__device__ inline void ld_shared_16(Pack& p, std::uint32_t addr) {
  static_assert(sizeof(Pack) == 16);
  std::uint32_t w[4];
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "r"(addr)
               : "memory");
  std::memcpy(&p, w, 16);
}

template <int Pending>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// d (64 x 256, fp32) = (accumulate ? d : 0) + A (64 x 16) B (16 x 256), both from shared memory;
// TransB 1: B MN-major.
template <int TransB>
__device__ inline void wgmma_m64n256k16(float (&d)[128], std::uint64_t a, std::uint64_t b,
                                        bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, "
      "%72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, "
      "%88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, "
      "%104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, "
      "%120, %121, %122, %123, %124, %125, %126, %127"
      "}, "
      "%128, %129, p, 1, 1, 0, %131;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
        "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
        "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
        "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(TransB));
}

// ---- epilogues ----------------------------------------------------------------------------------
//
// A consumer thread holds 64 x 256 / 128 accumulators of its warpgroup's rows: d[4 j + e] is row
// r + 8 (e >> 1), column 8 j + 2 c + (e & 1) of the warpgroup's 64 x 256 (r = 16 warp + lane / 4,
// c = lane % 4), j < 32. An epilogue names the rows of B that make a tile's two 128-row boxes,
// writes what it stores into the warpgroup's staging area (64-row x 64-column boxes of bf16 under
// the 128-byte swizzle, `staged`), and then, from one thread, copies the boxes out with the tensor
// copy engine, which leaves out whatever lies past the output's edges.

// Byte offset of (row r, column col) in a staging area of 64 x 64 swizzled boxes.
__device__ inline std::uint32_t staged(int r, int col) {
  return (col / 64) * 8192 + r * 128 + ((((col % 64) / 8) ^ (r % 8)) * 16) + (col % 8) * 2;
}

// C (M, N) bf16: the tile's columns are n0 .. n0 + 255, B's rows the same.
struct StoreBf16 {
  static constexpr bool kWorkers = false;
  CUtensorMap map_c;  // C in 64 x 64 boxes
  int n_tiles;
  __device__ int b_row(int tile_n, int box) const { return tile_n * kBN + box * (kBN / 2); }
  // The whole 64 x 256 as bf16.
  __device__ static void stage_all(const float (&d)[128], std::uint32_t out, int r, int c4) {
#pragma unroll
    for (int j = 0; j < 32; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        st_shared_u32(out + staged(r + 8 * half, 8 * j + 2 * c4),
                      pack_bf16(d[4 * j + 2 * half], d[4 * j + 2 * half + 1]));
  }
  __device__ void stage(const float (&d)[128], std::uint32_t out, int r, int c4) const {
    stage_all(d, out, r, c4);
  }
  __device__ void issue(std::uint32_t out, int row0, int tile_n) const {
#pragma unroll
    for (int b = 0; b < 4; ++b) tma_store_2d(&map_c, out + b * 8192, tile_n * kBN + 64 * b, row0);
  }
};

// 1 / (1 + e^-x) from the special-function unit's 2^x and reciprocal (a few ulp of float, far
// below bf16's step): 0 for x << 0 (the exponential overflows to inf), 1 for x >> 0.
__device__ inline float fast_sigmoid(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }

// The gate/up projection of a SwiGLU MLP with SwiGLU in its epilogue: gu (M, 2F) = X Wgu^T, gate
// in columns [0, F) and up in [F, 2F) (row stride ldgu), and h (M, F) = silu(gate) * up, from the
// bf16-rounded gate and up, with the sigmoid of fast_sigmoid. A tile covers 128 columns of gate and
// the same 128 of up (B's boxes: rows tile_n 128 and F + tile_n 128 of the stacked weight); the
// consumers copy gate and up out as they are; the producer warpgroup's idle warps read them back
// from the staging area, compute h and store it, while the consumers run the next tile.
struct SwigluStore {
  static constexpr bool kWorkers = true;
  CUtensorMap map_gate, map_up;  // gu's halves as (M, F) views, 64 x 64 boxes
  bf16* h;
  std::int64_t ldh, m, f;
  int n_tiles;
  __device__ int b_row(int tile_n, int box) const {
    return tile_n * (kBN / 2) + box * static_cast<int>(f);
  }
  __device__ void stage(const float (&d)[128], std::uint32_t out, int r, int c4) const {
    StoreBf16::stage_all(d, out, r, c4);
  }
  __device__ void issue(std::uint32_t out, int row0, int tile_n) const {
    const int col = tile_n * (kBN / 2);
    tma_store_2d(&map_gate, out, col, row0);
    tma_store_2d(&map_gate, out + 8192, col + 64, row0);
    tma_store_2d(&map_up, out + 16384, col, row0);
    tma_store_2d(&map_up, out + 24576, col + 64, row0);
  }
  // Worker i of n: 8 columns of one row at a time (F is a multiple of 8).
  __device__ void work(std::uint32_t out, std::int64_t row0, int tile_n, int i, int n) const {
    for (int q = i; q < 64 * 16; q += n) {
      const int r = q / 16, col = (q % 16) * 8;
      const std::int64_t row = row0 + r, j = static_cast<std::int64_t>(tile_n) * (kBN / 2) + col;
      if (row >= m || j >= f) continue;
      MapPack<bf16, 8> g, u;
      ld_shared_16(g, out + staged(r, col));
      ld_shared_16(u, out + staged(r, kBN / 2 + col));
      float gv[8], uv[8], hv[8];
      unpack(g, gv);
      unpack(u, uv);
#pragma unroll
      for (int e = 0; e < 8; ++e) hv[e] = gv[e] * fast_sigmoid(gv[e]) * uv[e];
      round_store<8>(h + row * ldh + j, hv);
    }
  }
};

// ---- the kernel ---------------------------------------------------------------------------------

// Tile t's (M tile, N tile): groups of kGroupM M tiles walked N tile by N tile, so that the blocks
// running at once read a few M tiles of A and a few N tiles of B, which stay in L2.
__device__ inline void tile_of(int t, int m_tiles, int n_tiles, int& tm, int& tn) {
  const int group = t / (kGroupM * n_tiles), first = group * kGroupM;
  const int rows = min(kGroupM, m_tiles - first), i = t - group * kGroupM * n_tiles;
  tm = first + i % rows;
  tn = i / rows;
}

template <class Epi>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a,
                     const __grid_constant__ CUtensorMap map_b, int m_tiles, int k_blocks,
                     const __grid_constant__ Epi epi) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t base = attn::swizzle_base(smem_raw);
  const std::uint32_t outs = base + kStages * kStageBytes;  // two kOutBytes staging areas
  const std::uint32_t bars = outs + 2 * kOutBytes;
  auto stage_a = [&](int s) { return base + s * kStageBytes; };
  auto full = [&](int s) { return bars + 8u * s; };
  auto empty = [&](int s) { return bars + 8u * (kStages + s); };
  // A consumer's staging area holds a tile for the workers (out_full) / is free again (out_free).
  auto out_full = [&](int c) { return bars + 8u * (2 * kStages + c); };
  auto out_free = [&](int c) { return bars + 8u * (2 * kStages + 2 + c); };

  const int n_tiles = epi.n_tiles;
  const int tiles = m_tiles * n_tiles;
  const int group = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), 8);  // one arrival from each consumer warp
    }
    for (int c = 0; c < 2; ++c) {
      mbar_init(out_full(c), 1);
      mbar_init(out_free(c), kWorkerThreads / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (group == 0 && threadIdx.x >= 32) {  // the workers, when the epilogue has any
    if constexpr (Epi::kWorkers) {
      std::uint32_t ph = 0;
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int tm, tn;
        tile_of(t, m_tiles, n_tiles, tm, tn);
        for (int c = 0; c < 2; ++c) {
          mbar_wait(out_full(c), ph);
          epi.work(outs + c * kOutBytes, static_cast<std::int64_t>(tm) * kBM + c * 64, tn,
                   threadIdx.x - 32, kWorkerThreads);
          __syncwarp();
          if (threadIdx.x % 32 == 0) mbar_arrive(out_free(c));
        }
        ph ^= 1;
      }
    }
    return;
  }
  if (group == 0) {  // the producer
    if (threadIdx.x != 0) return;
    int s = 0;
    std::uint32_t phase = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int tm, tn;
      tile_of(t, m_tiles, n_tiles, tm, tn);
      const int b0 = epi.b_row(tn, 0), b1 = epi.b_row(tn, 1);
      for (int kb = 0; kb < k_blocks; ++kb) {
        mbar_wait(empty(s), phase ^ 1);
        mbar_expect_tx(full(s), kStageBytes);
        const std::uint32_t a = stage_a(s);
        tma_load_2d(a, &map_a, full(s), kb * kBK, tm * kBM);
        tma_load_2d(a + kABytes, &map_b, full(s), kb * kBK, b0);
        tma_load_2d(a + kABytes + kBBoxBytes, &map_b, full(s), kb * kBK, b1);
        if (++s == kStages) {
          s = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  // A consumer: warpgroup `group` (1 or 2) owns tile rows 64 (group - 1) .. + 63.
  const int wg = group - 1;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  float d[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) d[i] = 0.0f;
  fence_registers(d);
  int s = 0;
  std::uint32_t phase = 0;
  const std::uint32_t out = outs + wg * kOutBytes;
  const bool issuer = threadIdx.x % 128 == 0;
  std::uint32_t out_phase = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    tile_of(t, m_tiles, n_tiles, tm, tn);
    int prev = -1;
    for (int kb = 0; kb < k_blocks; ++kb) {
      mbar_wait(full(s), phase);
      const std::uint64_t da = sw128_desc(stage_a(s) + wg * 64 * 128);
      const std::uint64_t db = sw128_desc(stage_a(s) + kABytes);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < kBK / 16; ++k)
        wgmma_m64n256k16<0>(d, da + 2 * k, db + 2 * k, kb > 0 || k > 0);
      wgmma_commit();
      wgmma_wait<1>();  // the previous stage's products are done: hand it back
      if (prev >= 0 && lane == 0) mbar_arrive(empty(prev));
      prev = s;
      if (++s == kStages) {
        s = 0;
        phase ^= 1;
      }
    }
    wgmma_wait<0>();
    fence_registers(d);
    if (lane == 0) mbar_arrive(empty(prev));
    // The previous tile's copies out (and workers) must have read the staging area before it is
    // written again.
    if constexpr (Epi::kWorkers) mbar_wait(out_free(wg), out_phase ^ 1);
    out_phase ^= 1;
    if (issuer) bulk_wait<true>();
    named_barrier(1 + wg, 128);
    epi.stage(d, out, 16 * warp + lane / 4, lane % 4);
    attn::fence_proxy_async();  // the stores above, visible to the tensor copies
    named_barrier(1 + wg, 128);
    if (issuer) {
      epi.issue(out, tm * kBM + wg * 64, tn);
      bulk_commit();
      if constexpr (Epi::kWorkers) mbar_arrive(out_full(wg));
    }
  }
  if (issuer) bulk_wait<false>();
#endif
}

// ---- host side ----------------------------------------------------------------------------------

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    FATHOM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                       cudaEnableDefault, &q));
    FATHOM_CHECK(q == cudaDriverEntryPointSuccess && p != nullptr,
                 "gemm_sm90: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A row-major bf16 matrix (rows, cols) with row stride ld, moved in boxes of box_rows x 64 under
// the 128-byte swizzle.
inline CUtensorMap tensor_map(const bf16* base, std::int64_t rows, std::int64_t cols,
                              std::int64_t ld, int box_rows) {
  FATHOM_CHECK(reinterpret_cast<std::uintptr_t>(base) % 16 == 0 && (ld * 2) % 16 == 0,
               "gemm_sm90: operands need 16-byte aligned rows (ld " << ld << ")");
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld * 2)};
  const cuuint32_t box[2] = {kBK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r =
      encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(base), dims,
                     strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FATHOM_CHECK(r == CUDA_SUCCESS, "gemm_sm90: cuTensorMapEncodeTiled failed (" << int(r) << ")");
  return map;
}

inline int sm_count() {
  static const int n = [] {
    int device = 0, count = 0;
    FATHOM_CUDA_CHECK(cudaGetDevice(&device));
    FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  }();
  return n;
}

// Launches of gemm_sm90_kernel so far in this process (tests check which path ran).
inline std::uint64_t& gemm_sm90_runs() {
  static std::uint64_t n = 0;
  return n;
}

// Whether fathom's own GEMM can run here: sm_90a code on a compute-capability 9.0 GPU.
inline bool gemm_sm90_available() { return attn::sm90a_available(); }

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// gemm_swiglu's problem as the kernel takes it: gu = A B^T with A (M, K) and B (2F, K) K-major,
// rows on the 16-byte grid, F a multiple of 8, sizes within the tensor copies' 32-bit
// coordinates, alpha 1.
template <class P>
bool swiglu_fits(const P& p, const bf16* h) {
  const std::int64_t f = p.n / 2;
  return !p.trans_a && p.trans_b && p.alpha == 1.0 && p.k > 0 && f % 8 == 0 && p.lda % 8 == 0 &&
         p.ldb % 8 == 0 && p.ldc % 8 == 0 && aligned16(p.a) && aligned16(p.b) && aligned16(p.c) &&
         aligned16(h) && p.m < (std::int64_t{1} << 31) && p.n < (std::int64_t{1} << 31) &&
         p.k < (std::int64_t{1} << 31) && gemm_sm90_available();
}

// Runs the kernel: A (m, k) with row stride lda, B (b_rows, k) with row stride ldb, the epilogue
// epi (which knows N).
template <class Epi>
void gemm_sm90(const bf16* a, std::int64_t lda, const bf16* b, std::int64_t ldb, std::int64_t m,
               std::int64_t k, std::int64_t b_rows, const Epi& epi) {
  const std::int64_t m_tiles = (m + kBM - 1) / kBM, k_blocks = (k + kBK - 1) / kBK;
  const std::int64_t tiles = m_tiles * epi.n_tiles;
  FATHOM_CHECK(m > 0 && k > 0 && tiles < (std::int64_t{1} << 31),
               "gemm_sm90: bad sizes m " << m << " k " << k);
  const CUtensorMap map_a = tensor_map(a, m, k, lda, kBM);
  const CUtensorMap map_b = tensor_map(b, b_rows, k, ldb, kBN / 2);
  static std::once_flag once;
  std::call_once(once, [] {
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(gemm_sm90_kernel<Epi>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kSmemBytes)));
  });
  const int grid = static_cast<int>(std::min<std::int64_t>(tiles, sm_count()));
  ++gemm_sm90_runs();
  gemm_sm90_kernel<Epi><<<grid, kThreads, kSmemBytes, cuda::stream()>>>(
      map_a, map_b, static_cast<int>(m_tiles), static_cast<int>(k_blocks), epi);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// C (m, n) = A (m, k) B (n, k)^T in bf16, row strides lda, ldb, ldc.
inline void gemm_sm90_bf16(const bf16* a, std::int64_t lda, const bf16* b, std::int64_t ldb,
                           bf16* c, std::int64_t ldc, std::int64_t m, std::int64_t n,
                           std::int64_t k) {
  const StoreBf16 epi{tensor_map(c, m, n, ldc, 64), static_cast<int>((n + kBN - 1) / kBN)};
  gemm_sm90(a, lda, b, ldb, m, k, n, epi);
}

// gu (m, 2f) = A (m, k) Wgu (2f, k)^T and h (m, f) = silu(gate) * up: row strides lda, ldw, ldgu,
// ldh; f a multiple of 8.
inline void gemm_sm90_swiglu(const bf16* a, std::int64_t lda, const bf16* w, std::int64_t ldw,
                             bf16* gu, std::int64_t ldgu, bf16* h, std::int64_t ldh, std::int64_t m,
                             std::int64_t f, std::int64_t k) {
  FATHOM_CHECK(
      f % 8 == 0 && ldh % 8 == 0 && reinterpret_cast<std::uintptr_t>(h) % 16 == 0,
      "gemm_sm90_swiglu: h needs 16-byte aligned rows and F a multiple of 8 (F " << f << ")");
  const SwigluStore epi{tensor_map(gu, m, f, ldgu, 64),
                        tensor_map(gu + f, m, f, ldgu, 64),
                        h,
                        ldh,
                        m,
                        f,
                        static_cast<int>((f + kBN / 2 - 1) / (kBN / 2))};
  gemm_sm90(a, lda, w, ldw, m, k, 2 * f, epi);
}

}  // namespace fathom::kernels::detail::sm90
