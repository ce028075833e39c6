// CUDA RMSNorm and LayerNorm, forward and backward, with the output scale folded in.
//
// One warp per row: the row sums are warp shuffles (no block-wide synchronization), and a block
// keeps several rows in flight. Two kernels for each direction, picked at launch:
// - the row held in registers, when every row starts 16-byte aligned (C * sizeof(T) a multiple of
//   16) and fits (C <= 4096 forward, 1024 backward, in bf16): each lane loads all its 16-byte packs
//   of the row (x; x, dy and dx for the backward) before it uses any, so the row's loads are in
//   flight together and each input is read from memory once.
// - the row walked a pack at a time for every other shape (16-byte packs when aligned, one
//   element at a time otherwise), each pass over the row reading it again (from the cache).
// The backward runs as many blocks as the GPU holds at once, warps walking rows; the weight/bias
// gradients are summed per warp (in registers, or in shared memory when walking; fp32 for bf16),
// per block in warp order, written out as per-block partials and added up column by column in a
// fixed order by a second kernel: no atomics, so results are the same run to run on a given GPU.
// Both kernels do the same float operations in the same order: on the same grid they give the
// same bits.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/norm.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/cuda/rows.cuh"
#include "fathom/kernels/norm.hpp"

namespace fathom::kernels {

namespace detail {

constexpr int norm_warps = 4;  // rows in flight per block of the forward (one warp each)
constexpr int norm_backward_max_warps = 4;

// What the RMSNorm and LayerNorm kernels share (Layer selects the mean subtraction and the bias).
template <class T>
struct NormForwardArgs {
  const T* x;        // (N, C)
  const T* w;        // (C)
  const T* b;        // (C) or nullptr
  T* y;              // (N, C)
  accum_t<T>* mean;  // (N) or nullptr
  accum_t<T>* rstd;  // (N) or nullptr
  std::int64_t rows, cols;
  accum_t<T> eps, scale;
};

template <class T>
struct NormBackwardArgs {
  const T* dy;             // (N, C)
  const T* x;              // (N, C)
  const T* w;              // (C)
  const accum_t<T>* mean;  // (N) or nullptr (RMSNorm)
  const accum_t<T>* rstd;  // (N)
  T* dx;                   // (N, C) or nullptr
  std::int64_t rows, cols;
  accum_t<T> scale;
  bool accumulate_dx;
  accum_t<T>* partial;  // (blocks, planes, C) per-block dw (and db) sums, or nullptr
  int planes;           // 1: dw; 2: dw and db
};

// The arithmetic of both paths, one function per formula. Each product is either rounded on its
// own (norm_mul) or fused into an add (norm_fma), as written here: left to the compiler, which
// products fuse would depend on where each kernel keeps its values, and the two paths would round
// differently. The choices are the ones the compiler made for the walking kernels in bf16 before
// they were spelled out (hence RMSNorm's dx rounds xhat * mean(g * xhat) and LayerNorm's does not).
__device__ inline float norm_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double norm_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float norm_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ inline double norm_fma(double a, double b, double c) { return __fma_rn(a, b, c); }

template <class A>
__device__ inline A norm_xhat(A x, A mean, A rstd) {
  return norm_mul(x - mean, rstd);
}
// sum_sq + (x - mean)^2: the variance around the mean, exact even when |mean| >> std.
template <class A>
__device__ inline A norm_add_square(A sum_sq, A x, A mean) {
  return norm_fma(x - mean, x - mean, sum_sq);
}
// 1 / sqrt(sum_sq / C + eps) from the row's sum of squares.
template <class A>
__device__ inline A norm_rstd(A sum_sq, A inv_cols, A eps) {
  return A(1) / row_sqrt(norm_fma(sum_sq, inv_cols, eps));
}
// y = (w * xhat + b) * scale, without and with a bias.
template <class A>
__device__ inline A norm_y(A w, A xhat, A scale) {
  return norm_mul(norm_mul(w, xhat), scale);
}
template <class A>
__device__ inline A norm_y(A w, A xhat, A b, A scale) {
  return norm_mul(norm_fma(w, xhat, b), scale);
}
// Adds g = dy * w * scale and g * xhat to the row sums the backward needs.
template <class A>
__device__ inline void norm_add_grad(RowPair<A>& part, A dy, A w, A scale, A xhat) {
  const A g = norm_mul(norm_mul(dy, w), scale);
  part.a += g;
  part.b = norm_fma(g, xhat, part.b);
}
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w * scale; mean(g) = 0 for RMSNorm.
template <bool Layer, class A>
__device__ inline A norm_dx(A dy, A w, A scale, A xhat, A mean_g, A mean_gx, A rstd) {
  if constexpr (Layer) {
    return norm_mul(rstd, norm_fma(-xhat, mean_gx, norm_fma(norm_mul(dy, w), scale, -mean_g)));
  } else {
    return norm_mul(rstd, norm_fma(norm_mul(dy, w), scale, -norm_mul(xhat, mean_gx)));
  }
}

// One warp per row (threadIdx.y picks the row of the block): warp shuffles reduce the row, no
// block-wide synchronization, norm_warps rows in flight per block. The row is read once from
// memory; the second (and third) pass hit the cache.
template <class T, int N, bool Layer>
__global__ void __launch_bounds__(32 * norm_warps) norm_forward_kernel(NormForwardArgs<T> a) {
  using A = accum_t<T>;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * norm_warps + threadIdx.y;
  if (row >= a.rows) return;
  const int lane = static_cast<int>(threadIdx.x);
  const T* x = a.x + row * a.cols;  // (C)
  T* y = a.y + row * a.cols;        // (C)
  const A inv_cols = A(1) / static_cast<A>(a.cols);
  A mean = 0;
  if constexpr (Layer) {
    A sum = 0;
    for_each_row_chunk<N>(
        x, a.cols,
        [&](std::int64_t c, auto width) {
          constexpr int W = decltype(width)::value;
          A v[W];
          row_load<W>(x + c, v);
#pragma unroll
          for (int j = 0; j < W; ++j) sum += v[j];
        },
        lane, 32);
    mean = norm_mul(row_warp_sum(sum), inv_cols);
  }
  A sum_sq = 0;
  for_each_row_chunk<N>(
      x, a.cols,
      [&](std::int64_t c, auto width) {
        constexpr int W = decltype(width)::value;
        A v[W];
        row_load<W>(x + c, v);
#pragma unroll
        for (int j = 0; j < W; ++j) sum_sq = norm_add_square(sum_sq, v[j], mean);
      },
      lane, 32);
  const A rstd = norm_rstd(row_warp_sum(sum_sq), inv_cols, a.eps);
  if (lane == 0) {
    if (a.rstd) a.rstd[row] = rstd;
    if (Layer && a.mean) a.mean[row] = mean;
  }
  for_each_row_chunk<N>(
      x, a.cols,
      [&](std::int64_t c, auto width) {
        constexpr int W = decltype(width)::value;
        A v[W], g[W], out[W];
        row_load<W>(x + c, v);
        row_load<W>(a.w + c, g);
        if (Layer && a.b) {
          A bias[W];
          row_load<W>(a.b + c, bias);
#pragma unroll
          for (int j = 0; j < W; ++j)
            out[j] = norm_y(g[j], norm_xhat(v[j], mean, rstd), bias[j], a.scale);
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) out[j] = norm_y(g[j], norm_xhat(v[j], mean, rstd), a.scale);
        }
        round_store<W>(y + c, out);
      },
      lane, 32);
}

// Rows held in registers: a lane holds up to K packs of N columns of a row, pack k being columns
// (lane + 32 k) * N onwards, the columns for_each_row_chunk deals a lane in a 16-byte aligned row.
// The kernels are compiled for a few K each; a launch takes the smallest that holds the row.
template <int... Ks>
struct NormLanePacks {};
// C <= 4096 in bf16, 2048 in fp32.
using NormForwardLanePacks = NormLanePacks<2, 4, 8, 16>;
// C <= 1024 in bf16, 512 in fp32: with more, x, dy, dx and the dw and db sums spill out of the 255
// registers. 3 for C = 768, which 4 would hold with a quarter of its registers unused.
using NormBackwardLanePacks = NormLanePacks<2, 3, 4>;

// Calls f(k, col) for each of the lane's packs that lies in a row of `packs` packs (col its first
// column).
template <int N, int K, class F>
__device__ inline void for_each_lane_pack(int lane, int packs, F&& f) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int p = lane + 32 * k;
    if (p < packs) f(k, static_cast<std::int64_t>(p) * N);
  }
}

