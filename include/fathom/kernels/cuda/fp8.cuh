// fp8 kernels on CUDA: amax (a block reduction into one device float, no host synchronization),
// quantization with the scale computed on the device from that amax (optionally also writing the
// transposed copy that cuBLASLt's fp8 layout needs; the values read from a tensor or computed from
// SwiGLU's gate and up as the pass goes), dequantization, and the scaled fp8 GEMM
// through cuBLASLt (the plans and handles of gemm.cuh; the inverse scales given as device
// pointers), with a plain tiled kernel for the problems cuBLASLt's fp8 kernels do not take.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/fp8.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <initializer_list>
#include <mutex>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/fp8.hpp"
#include "fathom/kernels/cuda/gemm.cuh"
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/fp8.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::kernels {

// Whether the current device multiplies fp8 on its tensor cores (compute capability 8.9 or
// later: Ada, Hopper and after). Elsewhere gemm_fp8 still runs, on the plain tiled kernel.
inline bool device_supports_fp8() {
  int device = 0, major = 0, minor = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major > 8 || (major == 8 && minor >= 9);
}

namespace detail {

template <Fp8Format F>
constexpr __nv_fp8_interpretation_t nv_fp8_interpretation() {
  return F == Fp8Format::e4m3 ? __NV_E4M3 : __NV_E5M2;
}

template <Fp8Format F>
constexpr cudaDataType_t cuda_fp8_type() {
  return F == Fp8Format::e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2;
}

// CUDA's own conversions (one cvt.rn.satfinite instruction on sm_89+), which the tests hold to
// fathom's host encoding bit for bit.
template <Fp8Format F>
__device__ inline std::uint8_t fp8_encode_device(float v) {
  return static_cast<std::uint8_t>(
      __nv_cvt_float_to_fp8(v, __NV_SATFINITE, nv_fp8_interpretation<F>()));
}
template <Fp8Format F>
__device__ inline float fp8_decode_device(std::uint8_t c) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, nv_fp8_interpretation<F>())));
}

struct AmaxMax {
  __device__ std::uint32_t operator()(std::uint32_t a, std::uint32_t b) const {
    return a > b ? a : b;
  }
};

constexpr int fp8_threads = 256;

// max |x| as float bits with the sign cleared (NaN orders above infinity), per block, then one
// atomicMax per block into *out (zeroed before the launch). A maximum does not depend on order:
// the result is the same on every run.
template <class T>
__global__ void amax_kernel(const T* x, std::int64_t n, std::uint32_t* out) {
  using BlockReduce = cub::BlockReduce<std::uint32_t, fp8_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  constexpr int N = map_width<T>();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  std::uint32_t best = 0;
  auto take = [&best](T v) {
    const std::uint32_t bits = __float_as_uint(scalar_cast<float>(v)) & 0x7fffffffu;
    best = bits > best ? bits : best;
  };
  std::int64_t done = 0;
  if (N > 1 && map_aligned(x)) {
    const std::int64_t packs = n / N;
    for (std::int64_t k = tid; k < packs; k += stride) {
      const auto pack = map_load<N>(x + k * N);
#pragma unroll
      for (int j = 0; j < N; ++j) take(pack.v[j]);
    }
    done = packs * N;
  }
  for (std::int64_t i = done + tid; i < n; i += stride) take(x[i]);
  const std::uint32_t block = BlockReduce(temp).Reduce(best, AmaxMax{});
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned int*>(out), block);
}

// max(seen, |v| as float bits) when v is finite; seen otherwise.
__device__ inline std::uint32_t max_finite_bits(std::uint32_t seen, float v) {
  const std::uint32_t bits = __float_as_uint(v) & 0x7fffffffu;
  return bits < 0x7f800000u && bits > seen ? bits : seen;
}

// The scale of a quantize pass, the same in every block: from *p.amax (current scaling), or from
// the amax history (delayed scaling; slot t read by thread t of the block). Every thread of the
// block calls it.
template <class T, class F>
__device__ float quantize_scale(const QuantizeFp8Params<T, F>& p) {
  if (p.amax) return fp8_scale_from_amax<F::format>(*p.amax, p.margin);
  __shared__ std::uint32_t best;
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  if (tid == 0) best = 0;
  __syncthreads();
  const int next = p.record + 1 == p.history_len ? 0 : p.record + 1;
  if (tid < p.history_len && tid != p.record && tid != next)
    atomicMax(&best, __float_as_uint(p.history[tid]) & 0x7fffffffu);
  __syncthreads();
  return fp8_scale_from_amax<F::format>(__uint_as_float(best), p.margin);
}

