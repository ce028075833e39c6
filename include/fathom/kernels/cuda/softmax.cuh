// CUDA softmax over the last dimension and the fused softmax cross-entropy, forward and backward.
//
// One block per row. Each thread keeps an online (max, sum of exp) over its share of the row and a
// CUB block reduction merges them, so the row is read once for the statistics. Rows are read in
// 16-byte packs (with single elements up to the first 16-byte boundary and for the tail, so a
// vocabulary of 50257 is packed too). Cross-entropy stores only one logsumexp per row: its gradient
// is recomputed from the logits in one read, by the backward kernel or, when the caller passes
// dlogits to the forward, in the same kernel as the loss (keeping the row in shared memory between
// its statistics and its gradient where it fits, so it is read once). The mean over rows is a
// single-block sum in a fixed order (deterministic). A target out of range cannot throw on the
// device: it makes the loss NaN (see kernels/softmax.hpp).
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/softmax.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/env.hpp"
#include "fathom/core/memory.hpp"
#include "fathom/kernels/cuda/rows.cuh"
#include "fathom/kernels/softmax.hpp"

namespace fathom::kernels {

namespace detail {

constexpr int softmax_threads = 128;
constexpr int cross_entropy_threads =
    512;  // vocabulary rows are long: more loads in flight per row
constexpr int cross_entropy_sum_threads = 512;
// 16-byte loads a thread has in flight in the forward's statistics pass (for_each_row_values).
constexpr int cross_entropy_loads_ahead = 4;

// 16-byte packs for rows whose base pointers are all 16-byte aligned (or null): rows of the same
// length then share their alignment, whatever the length.
template <class T>
bool rows_share_alignment(std::initializer_list<const void*> pointers) {
  if (map_width<T>() == 1) return false;
  for (const void* p : pointers) {
    if (p && !map_aligned(p)) return false;
  }
  return true;
}

inline unsigned row_grid(const char* op, std::int64_t rows) {
  FATHOM_CHECK(rows <= 0x7fffffff, op << ": at most 2^31 - 1 rows, got " << rows);
  return static_cast<unsigned>(rows);
}

// ----- softmax -----

template <class T, int N>
__global__ void __launch_bounds__(softmax_threads)
    softmax_forward_kernel(const T* x, T* y, std::int64_t cols) {
  using A = accum_t<T>;
  const std::int64_t row = blockIdx.x;
  const T* xr = x + row * cols;  // (C)
  T* yr = y + row * cols;        // (C)
  RowMaxSum<A> stats = RowMaxSum<A>::empty();
  for_each_row_chunk<N>(xr, cols, [&](std::int64_t c, auto width) {
    constexpr int W = decltype(width)::value;
    A v[W];
    row_load<W>(xr + c, v);
    stats.add(v);
  });
  stats = block_all_reduce<softmax_threads>(stats, RowMaxSumMerge{});
  const A inv = A(1) / stats.s;
  for_each_row_chunk<N>(xr, cols, [&](std::int64_t c, auto width) {
    constexpr int W = decltype(width)::value;
    A v[W];
    row_load<W>(xr + c, v);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = row_exp(v[j] - stats.m) * inv;
    round_store<W>(yr + c, v);
  });
}

template <class T, int N>
__global__ void __launch_bounds__(softmax_threads)
    softmax_backward_kernel(const T* y, const T* dy, T* dx, std::int64_t cols, bool accumulate) {
  using A = accum_t<T>;
  const std::int64_t offset = static_cast<std::int64_t>(blockIdx.x) * cols;
  const T* yr = y + offset;    // (C)
  const T* dyr = dy + offset;  // (C)
  T* dxr = dx + offset;        // (C)
  A dot = 0;
  for_each_row_chunk<N>(yr, cols, [&](std::int64_t c, auto width) {
    constexpr int W = decltype(width)::value;
    A p[W], g[W];
    row_load<W>(yr + c, p);
    row_load<W>(dyr + c, g);
#pragma unroll
    for (int j = 0; j < W; ++j) dot += p[j] * g[j];
  });
  dot = block_all_reduce<softmax_threads>(dot, RowPlus{});
  for_each_row_chunk<N>(yr, cols, [&](std::int64_t c, auto width) {
    constexpr int W = decltype(width)::value;
    A p[W], g[W], out[W];
    row_load<W>(yr + c, p);
    row_load<W>(dyr + c, g);
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = p[j] * (g[j] - dot);
    if (accumulate) {
      A old[W];
      row_load<W>(dxr + c, old);
#pragma unroll
      for (int j = 0; j < W; ++j) out[j] += old[j];
    }
    round_store<W>(dxr + c, out);
  });
}

// ----- cross-entropy -----

// valid_rows = number of targets != ignore_index (one block). A template, like every kernel in a
// header, so that translation units including it do not each define it.
template <int Threads>
__global__ void __launch_bounds__(Threads)
    cross_entropy_count_kernel(const std::int32_t* targets, std::int64_t rows, int ignore_index,
                               std::int32_t* valid_rows) {
  std::int32_t count = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) count += targets[r] != ignore_index;
  count = block_all_reduce<Threads>(count, RowPlus{});
  if (threadIdx.x == 0) *valid_rows = count;
}

// loss = sum(row_loss) / valid_rows, 0 when every row is ignored (one block, fixed order).
template <class A>
__global__ void __launch_bounds__(cross_entropy_sum_threads)
    cross_entropy_mean_kernel(const A* row_loss, std::int64_t rows, const std::int32_t* valid_rows,
                              A* loss) {
  A sum = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) sum += row_loss[r];
  sum = block_all_reduce<cross_entropy_sum_threads>(sum, RowPlus{});
  if (threadIdx.x == 0) {
    const std::int32_t valid = *valid_rows;
    *loss = valid ? sum / static_cast<A>(valid) : A(0);
  }
}

