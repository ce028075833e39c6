// CUDA RMSNorm and LayerNorm, forward and backward, with the output scale folded in.
//
// One warp per row: the row sums are warp shuffles (no block-wide synchronization), and a block
// keeps several rows in flight. 16-byte packs when every row starts 16-byte aligned (C * sizeof(T)
// a multiple of 16), one element at a time otherwise. The backward runs as many blocks as the GPU
// holds at once, warps walking rows; the weight/bias gradients are summed per warp in shared
// memory (fp32 for bf16), per block in warp order, written out as per-block partials and added up
// column by column in a fixed order by a second kernel: no atomics, so results are the same run
// to run on a given GPU.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/norm.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>

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
    mean = row_warp_sum(sum) * inv_cols;
  }
  A sum_sq = 0;  // around the mean: exact even when |mean| >> std
  for_each_row_chunk<N>(
      x, a.cols,
      [&](std::int64_t c, auto width) {
        constexpr int W = decltype(width)::value;
        A v[W];
        row_load<W>(x + c, v);
#pragma unroll
        for (int j = 0; j < W; ++j) sum_sq += (v[j] - mean) * (v[j] - mean);
      },
      lane, 32);
  const A rstd = A(1) / row_sqrt(row_warp_sum(sum_sq) * inv_cols + a.eps);
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
#pragma unroll
        for (int j = 0; j < W; ++j) out[j] = g[j] * ((v[j] - mean) * rstd);
        if (Layer && a.b) {
          A bias[W];
          row_load<W>(a.b + c, bias);
#pragma unroll
          for (int j = 0; j < W; ++j) out[j] += bias[j];
        }
#pragma unroll
        for (int j = 0; j < W; ++j) out[j] *= a.scale;
        row_store<W>(y + c, out);
      },
      lane, 32);
}

// Where column-plane element i of a warp's weight-gradient sums lives in shared memory: one word of
// padding after every 32 keeps the lanes of a warp, each owning a pack of N consecutive columns,
// on 32 different banks (unpadded, packs of 8 would put 8 lanes on every bank).
__device__ __host__ inline std::int64_t norm_sum_slot(std::int64_t i) { return i + i / 32; }
__device__ __host__ inline std::int64_t norm_sum_slice(std::int64_t plane_size) {
  return norm_sum_slot(plane_size - 1) + 1;
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
  const int warps = static_cast<int>(blockDim.y), tid = warp * 32 + lane, threads = warps * 32;
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
          for (int j = 0; j < W; ++j) {
            const A gj = d[j] * g[j] * a.scale;
            part.a += gj;
            part.b += gj * ((v[j] - mean) * rstd);
          }
        },
        lane, 32);
    const RowPair<A> total = row_warp_sum(part);
    const A mean_g = Layer ? total.a * inv_cols : A(0), mean_gx = total.b * inv_cols;
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
          for (int j = 0; j < W; ++j) xhat[j] = (v[j] - mean) * rstd;
          if (a.dx) {
            A out[W];
#pragma unroll
            for (int j = 0; j < W; ++j)
              out[j] = rstd * (d[j] * g[j] * a.scale - mean_g - xhat[j] * mean_gx);
            if (a.accumulate_dx) {
              A old[W];
              row_load<W>(a.dx + row * C + c, old);
#pragma unroll
              for (int j = 0; j < W; ++j) out[j] += old[j];
            }
            row_store<W>(a.dx + row * C + c, out);
          }
          if (a.partial) {
#pragma unroll
            for (int j = 0; j < W; ++j) {
              sums[norm_sum_slot(c + j)] += d[j] * xhat[j];
              if (a.planes == 2) sums[norm_sum_slot(C + c + j)] += d[j];
            }
          }
        },
        lane, 32);
  }
  if (a.partial) {
    __syncthreads();
    const A* all = reinterpret_cast<const A*>(norm_shared);
    A* out = a.partial + static_cast<std::int64_t>(blockIdx.x) * plane_size;
    for (std::int64_t c = tid; c < plane_size; c += threads) {
      A total = 0;
      for (int k = 0; k < warps; ++k) total += all[k * slice + norm_sum_slot(c)];
      out[c] = total;
    }
  }
}