// With a history to record into: the largest finite |x| of the block (`seen`, float bits with the
// sign cleared, one value a thread) into history[record], and history[next] cleared for the next
// pass. Every thread of the block calls it, after its last element.
template <class T, class F>
__device__ void record_history_amax(const QuantizeFp8Params<T, F>& p, std::uint32_t seen) {
  if (!p.history || !p.record_amax) return;
  __shared__ std::uint32_t block_max;
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  if (tid == 0) block_max = 0;
  __syncthreads();
  for (int offset = 16; offset > 0; offset /= 2)
    seen = max(seen, __shfl_xor_sync(0xffffffffu, seen, offset));
  if (tid % 32 == 0) atomicMax(&block_max, seen);
  __syncthreads();
  if (tid == 0) {
    atomicMax(reinterpret_cast<unsigned int*>(p.history + p.record), block_max);
    if (blockIdx.x == 0 && blockIdx.y == 0)
      p.history[p.record + 1 == p.history_len ? 0 : p.record + 1] = 0.0f;
  }
}

// Where a quantize pass takes its values. A source has kPlanes planes of (rows, in_cols) each,
// side by side in the output: plane k is the output's columns [k in_cols, (k + 1) in_cols), so the
// output is (rows, kPlanes in_cols) and its transpose (kPlanes in_cols, rows). at(r, c) is the
// value at column c of the output; load8(r, c, v) the 8 values at columns c .. c + 7 of every
// plane (c a multiple of 8 below in_cols; the wide kernel only), in two steps: fetch8(r, c) reads
// the source's 16-byte packs (a Raw) and values(raw, v) computes the values from them, so that a
// thread can have several rows' reads in flight before it uses any (kFetchAhead). kTileRows: the
// rows of the wide kernel's tiles.
//
// Timed on an H200 (llama-350m's shapes, 32768 rows, bf16): a tensor's pass with all reads ahead
// and 128-row tiles ran at 2980 GB/s (1024 columns) and 3220 (3072), against 2590 and 2790 with a
// row's read after the previous row's stores and 64-row tiles; SwiGLU's passes lost with reads
// ahead (forward 3040 -> 2580 GB/s, backward 3350 -> 2510: the registers the gate, up and dh
// packs of several rows hold cost blocks an SM), so they keep one row at a time and 64 rows.
template <class T>
struct ReadSource {  // a tensor x (rows, cols), read
  static constexpr int kPlanes = 1, kTileRows = 128;
  static constexpr bool kFetchAhead = true;
  using Raw = WordPack<T, 8>;  // fetched under a condition: left unset where not
  const T* x;
  std::int64_t cols;
  __device__ float at(std::int64_t r, std::int64_t c) const {
    return scalar_cast<float>(x[r * cols + c]);
  }
  __device__ Raw fetch8(std::int64_t r, std::int64_t c) const {
    return word_load<8>(x + r * cols + c);
  }
  __device__ static void values(const Raw& raw, float (&v)[1][8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[0][j] = raw.template get<float>(j);
  }
  __device__ void load8(std::int64_t r, std::int64_t c, float (&v)[1][8]) const {
    values(fetch8(r, c), v);
  }
};

// SwiGLU's output (forward: one plane of f columns) or its gradient (Backward: two planes, dgate
// and dup), computed from gu and dh (kernels::SwigluFp8Source).
template <class T, bool Backward>
struct SwigluSource {
  static constexpr int kPlanes = Backward ? 2 : 1, kTileRows = 64;
  static constexpr bool kFetchAhead = false;
  struct Raw {
    MapPack<T, 8> g, u, d;  // d: the backward's only
  };
  SwigluFp8Source<T> s;
  __device__ float at(std::int64_t r, std::int64_t c) const { return swiglu_fp8_value(s, r, c); }
  __device__ Raw fetch8(std::int64_t r, std::int64_t c) const {
    const T* row = s.gu + r * 2 * s.f;
    Raw raw;
    raw.g = map_load<8>(row + c);
    raw.u = map_load<8>(row + s.f + c);
    if constexpr (Backward) raw.d = map_load<8>(s.dh + r * s.f + c);
    return raw;
  }
  __device__ static void values(const Raw& raw, float (&v)[kPlanes][8]) {
    using A = accum_t<T>;
    A g[8], u[8];
    unpack(raw.g, g);
    unpack(raw.u, u);
    if constexpr (Backward) {
      A d[8];
      unpack(raw.d, d);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[0][j] = scalar_cast<float>(d[j] * u[j] * silu_grad(g[j]));
        v[1][j] = scalar_cast<float>(d[j] * silu(g[j]));
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[0][j] = scalar_cast<float>(silu(g[j]) * u[j]);
    }
  }
  __device__ void load8(std::int64_t r, std::int64_t c, float (&v)[kPlanes][8]) const {
    values(fetch8(r, c), v);
  }
};

// Tiles of 32 x 32 elements, 32 x 8 threads: rows read along x (coalesced), codes written to out
// directly and, for out_t, through shared memory so that its rows are written along x too. Row
// tiles along grid y (looping past 65535), column tiles along grid x (of the whole output: every
// plane of the source).
constexpr int fp8_tile = 32, fp8_tile_rows = 8;

// Record: p has a history to record this pass's amax into (the largest finite |x| is tracked
// only then; current scaling's passes skip that work).
template <class T, class F, bool Record, class Src>
__global__ void quantize_fp8_kernel(QuantizeFp8Params<T, F> p, Src src) {
  __shared__ std::uint8_t tile[fp8_tile][fp8_tile + 1];
  const float scale = quantize_scale(p);
  std::uint32_t seen = 0;  // the largest finite |x| as float bits, for an amax history
  if (p.scale_inv && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0)
    *p.scale_inv = 1.0f / scale;
  const std::int64_t row_tiles = (p.rows + fp8_tile - 1) / fp8_tile;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * fp8_tile;
  auto* out = reinterpret_cast<std::uint8_t*>(p.out);
  auto* out_t = reinterpret_cast<std::uint8_t*>(p.out_t);
  for (std::int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
    const std::int64_t r0 = rt * fp8_tile;
    for (int i = threadIdx.y; i < fp8_tile; i += fp8_tile_rows) {
      const std::int64_t r = r0 + i, c = c0 + threadIdx.x;
      if (r < p.rows && c < p.cols) {
        const float v = src.at(r, c);
        if constexpr (Record) seen = max_finite_bits(seen, v);
        const std::uint8_t code = fp8_encode_device<F::format>(v * scale);
        if (out) out[r * p.cols + c] = code;
        tile[i][threadIdx.x] = code;
      }
    }
    if (out_t) {  // uniform over the block
      __syncthreads();
      for (int i = threadIdx.y; i < fp8_tile; i += fp8_tile_rows) {
        const std::int64_t c = c0 + i, r = r0 + threadIdx.x;
        if (c < p.cols && r < p.rows) out_t[c * p.rows + r] = tile[threadIdx.x][i];
      }
      __syncthreads();
    }
  }
  if constexpr (Record) record_history_amax(p, seen);
}

// The wide route of quantize_fp8, for rows and each plane's columns multiples of 8 with the
// operands aligned to 8 elements: tiles of TileRows x 64 of every plane of the source, 256
// threads. Each thread takes 8 consecutive values (16 bytes of bf16 read) of TileRows / 32 rows of
// a tile and writes their 8 codes to out as one 8-byte store; for out_t the codes go through
// shared memory, and each thread writes 8 consecutive codes of one out_t row (TileRows / 8
// threads cover a tile's rows of it). The plain kernel above moves one byte per thread and store,
// which left the quantization of (B T, C) activations far below the memory's rate.
//
// A block takes one tile (row tiles past the grid's 65535: more, down its column). With
// Src::kFetchAhead all of a thread's reads of a tile are issued before its first store: a store
// through a byte pointer may alias any load after it, so a load written after a store waits for it.
constexpr int fp8_wide_cols = 64, fp8_wide_threads = 256, fp8_wide_pitch = fp8_wide_cols + 4;

template <class T, class F, bool Record, class Src>
__global__ void __launch_bounds__(fp8_wide_threads)
    quantize_fp8_wide_kernel(QuantizeFp8Params<T, F> p, Src src) {
  constexpr int P = Src::kPlanes, TileRows = Src::kTileRows;
  constexpr int chunks = fp8_wide_cols / 8;                 // 8-element pieces of a tile row
  constexpr int rows_per_pass = fp8_wide_threads / chunks;  // 32
  constexpr int R = TileRows / rows_per_pass;               // rows of a tile a thread takes
  constexpr int t_chunks = TileRows / 8;                    // pieces of a tile's out_t row
  constexpr int t_cols = fp8_wide_threads / t_chunks;       // out_t rows a pass writes
  static_assert(TileRows % rows_per_pass == 0 && fp8_wide_threads % t_chunks == 0 &&
                fp8_wide_cols % t_cols == 0);
  __shared__ alignas(16) std::uint8_t tile[P][TileRows * fp8_wide_pitch];
  const float scale = quantize_scale(p);
  std::uint32_t seen = 0;  // the largest finite |x| as float bits, for an amax history
  if (p.scale_inv && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
    *p.scale_inv = 1.0f / scale;
  const int chunk = threadIdx.x % chunks, lane_row = threadIdx.x / chunks;
  const std::int64_t in_cols = p.cols / P;  // each plane's
  const std::int64_t row_tiles = (p.rows + TileRows - 1) / TileRows;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * fp8_wide_cols;
  const std::int64_t c = c0 + chunk * 8;  // this thread's first column of each plane
  auto* out = reinterpret_cast<std::uint8_t*>(p.out);
  auto* out_t = reinterpret_cast<std::uint8_t*>(p.out_t);
  for (std::int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
    const std::int64_t r0 = rt * TileRows;
    // Rows and columns are multiples of 8: a thread's chunk is whole or wholly outside.
    bool inside[R];
    typename Src::Raw raw[Src::kFetchAhead ? R : 1];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const std::int64_t r = r0 + lane_row + i * rows_per_pass;
      inside[i] = c < in_cols && r < p.rows;
      if constexpr (Src::kFetchAhead) {
        if (inside[i]) raw[i] = src.fetch8(r, c);
      }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (!inside[i]) continue;
      const int tr = lane_row + i * rows_per_pass;  // row in the tile
      float v[P][8];
      if constexpr (Src::kFetchAhead)
        Src::values(raw[i], v);
      else
        Src::values(src.fetch8(r0 + tr, c), v);
#pragma unroll
      for (int k = 0; k < P; ++k) {
        MapPack<std::uint8_t, 8> codes;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if constexpr (Record) seen = max_finite_bits(seen, v[k][j]);
          codes.v[j] = fp8_encode_device<F::format>(v[k][j] * scale);
        }
        if (out) map_store<8>(out + (r0 + tr) * p.cols + k * in_cols + c, codes);
        if (out_t) {  // two 4-byte stores: the row pitch keeps 4-byte, not 8-byte, alignment
          auto* words = reinterpret_cast<std::uint32_t*>(tile[k] + tr * fp8_wide_pitch + chunk * 8);
          const auto* packed = reinterpret_cast<const std::uint32_t*>(codes.v);
          words[0] = packed[0];
          words[1] = packed[1];
        }
      }
    }
    if (out_t) {  // uniform over the block
      __syncthreads();
      // Thread (tc, tk) writes out_t[k in_cols + c0 + tc][r0 + 8 tk .. + 7]: tile column tc,
      // rows 8 tk ..
      const int tk = threadIdx.x % t_chunks;
#pragma unroll
      for (int k = 0; k < P; ++k) {
#pragma unroll
        for (int tc = threadIdx.x / t_chunks; tc < fp8_wide_cols; tc += t_cols) {
          const std::int64_t col = c0 + tc, r = r0 + tk * 8;
          if (col < in_cols && r < p.rows) {
            MapPack<std::uint8_t, 8> codes;
#pragma unroll
            for (int j = 0; j < 8; ++j) codes.v[j] = tile[k][(tk * 8 + j) * fp8_wide_pitch + tc];
            map_store<8>(out_t + (k * in_cols + col) * p.rows + r, codes);
          }
        }
      }
      __syncthreads();
    }
  }
  if constexpr (Record) record_history_amax(p, seen);
}