// g = (exp(x - lse) - onehot(target)) * scale for the W columns from c, x in g on entry. Every
// kernel computes the gradient here, so the fused forward and the backward give the same bits.
template <int W, class A>
__device__ inline void cross_entropy_grad(A (&g)[W], std::int64_t c, std::int32_t target, A lse,
                                          A scale) {
#pragma unroll
  for (int j = 0; j < W; ++j) g[j] = row_exp(g[j] - lse) * scale;
  // The target lies in one pack of the row: one test a pack, the per-column one only there.
  if (target >= c && target < c + W) {
    const int at = static_cast<int>(target - c);
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (j == at) g[j] -= scale;
  }
}

// d (+)= g over W columns: added to what d holds when accumulating, written over it otherwise.
template <int W, class T, class A>
__device__ inline void cross_entropy_store(T* d, A (&g)[W], bool accumulate) {
  if (accumulate) {
    A old[W];
    row_load<W>(d, old);
#pragma unroll
    for (int j = 0; j < W; ++j) g[j] += old[j];
  }
  round_store<W>(d, g);
}

// dlogits (+)= (exp(x - lse) - onehot(target)) * scale over one row.
template <int N, class T, class A>
__device__ inline void cross_entropy_row_grad(const T* x, T* d, std::int64_t vocab,
                                              std::int32_t target, A lse, A scale,
                                              bool accumulate) {
  for_each_row_chunk<N>(x, vocab, [&](std::int64_t c, auto width) {
    constexpr int W = decltype(width)::value;
    A g[W];
    row_load<W>(x + c, g);
    cross_entropy_grad(g, c, target, lse, scale);
    cross_entropy_store(d + c, g, accumulate);
  });
}

template <class T>
struct CrossEntropyForwardArgs {
  const T* logits;                 // (N, V)
  const std::int32_t* targets;     // (N)
  accum_t<T>* row_loss;            // (N) scratch
  accum_t<T>* lse;                 // (N) or nullptr
  const std::int32_t* valid_rows;  // ()
  T* dlogits;                      // (N, V) or nullptr
  std::int64_t vocab;
  int ignore_index;
  accum_t<T> grad_scale;
  bool accumulate;
};