// A lane's packs of one row (as loaded: a lane past the row's end leaves its last ones unset).
template <class T, int N, int K>
struct NormLaneRow {
  WordPack<T, N> pack[K];

  // Every load is issued before any value is used: the row's loads are in flight together.
  __device__ void load(const T* row, int lane, int packs) {
    for_each_lane_pack<N, K>(lane, packs,
                             [&](int k, std::int64_t c) { pack[k] = word_load<N>(row + c); });
  }
  __device__ accum_t<T> operator()(int k, int j) const {
    return pack[k].template get<accum_t<T>>(j);
  }
};

// The forward with the row in registers: the same float operations in the same order as
// norm_forward_kernel, the row read from memory once.
template <class T, int N, int K, bool Layer>
__global__ void __launch_bounds__(32 * norm_warps)
    norm_forward_resident_kernel(NormForwardArgs<T> a) {
  using A = accum_t<T>;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * norm_warps + threadIdx.y;
  if (row >= a.rows) return;
  const int lane = static_cast<int>(threadIdx.x);
  const int packs = static_cast<int>(a.cols / N);
  const A inv_cols = A(1) / static_cast<A>(a.cols);
  NormLaneRow<T, N, K> x;  // (C), this lane's columns
  x.load(a.x + row * a.cols, lane, packs);
  A mean = 0;
  if constexpr (Layer) {
    A sum = 0;
    for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t) {
#pragma unroll
      for (int j = 0; j < N; ++j) sum += x(k, j);
    });
    mean = norm_mul(row_warp_sum(sum), inv_cols);
  }
  A sum_sq = 0;
  for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t) {
#pragma unroll
    for (int j = 0; j < N; ++j) sum_sq = norm_add_square(sum_sq, x(k, j), mean);
  });
  const A rstd = norm_rstd(row_warp_sum(sum_sq), inv_cols, a.eps);
  if (lane == 0) {
    if (a.rstd) a.rstd[row] = rstd;
    if (Layer && a.mean) a.mean[row] = mean;
  }
  T* y = a.y + row * a.cols;  // (C)
  for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t c) {
    A g[N], out[N];
    row_load<N>(a.w + c, g);
    if (Layer && a.b) {
      A bias[N];
      row_load<N>(a.b + c, bias);
#pragma unroll
      for (int j = 0; j < N; ++j)
        out[j] = norm_y(g[j], norm_xhat(x(k, j), mean, rstd), bias[j], a.scale);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) out[j] = norm_y(g[j], norm_xhat(x(k, j), mean, rstd), a.scale);
    }
    round_store<N>(y + c, out);
  });
}