// Whether a quantize pass can take the wide kernel: whole 8-element pieces of every plane, each
// aligned (`inputs`: the source's pointers, read 8 elements of T at a time).
template <class T, class F>
bool quantize_fp8_wide_fits(const QuantizeFp8Params<T, F>& p, std::int64_t in_cols,
                            std::initializer_list<const void*> inputs) {
  auto aligned = [](const void* q, std::size_t bytes) {
    return reinterpret_cast<std::uintptr_t>(q) % bytes == 0;
  };
  bool ok = p.rows % 8 == 0 && in_cols % 8 == 0 && (!p.out || aligned(p.out, 8)) &&
            (!p.out_t || aligned(p.out_t, 8));
  for (const void* q : inputs) ok = ok && aligned(q, 8 * sizeof(T));
  return ok;
}

// max |value| of a source's output into *out (zeroed before the launch), as amax_kernel does for a
// tensor. Wide: 8 values of every plane a step (load8, the quantize pass's reads), over (rows,
// in_cols) of each plane; otherwise one value a step (at), over the output (rows, cols).
template <class Src, bool Wide>
__global__ void amax_source_kernel(Src src, std::int64_t rows, std::int64_t cols,
                                   std::uint32_t* out) {
  using BlockReduce = cub::BlockReduce<std::uint32_t, fp8_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  constexpr int P = Src::kPlanes;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::uint32_t best = 0;
  auto take = [&best](float v) {
    const std::uint32_t bits = __float_as_uint(v) & 0x7fffffffu;
    best = bits > best ? bits : best;
  };
  const std::int64_t chunks = Wide ? cols / P / 8 : cols;  // a row's steps
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < rows * chunks; i += stride) {
    const std::int64_t r = i / chunks, c = i % chunks;
    if constexpr (Wide) {
      float v[P][8];
      src.load8(r, c * 8, v);
#pragma unroll
      for (int k = 0; k < P; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) take(v[k][j]);
    } else {
      take(src.at(r, c));
    }
  }
  const std::uint32_t block = BlockReduce(temp).Reduce(best, AmaxMax{});
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned int*>(out), block);
}