// One row of a forward: its target, and its target logit, read by thread 0 before the block's
// reduction (a gradient written over the logits, dlogits == logits, overwrites the row after it).
template <class A>
struct CrossEntropyRow {
  std::int64_t row;
  std::int32_t target;
  bool ignored, in_range;
  A target_logit;

  template <class T>
  __device__ static CrossEntropyRow begin(const CrossEntropyForwardArgs<T>& a, std::int64_t row) {
    CrossEntropyRow r{row, a.targets[row], false, false, A(0)};
    r.ignored = r.target == a.ignore_index;
    r.in_range = r.target >= 0 && r.target < a.vocab;
    if (threadIdx.x == 0 && !r.ignored && r.in_range)
      r.target_logit = scalar_cast<A>(a.logits[row * a.vocab + r.target]);
    return r;
  }
  // After the reduction: thread 0 stores the row's loss (NaN for a target out of range) and
  // logsumexp; returns the logsumexp.
  template <class T>
  __device__ A finish(const CrossEntropyForwardArgs<T>& a, const RowMaxSum<A>& stats) const {
    const A lse = stats.log_sum_exp();
    if (threadIdx.x == 0) {
      A loss = 0;
      if (!ignored)
        loss = in_range ? lse - target_logit : ::cuda::std::numeric_limits<A>::quiet_NaN();
      a.row_loss[row] = loss;
      if (a.lse) a.lse[row] = lse;
    }
    return lse;
  }
  // The gradient's scale: d loss / valid rows, 0 for an ignored row.
  __device__ A scale(A grad_scale, std::int32_t valid) const {
    return ignored || valid == 0 ? A(0) : grad_scale / static_cast<A>(valid);
  }
};

template <class A, class T, int N>
__device__ inline void cross_entropy_add_pack(RowMaxSum<A>& stats, const MapPack<T, N>& pack) {
  A v[N];
  unpack(pack, v);
  stats.add(v);
}

template <class T, int N>
__global__ void __launch_bounds__(cross_entropy_threads)
    cross_entropy_forward_kernel(CrossEntropyForwardArgs<T> a) {
  using A = accum_t<T>;
  const std::int64_t row = blockIdx.x;
  const T* x = a.logits + row * a.vocab;  // (V)
  const auto r = CrossEntropyRow<A>::begin(a, row);
  RowMaxSum<A> stats = RowMaxSum<A>::empty();
  for_each_row_values<N, cross_entropy_loads_ahead, A>(x, a.vocab,
                                                       [&](const auto& v) { stats.add(v); });
  stats = block_all_reduce<cross_entropy_threads>(stats, RowMaxSumMerge{});
  const A lse = r.finish(a, stats);
  if (a.dlogits) {
    const std::int32_t valid = *a.valid_rows;
    const A scale = r.scale(a.grad_scale, valid);
    cross_entropy_row_grad<N>(x, a.dlogits + row * a.vocab, a.vocab, r.target, lse, scale,
                              a.accumulate);
  }
}