// Where column-plane element i of a warp's weight-gradient sums lives in shared memory: one word of
// padding after every 32 keeps the lanes of a warp, each owning a pack of N consecutive columns,
// on 32 different banks (unpadded, packs of 8 would put 8 lanes on every bank).
__device__ __host__ inline std::int64_t norm_sum_slot(std::int64_t i) { return i + i / 32; }
__device__ __host__ inline std::int64_t norm_sum_slice(std::int64_t plane_size) {
  return norm_sum_slot(plane_size - 1) + 1;
}

// The block's partial row of dw (and db) sums: the warps' slices of `all` added in warp order.
template <class T>
__device__ inline void norm_block_partial(const accum_t<T>* all, const NormBackwardArgs<T>& a,
                                          std::int64_t slice) {
  using A = accum_t<T>;
  __syncthreads();
  const std::int64_t plane_size = a.planes * a.cols;
  const int warps = static_cast<int>(blockDim.y);
  const int tid = static_cast<int>(threadIdx.y * 32 + threadIdx.x), threads = warps * 32;
  A* out = a.partial + static_cast<std::int64_t>(blockIdx.x) * plane_size;
  for (std::int64_t c = tid; c < plane_size; c += threads) {
    A total = 0;
    for (int k = 0; k < warps; ++k) total += all[k * slice + norm_sum_slot(c)];
    out[c] = total;
  }
}