constexpr int norm_param_cols = 32;   // columns per block of the partial-sum reduction
constexpr int norm_param_slices = 8;  // threads per column, each summing every 8th partial

// dw[c] += scale * sum over blocks of partial[block, 0, c] (and db from plane 1), in a fixed order.
template <class T>
__global__ void norm_param_grad_kernel(const accum_t<T>* partial, int blocks, int planes,
                                       std::int64_t cols, T* dw, T* db, accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ A slice_sums[norm_param_slices][norm_param_cols];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * norm_param_cols + threadIdx.x;
  for (int plane = 0; plane < planes; ++plane) {
    A sum = 0;
    if (c < cols) {
      for (int g = threadIdx.y; g < blocks; g += norm_param_slices) {
        sum += partial[(static_cast<std::int64_t>(g) * planes + plane) * cols + c];
      }
    }
    slice_sums[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      A total = 0;
      for (int s = 0; s < norm_param_slices; ++s) total += slice_sums[s][threadIdx.x];
      T* out = plane == 0 ? dw : db;
      if (out) out[c] = scalar_cast<T>(scalar_cast<A>(out[c]) + scale * total);
    }
    __syncthreads();
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

template <class T, bool Layer>
void launch_norm_forward(const NormForwardArgs<T>& a) {
  if (a.rows == 0 || a.cols == 0) return;
  const std::int64_t blocks = (a.rows + norm_warps - 1) / norm_warps;
  FATHOM_CHECK(blocks <= 0x7fffffff, (Layer ? "layer_norm" : "rms_norm")
                                         << ": too many rows (" << a.rows << ")");
  constexpr int N = map_width<T>();
  const dim3 threads(32, norm_warps);
  const auto grid = static_cast<unsigned>(blocks);
  if (norm_rows_packable<T>(a.cols, {a.x, a.w, a.b, a.y})) {
    norm_forward_kernel<T, N, Layer><<<grid, threads, 0, cuda::stream()>>>(a);
  } else {
    norm_forward_kernel<T, 1, Layer><<<grid, threads, 0, cuda::stream()>>>(a);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool Layer>
void launch_norm_backward(NormBackwardArgs<T> a, T* dw, T* db) {
  using A = accum_t<T>;
  if (a.rows == 0 || a.cols == 0) return;
  const char* name = Layer ? "layer_norm_backward" : "rms_norm_backward";
  constexpr int N = map_width<T>();
  const bool packed = norm_rows_packable<T>(a.cols, {a.dy, a.x, a.w, a.dx});
  auto kernel = packed ? norm_backward_kernel<T, N, Layer> : norm_backward_kernel<T, 1, Layer>;

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
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared)));
  }
  FATHOM_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * warps, shared));
  // As many blocks as run at once: each warp then walks rows / (blocks * warps) rows.
  const std::int64_t warps_total = static_cast<std::int64_t>(sms) * std::max(per_sm, 1) * warps;
  const int blocks = static_cast<int>((std::min(a.rows, warps_total) + warps - 1) / warps);
  // Per-block partial sums of dw (and db) in the workspace: used by this call's kernels only.
  a.partial = params ? cuda::CachingAllocator::instance().workspace_for<A>(
                           static_cast<std::size_t>(blocks * a.planes * a.cols))
                     : nullptr;
  kernel<<<blocks, dim3(32, warps), shared, cuda::stream()>>>(a);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  if (params) {
    const dim3 threads(norm_param_cols, norm_param_slices);
    const auto grid = static_cast<unsigned>((a.cols + norm_param_cols - 1) / norm_param_cols);
    norm_param_grad_kernel<T><<<grid, threads, 0, cuda::stream()>>>(a.partial, blocks, a.planes,
                                                                    a.cols, dw, db, a.scale);
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