// The forward with the gradient fused in, each row kept in shared memory between its two passes:
// the statistics pass stores the packs it loads, the gradient pass reads them back, so the logits
// are read from memory once (the kernel above reads each row twice, the second time from L2 if it
// is still there). Each thread reads back only the packs it stored, so no barrier is needed
// between the two beyond the reduction's. Rows must be whole packs (vocab % N == 0) on a 16-byte
// aligned base; the packs are visited in for_each_row_values's order, so the loss, log-sum-exp and
// gradient are the same bits as the kernel above.
template <class T, int N>
__global__ void __launch_bounds__(cross_entropy_threads)
    cross_entropy_forward_shared_kernel(CrossEntropyForwardArgs<T> a) {
  using A = accum_t<T>;
  using Pack = MapPack<T, N>;
  extern __shared__ __align__(16) unsigned char cross_entropy_row_shared[];
  Pack* saved = reinterpret_cast<Pack*>(cross_entropy_row_shared);
  constexpr int Ahead = cross_entropy_loads_ahead;
  const auto r = CrossEntropyRow<A>::begin(a, blockIdx.x);
  const T* x = a.logits + r.row * a.vocab;  // (V)
  const int packs = static_cast<int>(a.vocab / N);
  const int worker = static_cast<int>(threadIdx.x), workers = static_cast<int>(blockDim.x);
  RowMaxSum<A> stats = RowMaxSum<A>::empty();
  int k = worker;
  for (; k + (Ahead - 1) * workers < packs; k += Ahead * workers) {
    Pack p[Ahead];
#pragma unroll
    for (int j = 0; j < Ahead; ++j)
      p[j] = map_load<N>(x + static_cast<std::int64_t>(k + j * workers) * N);
#pragma unroll
    for (int j = 0; j < Ahead; ++j) {
      saved[k + j * workers] = p[j];
      cross_entropy_add_pack(stats, p[j]);
    }
  }
  for (; k < packs; k += workers) {
    const Pack p = map_load<N>(x + static_cast<std::int64_t>(k) * N);
    saved[k] = p;
    cross_entropy_add_pack(stats, p);
  }
  const A lse = r.finish(a, block_all_reduce<cross_entropy_threads>(stats, RowMaxSumMerge{}));
  const A scale = r.scale(a.grad_scale, *a.valid_rows);
  T* d = a.dlogits + r.row * a.vocab;
  for (k = worker; k < packs; k += workers) {
    const std::int64_t c = static_cast<std::int64_t>(k) * N;
    A g[N];
    unpack(saved[k], g);
    cross_entropy_grad(g, c, r.target, lse, scale);
    cross_entropy_store(d + c, g, a.accumulate);
  }
}

// Rows of at most this many bytes are kept in shared memory by the fused forward (two blocks an SM
// still fit: 50304 bf16 logits are 98 KiB).
constexpr std::int64_t cross_entropy_shared_row_max_bytes = 110 * 1024;

// The longest row, in bytes, that the fused forward keeps in shared memory on this device:
// cross_entropy_shared_row_max_bytes, or less where the device's opt-in limit per block, less room
// for the block reduction's own, is lower.
inline std::int64_t cross_entropy_shared_row_limit() {
  static const std::int64_t bytes = [] {
    int device = 0, optin = 0;
    FATHOM_CUDA_CHECK(cudaGetDevice(&device));
    FATHOM_CUDA_CHECK(
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return std::min(cross_entropy_shared_row_max_bytes, std::int64_t{optin} - 2 * 1024);
  }();
  return bytes;
}

// Whether the fused forward keeps rows of `vocab` elements of T in shared memory (else it rereads
// them): rows of whole 16-byte packs on an aligned base that fit, with the form switched on.
template <class T>
bool cross_entropy_keeps_row(std::int64_t vocab, bool packed, bool shared) {
  constexpr int N = map_width<T>();
  return shared && packed && N > 1 && vocab % N == 0 &&
         vocab * static_cast<std::int64_t>(sizeof(T)) <= cross_entropy_shared_row_limit();
}

inline bool& cross_entropy_shared_row_setting() {
  static bool on = env_switch("FATHOM_CE_SHARED_ROW", true);
  return on;
}
// Fused forwards that ran the shared-row kernel (the tests check which kernel ran).
inline std::uint64_t& cross_entropy_shared_row_runs() {
  static std::uint64_t runs = 0;
  return runs;
}

template <class T>
struct CrossEntropyBackwardArgs {
  const T* logits;                 // (N, V)
  const std::int32_t* targets;     // (N)
  const accum_t<T>* lse;           // (N)
  const std::int32_t* valid_rows;  // ()
  const accum_t<T>* dloss;         // ()
  T* dlogits;                      // (N, V)
  std::int64_t vocab;
  int ignore_index;
  bool accumulate;
};

template <class T, int N>
__global__ void __launch_bounds__(cross_entropy_threads)
    cross_entropy_backward_kernel(CrossEntropyBackwardArgs<T> a) {
  using A = accum_t<T>;
  const std::int64_t row = blockIdx.x;
  const std::int32_t target = a.targets[row], valid = *a.valid_rows;
  const A scale = target == a.ignore_index || valid == 0 ? A(0) : *a.dloss / static_cast<A>(valid);
  cross_entropy_row_grad<N>(a.logits + row * a.vocab, a.dlogits + row * a.vocab, a.vocab, target,
                            a.lse[row], scale, a.accumulate);
}

// A grid-stride pass of N-element packs; the whole grid returns at once when there is nothing to
// do (in place at the seed the forward assumed: the usual case, one 4-byte read a block).
constexpr int cross_entropy_rescale_threads = 256;
constexpr std::int64_t cross_entropy_rescale_max_blocks = 1024;

template <class T, int N>
__global__ void __launch_bounds__(cross_entropy_rescale_threads)
    cross_entropy_rescale_kernel(CrossEntropyRescaleParams<T> p) {
  using A = accum_t<T>;
  const A dloss = *p.dloss;
  if (!p.accumulate && p.dst == p.g && dloss == p.seed) return;
  const A ratio = dloss / p.seed;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  auto apply = [&](std::int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    A v[W];
    row_load<W>(p.g + i, v);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] *= ratio;
    cross_entropy_store(p.dst + i, v, p.accumulate);
  };
  const std::int64_t packs = p.n / N;
  for (std::int64_t k = tid; k < packs; k += stride) apply(k * N, RowWidth<N>{});
  if constexpr (N > 1) {
    for (std::int64_t i = packs * N + tid; i < p.n; i += stride) apply(i, RowWidth<1>{});
  }
}

}  // namespace detail