// One warp per row too, warps striding over the rows; blockDim.y warps per block. Each warp sums
// dy * xhat (and dy) over its rows into its own shared-memory slice (the lane owns the same
// columns in every row, so no two threads touch one element); the block then adds its slices in
// warp order and writes one partial row.
template <class T, int N, bool Layer>
__global__ void __launch_bounds__(32 * norm_backward_max_warps)
    norm_backward_kernel(NormBackwardArgs<T> a) {
  using A = accum_t<T>;
  extern __shared__ unsigned char norm_shared[];
  const std::int64_t C = a.cols, plane_size = a.planes * C;
  const int lane = static_cast<int>(threadIdx.x), warp = static_cast<int>(threadIdx.y);
  const int warps = static_cast<int>(blockDim.y);
  const std::int64_t slice = norm_sum_slice(plane_size);
  A* sums =
      reinterpret_cast<A*>(norm_shared) + warp * slice;  // (planes, C), padded: this warp's sums
  if (a.partial) {
    for (std::int64_t c = lane; c < slice; c += 32) sums[c] = 0;
    __syncwarp();  // zeroed by other lanes than the ones that own the columns below
  }
  const A inv_cols = A(1) / static_cast<A>(C);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * warps;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * warps + warp; row < a.rows;
       row += stride) {
    const T* x = a.x + row * C;    // (C)
    const T* dy = a.dy + row * C;  // (C)
    const A mean = Layer ? a.mean[row] : A(0), rstd = a.rstd[row];
    RowPair<A> part{0, 0};  // sum g, sum g * xhat, g = dy * w * scale
    for_each_row_chunk<N>(
        x, C,
        [&](std::int64_t c, auto width) {
          constexpr int W = decltype(width)::value;
          A v[W], d[W], g[W];
          row_load<W>(x + c, v);
          row_load<W>(dy + c, d);
          row_load<W>(a.w + c, g);
#pragma unroll
          for (int j = 0; j < W; ++j)
            norm_add_grad(part, d[j], g[j], a.scale, norm_xhat(v[j], mean, rstd));
        },
        lane, 32);
    const RowPair<A> total = row_warp_sum(part);
    const A mean_g = Layer ? norm_mul(total.a, inv_cols) : A(0);
    const A mean_gx = norm_mul(total.b, inv_cols);
    for_each_row_chunk<N>(
        x, C,
        [&](std::int64_t c, auto width) {
          constexpr int W = decltype(width)::value;
          A v[W], d[W], g[W];
          row_load<W>(x + c, v);
          row_load<W>(dy + c, d);
          row_load<W>(a.w + c, g);
          A xhat[W];
#pragma unroll
          for (int j = 0; j < W; ++j) xhat[j] = norm_xhat(v[j], mean, rstd);
          if (a.dx) {
            A out[W];
#pragma unroll
            for (int j = 0; j < W; ++j)
              out[j] = norm_dx<Layer>(d[j], g[j], a.scale, xhat[j], mean_g, mean_gx, rstd);
            if (a.accumulate_dx) {
              A old[W];
              row_load<W>(a.dx + row * C + c, old);
#pragma unroll
              for (int j = 0; j < W; ++j) out[j] += old[j];
            }
            round_store<W>(a.dx + row * C + c, out);
          }
          if (a.partial) {
#pragma unroll
            for (int j = 0; j < W; ++j) {
              A& dw = sums[norm_sum_slot(c + j)];
              dw = norm_fma(d[j], xhat[j], dw);
              if (a.planes == 2) sums[norm_sum_slot(C + c + j)] += d[j];
            }
          }
        },
        lane, 32);
  }
  if (a.partial) norm_block_partial(reinterpret_cast<const A*>(norm_shared), a, slice);
}