// amax_source_kernel over a source's (rows, cols) output, wide when `wide`.
template <class Src>
void launch_amax_source(const Src& src, std::int64_t rows, std::int64_t cols, bool wide,
                        float* out) {
  FATHOM_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), cuda::stream()));
  const std::int64_t work = rows * (wide ? cols / Src::kPlanes / 8 : cols);
  if (work == 0) return;
  const int blocks =
      static_cast<int>(std::clamp<std::int64_t>((work + fp8_threads - 1) / fp8_threads, 1, 1024));
  auto* u = reinterpret_cast<std::uint32_t*>(out);
  if (wide)
    amax_source_kernel<Src, true><<<blocks, fp8_threads, 0, cuda::stream()>>>(src, rows, cols, u);
  else
    amax_source_kernel<Src, false><<<blocks, fp8_threads, 0, cuda::stream()>>>(src, rows, cols, u);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// One quantize pass of the values of src (see ReadSource), on the wide kernel when `wide`.
template <class T, class F, class Src>
void launch_quantize_fp8(const QuantizeFp8Params<T, F>& p, const Src& src, bool wide) {
  const bool record = p.history && p.record_amax;
  auto* const plain_kernel =
      record ? quantize_fp8_kernel<T, F, true, Src> : quantize_fp8_kernel<T, F, false, Src>;
  auto* const wide_kernel = record ? quantize_fp8_wide_kernel<T, F, true, Src>
                                   : quantize_fp8_wide_kernel<T, F, false, Src>;
  if (p.rows == 0 || p.cols == 0) {
    if (p.scale_inv || (p.history && p.record_amax)) {
      // Still written: 1 / scale of whatever amax or the history says, and the history's slots
      // (an empty tensor's amax is 0).
      const QuantizeFp8Params<T, F> none{.amax = p.amax,
                                         .scale_inv = p.scale_inv,
                                         .margin = p.margin,
                                         .history = p.history,
                                         .history_len = p.history_len,
                                         .record = p.record,
                                         .record_amax = p.record_amax};
      plain_kernel<<<1, dim3(fp8_tile, fp8_tile_rows), 0, cuda::stream()>>>(none, src);
      FATHOM_CUDA_CHECK(cudaGetLastError());
    }
    return;
  }
  // The wide kernel's column tiles cover one plane (it writes every plane of each); the plain
  // kernel's the whole output.
  const std::int64_t cols = wide ? p.cols / Src::kPlanes : p.cols;
  const std::int64_t col_tiles =
      wide ? (cols + fp8_wide_cols - 1) / fp8_wide_cols : (cols + fp8_tile - 1) / fp8_tile;
  const std::int64_t row_tiles =
      wide ? (p.rows + Src::kTileRows - 1) / Src::kTileRows : (p.rows + fp8_tile - 1) / fp8_tile;
  FATHOM_CHECK(col_tiles <= INT_MAX, "quantize_fp8: " << p.cols << " columns is too many");
  const dim3 grid(static_cast<unsigned>(col_tiles),
                  static_cast<unsigned>(std::min<std::int64_t>(row_tiles, 65535)));
  if (wide)
    wide_kernel<<<grid, fp8_wide_threads, 0, cuda::stream()>>>(p, src);
  else
    plain_kernel<<<grid, dim3(fp8_tile, fp8_tile_rows), 0, cuda::stream()>>>(p, src);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class F, class T>
__global__ void dequantize_fp8_kernel(DequantizeFp8Params<F, T> p) {
  const float s = *p.scale_inv;
  const auto* x = reinterpret_cast<const std::uint8_t*>(p.x);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += stride)
    p.out[i] = scalar_cast<T>(fp8_decode_device<F::format>(x[i]) * s);
}