template <class T>
void softmax(Cuda, const SoftmaxParams<T>& p) {
  if (p.rows == 0 || p.cols == 0) return;
  const unsigned grid = detail::row_grid("softmax", p.rows);
  if (detail::rows_share_alignment<T>({p.x, p.y})) {
    detail::softmax_forward_kernel<T, detail::map_width<T>()>
        <<<grid, detail::softmax_threads, 0, cuda::stream()>>>(p.x, p.y, p.cols);
  } else {
    detail::softmax_forward_kernel<T, 1>
        <<<grid, detail::softmax_threads, 0, cuda::stream()>>>(p.x, p.y, p.cols);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void softmax_backward(Cuda, const SoftmaxBackwardParams<T>& p) {
  if (p.rows == 0 || p.cols == 0) return;
  const unsigned grid = detail::row_grid("softmax_backward", p.rows);
  if (detail::rows_share_alignment<T>({p.y, p.dy, p.dx})) {
    detail::softmax_backward_kernel<T, detail::map_width<T>()>
        <<<grid, detail::softmax_threads, 0, cuda::stream()>>>(p.y, p.dy, p.dx, p.cols,
                                                               p.accumulate);
  } else {
    detail::softmax_backward_kernel<T, 1><<<grid, detail::softmax_threads, 0, cuda::stream()>>>(
        p.y, p.dy, p.dx, p.cols, p.accumulate);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// Whether the forward with the gradient fused in keeps each row in shared memory between its two
// passes (rows of whole 16-byte packs up to cross_entropy_shared_row_max_bytes): on by default;
// FATHOM_CE_SHARED_ROW=0 in the environment, or set_cross_entropy_shared_row(false), rereads the
// row from global memory instead (for comparisons).
inline void set_cross_entropy_shared_row(bool on) {
  detail::cross_entropy_shared_row_setting() = on;
}
inline bool cross_entropy_shared_row() { return detail::cross_entropy_shared_row_setting(); }

// Three launches: count the rows not ignored (so a fused gradient can divide by it), one block per
// row for logsumexp, the row's loss and (optionally) the gradient, then the mean.
template <class T>
void cross_entropy(Cuda, const CrossEntropyParams<T>& p) {
  using A = accum_t<T>;
  FATHOM_CHECK(p.loss != nullptr, "cross_entropy: the loss pointer is null");
  Storage<Cuda> scratch(static_cast<std::size_t>(p.rows) * sizeof(A) +
                        (p.valid_rows ? 0 : sizeof(std::int32_t)));
  A* row_loss = static_cast<A*>(scratch.data());
  std::int32_t* valid =
      p.valid_rows ? p.valid_rows : reinterpret_cast<std::int32_t*>(row_loss + p.rows);
  detail::cross_entropy_count_kernel<detail::cross_entropy_sum_threads>
      <<<1, detail::cross_entropy_sum_threads, 0, cuda::stream()>>>(p.targets, p.rows,
                                                                    p.ignore_index, valid);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  if (p.rows > 0 && p.vocab > 0) {
    const unsigned grid = detail::row_grid("cross_entropy", p.rows);
    const detail::CrossEntropyForwardArgs<T> a{
        p.logits,    p.targets,      row_loss,
        p.lse,       valid,          p.dlogits,
        p.vocab,     p.ignore_index, static_cast<A>(p.grad_scale),
        p.accumulate};
    constexpr int N = detail::map_width<T>();
    const bool aligned = detail::rows_share_alignment<T>({p.logits, p.dlogits});
    const auto row_bytes = static_cast<std::size_t>(p.vocab) * sizeof(T);
    if (p.dlogits &&
        detail::cross_entropy_keeps_row<T>(p.vocab, aligned, cross_entropy_shared_row())) {
      auto kernel = detail::cross_entropy_forward_shared_kernel<T, N>;
      static const bool opted_in = [&] {
        FATHOM_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(detail::cross_entropy_shared_row_limit())));
        return true;
      }();
      (void)opted_in;
      ++detail::cross_entropy_shared_row_runs();
      kernel<<<grid, detail::cross_entropy_threads, row_bytes, cuda::stream()>>>(a);
    } else if (aligned) {
      detail::cross_entropy_forward_kernel<T, N>
          <<<grid, detail::cross_entropy_threads, 0, cuda::stream()>>>(a);
    } else {
      detail::cross_entropy_forward_kernel<T, 1>
          <<<grid, detail::cross_entropy_threads, 0, cuda::stream()>>>(a);
    }
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  detail::cross_entropy_mean_kernel<A><<<1, detail::cross_entropy_sum_threads, 0, cuda::stream()>>>(
      row_loss, p.rows, valid, p.loss);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void cross_entropy_backward(Cuda, const CrossEntropyBackwardParams<T>& p) {
  if (p.rows == 0 || p.vocab == 0) return;
  const unsigned grid = detail::row_grid("cross_entropy_backward", p.rows);
  const detail::CrossEntropyBackwardArgs<T> a{p.logits,     p.targets,      p.lse,
                                              p.valid_rows, p.dloss,        p.dlogits,
                                              p.vocab,      p.ignore_index, p.accumulate};
  if (detail::rows_share_alignment<T>({p.logits, p.dlogits})) {
    detail::cross_entropy_backward_kernel<T, detail::map_width<T>()>
        <<<grid, detail::cross_entropy_threads, 0, cuda::stream()>>>(a);
  } else {
    detail::cross_entropy_backward_kernel<T, 1>
        <<<grid, detail::cross_entropy_threads, 0, cuda::stream()>>>(a);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void cross_entropy_rescale(Cuda, const CrossEntropyRescaleParams<T>& p) {
  if (p.n <= 0) return;
  constexpr int N = detail::map_width<T>();
  const bool packed = N > 1 && detail::map_aligned(p.g) && detail::map_aligned(p.dst);
  const std::int64_t work = packed ? (p.n + N - 1) / N : p.n;
  const unsigned blocks = static_cast<unsigned>(std::min(
      detail::cross_entropy_rescale_max_blocks,
      (work + detail::cross_entropy_rescale_threads - 1) / detail::cross_entropy_rescale_threads));
  if (packed) {
    detail::cross_entropy_rescale_kernel<T, N>
        <<<blocks, detail::cross_entropy_rescale_threads, 0, cuda::stream()>>>(p);
  } else {
    detail::cross_entropy_rescale_kernel<T, 1>
        <<<blocks, detail::cross_entropy_rescale_threads, 0, cuda::stream()>>>(p);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fathom::kernels