// The backward with the rows in registers: the same float operations in the same order as
// norm_backward_kernel, each row read from memory once. A lane keeps its dw (and db) sums over the
// warp's rows in registers and writes them to the warp's shared-memory slice once, at the end.
template <class T, int N, int K, bool Layer>
__global__ void __launch_bounds__(32 * norm_backward_max_warps)
    norm_backward_resident_kernel(NormBackwardArgs<T> a) {
  using A = accum_t<T>;
  extern __shared__ unsigned char norm_shared[];
  const std::int64_t C = a.cols;
  const int lane = static_cast<int>(threadIdx.x), warp = static_cast<int>(threadIdx.y);
  const int warps = static_cast<int>(blockDim.y);
  const int packs = static_cast<int>(C / N);
  const A inv_cols = A(1) / static_cast<A>(C);
  A dw[K][N] = {}, db[K][N] = {};  // sums over the warp's rows, this lane's columns
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * warps;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * warps + warp; row < a.rows;
       row += stride) {
    NormLaneRow<T, N, K> x, dy, old_dx;  // (C), this lane's columns
    x.load(a.x + row * C, lane, packs);
    dy.load(a.dy + row * C, lane, packs);
    if (a.dx && a.accumulate_dx) old_dx.load(a.dx + row * C, lane, packs);
    const A mean = Layer ? a.mean[row] : A(0), rstd = a.rstd[row];
    RowPair<A> part{0, 0};  // sum g, sum g * xhat, g = dy * w * scale
    for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t c) {
      A g[N];
      row_load<N>(a.w + c, g);
#pragma unroll
      for (int j = 0; j < N; ++j)
        norm_add_grad(part, dy(k, j), g[j], a.scale, norm_xhat(x(k, j), mean, rstd));
    });
    const RowPair<A> total = row_warp_sum(part);
    const A mean_g = Layer ? norm_mul(total.a, inv_cols) : A(0);
    const A mean_gx = norm_mul(total.b, inv_cols);
    for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t c) {
      A xhat[N];
#pragma unroll
      for (int j = 0; j < N; ++j) xhat[j] = norm_xhat(x(k, j), mean, rstd);
      if (a.dx) {
        A g[N], out[N];
        row_load<N>(a.w + c, g);
#pragma unroll
        for (int j = 0; j < N; ++j)
          out[j] = norm_dx<Layer>(dy(k, j), g[j], a.scale, xhat[j], mean_g, mean_gx, rstd);
        if (a.accumulate_dx) {
#pragma unroll
          for (int j = 0; j < N; ++j) out[j] += old_dx(k, j);
        }
        round_store<N>(a.dx + row * C + c, out);
      }
      if (a.partial) {
#pragma unroll
        for (int j = 0; j < N; ++j) {
          dw[k][j] = norm_fma(dy(k, j), xhat[j], dw[k][j]);
          if (Layer && a.planes == 2) db[k][j] += dy(k, j);
        }
      }
    });
  }
  if (a.partial) {
    const std::int64_t slice = norm_sum_slice(a.planes * C);
    A* sums = reinterpret_cast<A*>(norm_shared) + warp * slice;  // (planes, C), padded
    for_each_lane_pack<N, K>(lane, packs, [&](int k, std::int64_t c) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        sums[norm_sum_slot(c + j)] = dw[k][j];
        if (Layer && a.planes == 2) sums[norm_sum_slot(C + c + j)] = db[k][j];
      }
    });
    norm_block_partial(reinterpret_cast<const A*>(norm_shared), a, slice);
  }
}

// dw[c] += scale * sum over blocks of partial[block, 0, c] (and db from plane 1), in a fixed order
// (sum_partial_rows): 32 columns a block.
template <class T>
__global__ void __launch_bounds__(32 * kPartialSlices)
    norm_param_grad_kernel(const accum_t<T>* partial, int blocks, int planes, std::int64_t cols,
                           T* dw, T* db, accum_t<T> scale) {
  using A = accum_t<T>;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  for (int plane = 0; plane < planes; ++plane) {
    const A total = sum_partial_rows(partial + plane * cols, blocks, planes * cols, c, c < cols);
    T* out = plane == 0 ? dw : db;
    if (threadIdx.y == 0 && c < cols && out)
      out[c] = scalar_cast<T>(scalar_cast<A>(out[c]) + scale * total);
  }
}