// The tiled fp8 GEMM for what cuBLASLt's fp8 kernels decline (other layouts, K or leading
// dimensions not multiples of 16, unaligned operands, GPUs before sm_89): 16 x 16 tiles of C,
// operands decoded to float in shared memory, products accumulated in float.
constexpr int fp8_gemm_tile = 16;

template <class FA, class FB, class T>
__global__ void gemm_fp8_tiled_kernel(Fp8GemmParams<FA, FB, T> p) {
  __shared__ float as[fp8_gemm_tile][fp8_gemm_tile + 1], bs[fp8_gemm_tile][fp8_gemm_tile + 1];
  const auto* a = reinterpret_cast<const std::uint8_t*>(p.a);
  const auto* b = reinterpret_cast<const std::uint8_t*>(p.b);
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.y) * fp8_gemm_tile + threadIdx.y;
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * fp8_gemm_tile + threadIdx.x;
  float acc = 0.0f;
  for (std::int64_t k0 = 0; k0 < p.k; k0 += fp8_gemm_tile) {
    // as[i][q] = op(A)(row i of the tile, k0 + q); bs[q][j] = op(B)(k0 + q, col j of the tile).
    {
      const std::int64_t q = k0 + threadIdx.x;
      float v = 0.0f;
      if (row < p.m && q < p.k)
        v = fp8_decode_device<FA::format>(p.trans_a ? a[q * p.lda + row] : a[row * p.lda + q]);
      as[threadIdx.y][threadIdx.x] = v;
    }
    {
      const std::int64_t q = k0 + threadIdx.y;
      float v = 0.0f;
      if (col < p.n && q < p.k)
        v = fp8_decode_device<FB::format>(p.trans_b ? b[col * p.ldb + q] : b[q * p.ldb + col]);
      bs[threadIdx.y][threadIdx.x] = v;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < fp8_gemm_tile; ++q) acc += as[threadIdx.y][q] * bs[q][threadIdx.x];
    __syncthreads();
  }
  if (row < p.m && col < p.n) {
    float v = (*p.a_scale_inv * *p.b_scale_inv) * acc;
    T& c = p.c[row * p.ldc + col];
    if (p.beta != 0.0)
      v += static_cast<float>(p.beta) * scalar_cast<float>(p.c_in ? p.c_in[row * p.ldc + col] : c);
    if (p.bias) v += scalar_cast<float>(p.bias[col]);
    c = scalar_cast<T>(v);
  }
}