// 16-byte packs when every row of C elements starts 16-byte aligned given aligned base pointers.
template <class T>
bool norm_rows_packable(std::int64_t cols, std::initializer_list<const void*> pointers) {
  if (map_width<T>() == 1 || (cols * static_cast<std::int64_t>(sizeof(T))) % 16 != 0) return false;
  for (const void* p : pointers) {
    if (p && !map_aligned(p)) return false;
  }
  return true;
}

// Which kernels a launch may use. generic: the kernels that walk the rows, even where rows fit in
// registers (the backward on the grid the register kernel would get): tests compare the two.
enum class NormPath { any, generic };

// K for the register kernels: the smallest of Ks (ascending) that holds rows of `cols` elements, 0
// when none does. For cols a multiple of map_width<T>() (norm_rows_packable).
template <class T, int... Ks>
int norm_lane_packs(std::int64_t cols, NormLanePacks<Ks...>) {
  const std::int64_t packs = cols / map_width<T>();
  for (int k : {Ks...}) {
    if (packs <= 32 * k) return k;
  }
  return 0;
}

// f(std::integral_constant<int, K>{}) for K = lane_packs, one of Ks.
template <int First, int... Ks, class F>
auto with_lane_packs(int lane_packs, NormLanePacks<First, Ks...>, F&& f) {
  auto result = f(std::integral_constant<int, First>{});
  (
      [&] {
        if (lane_packs == Ks) result = f(std::integral_constant<int, Ks>{});
      }(),
      ...);
  return result;
}

template <class T, bool Layer>
void launch_norm_forward(const NormForwardArgs<T>& a, NormPath path = NormPath::any) {
  if (a.rows == 0 || a.cols == 0) return;
  const std::int64_t blocks = (a.rows + norm_warps - 1) / norm_warps;
  FATHOM_CHECK(blocks <= 0x7fffffff, (Layer ? "layer_norm" : "rms_norm")
                                         << ": too many rows (" << a.rows << ")");
  constexpr int N = map_width<T>();
  const dim3 threads(32, norm_warps);
  const auto grid = static_cast<unsigned>(blocks);
  const bool packed = norm_rows_packable<T>(a.cols, {a.x, a.w, a.b, a.y});
  const int lane_packs =
      packed && path == NormPath::any ? norm_lane_packs<T>(a.cols, NormForwardLanePacks{}) : 0;
  if (lane_packs > 0) {
    auto kernel = with_lane_packs(lane_packs, NormForwardLanePacks{}, [](auto k) {
      return norm_forward_resident_kernel<T, N, decltype(k)::value, Layer>;
    });
    kernel<<<grid, threads, 0, cuda::stream()>>>(a);
  } else if (packed) {
    norm_forward_kernel<T, N, Layer><<<grid, threads, 0, cuda::stream()>>>(a);
  } else {
    norm_forward_kernel<T, 1, Layer><<<grid, threads, 0, cuda::stream()>>>(a);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool Layer>
void launch_norm_backward(NormBackwardArgs<T> a, T* dw, T* db, NormPath path = NormPath::any) {
  using A = accum_t<T>;
  if (a.rows == 0 || a.cols == 0) return;
  const char* name = Layer ? "layer_norm_backward" : "rms_norm_backward";
  constexpr int N = map_width<T>();
  const bool packed = norm_rows_packable<T>(a.cols, {a.dy, a.x, a.w, a.dx});
  const int lane_packs = packed ? norm_lane_packs<T>(a.cols, NormBackwardLanePacks{}) : 0;
  // The kernel that walks the rows, and the one that holds them in registers where they fit.
  auto walk = packed ? norm_backward_kernel<T, N, Layer> : norm_backward_kernel<T, 1, Layer>;
  auto hold = walk;
  if (lane_packs > 0) {
    hold = with_lane_packs(lane_packs, NormBackwardLanePacks{}, [](auto k) {
      return norm_backward_resident_kernel<T, N, decltype(k)::value, Layer>;
    });
  }
  // The grid is hold's for NormPath::generic too: the blocks and warps that walk the rows fix the
  // order of the dw (and db) sums, so on one grid the two paths give the same bits.
  auto kernel = path == NormPath::generic ? walk : hold;

  a.planes = db ? 2 : 1;
  const bool params = dw || db;
  // Shared memory: one (planes, C) slice per warp. As many warps per block as fit in the default
  // 48 KiB; a single warp beyond that, with the opt-in limit.
  const std::size_t slice =
      params ? static_cast<std::size_t>(norm_sum_slice(a.planes * a.cols)) * sizeof(A) : 0;
  int warps = norm_backward_max_warps;
  while (warps > 1 && static_cast<std::size_t>(warps) * slice > 48 * 1024) --warps;
  const std::size_t shared = static_cast<std::size_t>(warps) * slice;
  int device = 0, sms = 0, shared_max = 0, per_sm = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (shared > 48 * 1024) {
    FATHOM_CUDA_CHECK(
        cudaDeviceGetAttribute(&shared_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    FATHOM_CHECK(shared <= static_cast<std::size_t>(shared_max),
                 name << ": C = " << a.cols << " needs " << shared
                      << " bytes of shared memory for the "
                      << "weight gradient, the device has " << shared_max);
    // Rows this wide never fit in registers: kernel is hold.
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared)));
  }
  // As many blocks as run at once: each warp then walks rows / (blocks * warps) rows.
  FATHOM_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, hold, 32 * warps, shared));
  const std::int64_t warps_total = static_cast<std::int64_t>(sms) * std::max(per_sm, 1) * warps;
  const int blocks = static_cast<int>((std::min(a.rows, warps_total) + warps - 1) / warps);
  // Per-block partial sums of dw (and db) in the workspace: used by this call's kernels only.
  a.partial = params ? cuda::CachingAllocator::instance().workspace_for<A>(
                           static_cast<std::size_t>(blocks * a.planes * a.cols))
                     : nullptr;
  kernel<<<blocks, dim3(32, warps), shared, cuda::stream()>>>(a);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  if (params) {
    const PartialRowsLaunch launch = partial_rows_launch(a.cols);
    norm_param_grad_kernel<T><<<launch.grid, launch.block, 0, cuda::stream()>>>(
        a.partial, blocks, a.planes, a.cols, dw, db, a.scale);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace detail

template <class T>
void rms_norm(Cuda, const RmsNormParams<T>& p) {
  using A = accum_t<T>;
  detail::launch_norm_forward<T, false>(
      detail::NormForwardArgs<T>{p.x, p.w, nullptr, p.y, nullptr, p.rstd, p.rows, p.cols,
                                 static_cast<A>(p.eps), static_cast<A>(p.out_scale)});
}

template <class T>
void rms_norm_backward(Cuda, const RmsNormBackwardParams<T>& p) {
  detail::NormBackwardArgs<T> a{p.dy,
                                p.x,
                                p.w,
                                nullptr,
                                p.rstd,
                                p.dx,
                                p.rows,
                                p.cols,
                                static_cast<accum_t<T>>(p.out_scale),
                                p.accumulate_dx,
                                nullptr,
                                1};
  detail::launch_norm_backward<T, false>(a, p.dw, nullptr);
}

template <class T>
void layer_norm(Cuda, const LayerNormParams<T>& p) {
  using A = accum_t<T>;
  detail::launch_norm_forward<T, true>(
      detail::NormForwardArgs<T>{p.x, p.w, p.b, p.y, p.mean, p.rstd, p.rows, p.cols,
                                 static_cast<A>(p.eps), static_cast<A>(p.out_scale)});
}

template <class T>
void layer_norm_backward(Cuda, const LayerNormBackwardParams<T>& p) {
  detail::NormBackwardArgs<T> a{p.dy,
                                p.x,
                                p.w,
                                p.mean,
                                p.rstd,
                                p.dx,
                                p.rows,
                                p.cols,
                                static_cast<accum_t<T>>(p.out_scale),
                                p.accumulate_dx,
                                nullptr,
                                1};
  // With db wanted but not dw, plane 0 still holds the (unused) dw sums: simpler than a third
  // layout.
  detail::launch_norm_backward<T, true>(a, p.dw, p.db);
}

}  // namespace fathom::kernels