// How many fp8 GEMMs cuBLASLt has run in this process (the tests check that the layouts meant for
// it do reach it rather than the tiled kernel).
inline std::uint64_t& lt_gemm_fp8_runs() {
  static std::uint64_t runs = 0;
  return runs;
}
// How many fp8 GEMMs ran on the tiled kernel instead (programs report it: the tiled kernel is
// far slower than the tensor cores).
inline std::uint64_t& tiled_gemm_fp8_runs() {
  static std::uint64_t runs = 0;
  return runs;
}

// cuBLASLt's fp8 GEMM: row-major C = A B^T is column-major C^T = B A^T, so our B is cuBLASLt's A
// (transposed: the "TN" layout its fp8 kernels require) and our A its B. D = alpha * scale_A *
// scale_B * (A B) + beta * C, with cuBLASLt's scale_A our b_scale_inv and scale_B our
// a_scale_inv, both read on the device. Returns false (nothing launched) when cuBLASLt has no
// fp8 algorithm for the problem.
template <class FA, class FB, class T>
bool lt_gemm_fp8(const Fp8GemmParams<FA, FB, T>& p) {
  if (p.trans_a || !p.trans_b) return false;
  if (p.k % 16 != 0 || p.lda % 16 != 0 || p.ldb % 16 != 0) return false;
  const T* c_in = p.c_in ? p.c_in : p.c;  // cuBLASLt's C; p.c its D
  if (!map_aligned(p.a) || !map_aligned(p.b) || !map_aligned(p.c) || !map_aligned(c_in))
    return false;
  if ((static_cast<std::uint64_t>(p.ldc) * sizeof(T)) % 16 != 0) return false;
  // cuBLASLt's fp8 kernels take a bias of type bf16 (for bf16 and float D alike): a float bias is
  // added after.
  const bool fuse_bias = std::is_same_v<T, bf16> && p.bias && map_aligned(p.bias);
  const std::array<std::uint32_t, 3> align = {
      operand_alignment(p.a, p.lda, 0, 1, 1), operand_alignment(p.b, p.ldb, 0, 1, 1),
      std::min(operand_alignment(p.c, p.ldc, 0, 1, sizeof(T)),
               operand_alignment(c_in, p.ldc, 0, 1, sizeof(T)))};
  constexpr cudaDataType_t type_a = cuda_fp8_type<FA::format>(),
                           type_b = cuda_fp8_type<FB::format>();
  constexpr cudaDataType_t type_c = cuda_data_type<T>();
  const bool autotune = gemm_autotune();
  // The fp8 operand types lead the key, so no fp8 plan can match a bf16/fp32 one (whose first
  // field is their common type).
  GemmPlanKey key;
  key.v = {static_cast<std::int64_t>(type_a),
           static_cast<std::int64_t>(type_b),
           static_cast<std::int64_t>(type_c),
           1,  // trans_b
           p.m,
           p.n,
           p.k,
           p.lda,
           p.ldb,
           p.ldc,
           0,
           0,
           p.fast_accum,
           1,  // batch
           fuse_bias,
           align[0],
           align[1],
           align[2],
           -1,  // no epilogue beyond the bias
           autotune};

  const void* a_scale = p.b_scale_inv;  // cuBLASLt's A is our B
  const void* b_scale = p.a_scale_inv;
  auto& cache = GemmPlanCache::instance();
  std::lock_guard<std::mutex> lock(cache.mutex());
  GemmPlan* plan = cache.find(key);
  if (!plan) {
    GemmPlan made;
    FATHOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&made.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(made.desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<std::int32_t>(CUBLAS_OP_T));
    set_desc(made.desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<std::int32_t>(CUBLAS_OP_N));
    set_desc(made.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
    set_desc(made.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
    set_desc(made.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, static_cast<std::int8_t>(p.fast_accum));
    if (fuse_bias) {
      set_desc(made.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
               static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_BIAS));
      const void* bias = p.bias;
      set_desc(made.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
      set_desc(made.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(type_c));
    }
    made.first = make_layout(type_b, p.k, p.n, p.ldb, 1, 0);   // our B (N, K) row-major
    made.second = make_layout(type_a, p.k, p.m, p.lda, 1, 0);  // our A (M, K) row-major
    made.out = make_layout(type_c, p.n, p.m, p.ldc, 1, 0);
    // Autotuning's candidates write where the real run will (candidate_output: when it overwrites
    // C whole and C has no padding), else to a scratch C (the real one may be accumulated into),
    // with the real operands, scales and bias, which they only read.
    auto make_run = [&] {
      CandidateOutput<T> c =
          candidate_output(p.c, (p.m - 1) * p.ldc + p.n, p.m * p.n,
                           /*overwritten=*/p.beta == 0.0 || (p.c_in && p.c_in != p.c));
      std::vector<ScratchOutput> outputs{c.written()};
      return autotune_run(
          [&made, &p, c = std::move(c)](const cublasLtMatmulAlgo_t& algo, float beta) {
            return lt_matmul(made, algo, 1.0f, p.b, p.a, beta, c.data, c.data);
          },
          std::move(outputs), sizeof(T));
    };
    choose_algorithm(made, align, /*invalid_is_unsupported=*/true, autotune, make_run);
    plan = &cache.insert(key, made);
  }
  if (!plan->usable) return false;

  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
  if (fuse_bias) {
    const void* bias = p.bias;
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  const cublasStatus_t status =
      lt_matmul(*plan, plan->algo, 1.0f, p.b, p.a, static_cast<float>(p.beta), c_in, p.c);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->usable = false;  // remembered: this problem takes the tiled kernel from now on
    return false;
  }
  FATHOM_CUBLAS_CHECK(status);
  ++lt_gemm_fp8_runs();
  if (p.bias && !fuse_bias)
    launch_gemm_scale_add_bias(
        GemmParams<T>{.c = p.c, .m = p.m, .n = p.n, .ldc = p.ldc, .stride_c = p.m * p.ldc}, 1.0,
        p.bias);
  return true;
}

}  // namespace detail

template <class T>
void amax(Cuda, const AmaxParams<T>& p) {
  FATHOM_CHECK(p.n >= 0 && p.out != nullptr, "amax: expected n >= 0 and an output, got n " << p.n);
  FATHOM_CUDA_CHECK(cudaMemsetAsync(p.out, 0, sizeof(float), cuda::stream()));
  if (p.n == 0) return;
  constexpr int N = detail::map_width<T>();
  const std::int64_t work = (p.n + N - 1) / N;
  const int blocks = static_cast<int>(
      std::clamp<std::int64_t>((work + detail::fp8_threads - 1) / detail::fp8_threads, 1, 1024));
  detail::amax_kernel<T><<<blocks, detail::fp8_threads, 0, cuda::stream()>>>(
      p.x, p.n, reinterpret_cast<std::uint32_t*>(p.out));
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T, Fp8Scalar F>
void quantize_fp8(Cuda, const QuantizeFp8Params<T, F>& p) {
  detail::check_quantize_fp8(p, "quantize_fp8");
  detail::launch_quantize_fp8(p, detail::ReadSource<T>{p.x, p.cols},
                              detail::quantize_fp8_wide_fits(p, p.cols, {p.x}));
}

namespace detail {

// f(source) with the SwigluSource of s's direction.
template <class T, class Fn>
void with_swiglu_source(const SwigluFp8Source<T>& s, Fn&& f) {
  if (s.backward)
    f(SwigluSource<T, true>{s});
  else
    f(SwigluSource<T, false>{s});
}

// Whether a pass over s's values (shaped as p) can take the wide kernel: its reads are gu, and dh
// in the backward.
template <class T, class F>
bool swiglu_wide_fits(const QuantizeFp8Params<T, F>& p, const SwigluFp8Source<T>& s) {
  return s.backward ? quantize_fp8_wide_fits(p, s.f, {s.gu, s.dh})
                    : quantize_fp8_wide_fits(p, s.f, {s.gu});
}

}  // namespace detail

template <class T>
void amax_swiglu(Cuda, const SwigluFp8Source<T>& s, std::int64_t rows, float* out) {
  detail::check_swiglu_fp8(s, rows, s.out_cols(), "amax_swiglu");
  FATHOM_CHECK(out != nullptr, "amax_swiglu: out is null");
  // The wide kernel's condition on the quantize pass's reads (no outputs here).
  const QuantizeFp8Params<T, fp8_e4m3> shape{.rows = rows, .cols = s.out_cols()};
  const bool wide = detail::swiglu_wide_fits(shape, s);
  detail::with_swiglu_source(
      s, [&](const auto& src) { detail::launch_amax_source(src, rows, s.out_cols(), wide, out); });
}

template <class T, Fp8Scalar F>
void quantize_fp8_swiglu(Cuda, const QuantizeFp8Params<T, F>& p, const SwigluFp8Source<T>& s) {
  detail::check_quantize_fp8(p, "quantize_fp8_swiglu", /*reads_x=*/false);
  detail::check_swiglu_fp8(s, p.rows, p.cols, "quantize_fp8_swiglu");
  FATHOM_CHECK(p.x == nullptr, "quantize_fp8_swiglu: x must be null (the values come from gu)");
  const bool wide = detail::swiglu_wide_fits(p, s);
  detail::with_swiglu_source(s,
                             [&](const auto& src) { detail::launch_quantize_fp8(p, src, wide); });
}

template <Fp8Scalar F, class T>
void dequantize_fp8(Cuda, const DequantizeFp8Params<F, T>& p) {
  FATHOM_CHECK(p.n >= 0 && p.scale_inv != nullptr,
               "dequantize_fp8: expected n >= 0 and a scale, got n " << p.n);
  if (p.n == 0) return;
  const int blocks = static_cast<int>(std::clamp<std::int64_t>(
      (p.n + detail::fp8_threads - 1) / detail::fp8_threads, 1, detail::map_max_blocks));
  detail::dequantize_fp8_kernel<F, T><<<blocks, detail::fp8_threads, 0, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <Fp8Scalar FA, Fp8Scalar FB, class T>
void gemm_fp8(Cuda, const Fp8GemmParams<FA, FB, T>& params) {
  const auto p = detail::resolve_gemm_fp8(params);
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // C = beta * C + bias (beta * c_in + bias with c_in)
    detail::launch_gemm_scale_add_bias(
        GemmParams<T>{.c = p.c, .m = p.m, .n = p.n, .ldc = p.ldc, .stride_c = p.m * p.ldc}, p.beta,
        p.bias, p.c_in);
    return;
  }
  if (detail::lt_gemm_fp8(p)) return;
  const std::int64_t tile = detail::fp8_gemm_tile;
  FATHOM_CHECK((p.m + tile - 1) / tile <= 65535 && (p.n + tile - 1) / tile <= INT_MAX,
               "gemm_fp8: M = " << p.m << " is too large for the tiled kernel");
  const dim3 grid(static_cast<unsigned>((p.n + tile - 1) / tile),
                  static_cast<unsigned>((p.m + tile - 1) / tile));
  ++detail::tiled_gemm_fp8_runs();
  detail::gemm_fp8_tiled_kernel<FA, FB, T>
      <<<grid, dim3(detail::fp8_gemm_tile, detail::fp8_gemm_tile), 0, cuda::stream()>>>(p);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fathom::kernels
