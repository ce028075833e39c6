// Reductions on CUDA: sum (and mean) with its backward, and the multi-tensor sum of squares for
// global-norm clipping. CUB block reductions in accum_t<T>; the grand total is a second,
// single-block pass over per-block partials in a fixed order, so results are deterministic run to
// run.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/reduce.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/reduce.hpp"

namespace fathom::kernels {

namespace detail {

constexpr int reduce_threads = 256;
constexpr int reduce_max_blocks = 1024;
// Elements per block in the sum of squares; a multiple of every pack width, so each chunk of a
// 16-byte aligned tensor starts 16-byte aligned.
constexpr std::int64_t sum_squares_chunk = 16384;

// Square (or identity) of one element, in accum precision.
template <bool Square>
struct ReduceTerm {
  template <class A>
  __device__ A operator()(A v) const {
    if constexpr (Square)
      return v * v;
    else
      return v;
  }
};

// This thread's share of sum(term(x[i])) over [0, n), threads of the block striding over the range;
// 16-byte packs when x is aligned.
template <class T, class Term>
__device__ accum_t<T> block_range_partial(const T* x, std::int64_t n, Term term) {
  using A = accum_t<T>;
  constexpr int N = map_width<T>();
  A acc = 0;
  std::int64_t done = 0;
  if (N > 1 && map_aligned(x)) {
    const std::int64_t packs = n / N;
    for (std::int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      const auto v = map_load<N>(x + k * N);
#pragma unroll
      for (int j = 0; j < N; ++j) acc += term(scalar_cast<A>(v.v[j]));
    }
    done = packs * N;
  }
  for (std::int64_t i = done + threadIdx.x; i < n; i += blockDim.x)
    acc += term(scalar_cast<A>(x[i]));
  return acc;
}

// Block b reduces elements [b * chunk, min(n, (b + 1) * chunk)) into partials[b].
template <class T, bool Square>
__global__ void reduce_chunks_kernel(const T* x, std::int64_t n, std::int64_t chunk,
                                     accum_t<T>* partials) {
  using A = accum_t<T>;
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * chunk;
  const std::int64_t count = n - begin < chunk ? n - begin : chunk;
  const A total =
      BlockReduce(temp).Sum(block_range_partial(x + begin, count, ReduceTerm<Square>{}));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Up to sum_squares_max_tensors tensors of a list, passed by value as a kernel parameter (no copy
// to the device, so the launch can be captured in a CUDA graph). Tensor s covers blocks
// [first_chunk[s], first_chunk[s + 1]) of the launch, one chunk of sum_squares_chunk elements each.
constexpr int sum_squares_max_tensors = 128;

template <class T>
struct SumSquaresTable {
  const T* data[sum_squares_max_tensors];
  std::int64_t n[sum_squares_max_tensors];
  std::int64_t first_chunk[sum_squares_max_tensors + 1];
  int count;
};

template <class T>
__global__ void sum_squares_chunks_kernel(const __grid_constant__ SumSquaresTable<T> table,
                                          accum_t<T>* partials) {
  using A = accum_t<T>;
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const std::int64_t b = blockIdx.x;
  int lo = 0, hi = table.count - 1;  // the tensor s with first_chunk[s] <= b < first_chunk[s + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table.first_chunk[mid] <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  const std::int64_t begin = (b - table.first_chunk[lo]) * sum_squares_chunk;
  const std::int64_t rest = table.n[lo] - begin, chunk = sum_squares_chunk;
  const std::int64_t count = rest < chunk ? rest : chunk;
  const A total =
      BlockReduce(temp).Sum(block_range_partial(table.data[lo] + begin, count, ReduceTerm<true>{}));
  if (threadIdx.x == 0) partials[b] = total;
}

// out[0] = scale * sum(partials[0, count)), by a single block in a fixed order.
template <class A, class Out>
__global__ void reduce_partials_kernel(const A* partials, std::int64_t count, Out* out,
                                       double scale) {
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  A acc = 0;
  for (std::int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  const A total = BlockReduce(temp).Sum(acc);
  if (threadIdx.x == 0) out[0] = scalar_cast<Out>(static_cast<A>(scale) * total);
}

template <class T>
struct SumBackwardMap {
  SumBackwardParams<T> p;
  accum_t<T> scale;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    using A = accum_t<T>;
    const A g = scale * scalar_cast<A>(p.dy[0]);
    auto dx = map_load<N>(p.dx + i);
#pragma unroll
    for (int j = 0; j < N; ++j) dx.v[j] = scalar_cast<T>(scalar_cast<A>(dx.v[j]) + g);
    map_store<N>(p.dx + i, dx);
  }
};

}  // namespace detail

template <class T>
void sum(Cuda, const SumParams<T>& p) {
  using A = accum_t<T>;
  // Chunks of whole packs, at most reduce_max_blocks of them: the split depends on n only.
  const std::int64_t per_block = detail::reduce_threads * 16;
  std::int64_t blocks =
      std::min<std::int64_t>(detail::reduce_max_blocks, (p.n + per_block - 1) / per_block);
  std::int64_t chunk = blocks > 0 ? (p.n + blocks - 1) / blocks : 0;
  chunk = (chunk + 7) / 8 * 8;
  if (chunk > 0) blocks = (p.n + chunk - 1) / chunk;
  A* partials = cuda::CachingAllocator::instance().workspace_for<A>(
      static_cast<std::size_t>(std::max<std::int64_t>(blocks, 1)));
  if (blocks > 0) {
    detail::reduce_chunks_kernel<T, false>
        <<<static_cast<int>(blocks), detail::reduce_threads, 0, cuda::stream()>>>(p.x, p.n, chunk,
                                                                                  partials);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  detail::reduce_partials_kernel<<<1, detail::reduce_threads, 0, cuda::stream()>>>(partials, blocks,
                                                                                   p.out, p.scale);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void sum_backward(Cuda, const SumBackwardParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(
      detail::SumBackwardMap<T>{p, static_cast<accum_t<T>>(p.scale)}, p.n, p.dx);
}

// Writes the total to *out, a device pointer, without synchronizing or copying anything to the
// device: one launch per sum_squares_max_tensors tensors reduces every chunk of each into its own
// partial, a last single-block launch adds the partials in order (deterministic).
template <class T>
void sum_squares(Cuda, const SumSquaresParams<T>& p, accum_t<T>* out) {
  using A = accum_t<T>;
  std::int64_t chunks = 0;
  for (const Span<T>& t : p.tensors)
    chunks += (t.n + detail::sum_squares_chunk - 1) / detail::sum_squares_chunk;
  A* partials = cuda::CachingAllocator::instance().workspace_for<A>(
      static_cast<std::size_t>(std::max<std::int64_t>(chunks, 1)));
  std::int64_t done = 0;  // chunks launched so far: where the next launch writes its partials
  for (std::size_t first = 0; first < p.tensors.size(); first += detail::sum_squares_max_tensors) {
    detail::SumSquaresTable<T> table{};
    table.count = 0;
    std::int64_t launch_chunks = 0;
    const std::size_t last = std::min(p.tensors.size(), first + detail::sum_squares_max_tensors);
    for (std::size_t k = first; k < last; ++k) {
      const Span<T>& t = p.tensors[k];
      if (t.n == 0) continue;  // an empty tensor adds nothing and owns no block
      table.data[table.count] = t.data;
      table.n[table.count] = t.n;
      table.first_chunk[table.count] = launch_chunks;
      launch_chunks += (t.n + detail::sum_squares_chunk - 1) / detail::sum_squares_chunk;
      ++table.count;
    }
    table.first_chunk[table.count] = launch_chunks;
    if (launch_chunks == 0) continue;
    detail::sum_squares_chunks_kernel<<<static_cast<unsigned>(launch_chunks),
                                        detail::reduce_threads, 0, cuda::stream()>>>(
        table, partials + done);
    FATHOM_CUDA_CHECK(cudaGetLastError());
    done += launch_chunks;
  }
  detail::reduce_partials_kernel<<<1, detail::reduce_threads, 0, cuda::stream()>>>(partials, done,
                                                                                   out, 1.0);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
__global__ void clip_factor_kernel(const A* sum_squares, double max_norm, float* factor) {
  const double norm = sqrt(static_cast<double>(*sum_squares));
  *factor =
      (max_norm > 0.0 && norm > max_norm) ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

// clip_factor on the device: one thread, no synchronization.
template <class A>
void clip_factor(Cuda, const A* sum_squares, double max_norm, float* factor) {
  clip_factor_kernel<A><<<1, 1, 0, cuda::stream()>>>(sum_squares, max_norm, factor);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// The total, returned on the host (synchronizes fathom's stream).
template <class T>
accum_t<T> sum_squares(Cuda, const SumSquaresParams<T>& p) {
  using A = accum_t<T>;
  Storage<Cuda> result(sizeof(A));  // not the workspace: sum_squares uses that for its partials
  sum_squares(Cuda{}, p, static_cast<A*>(result.data()));
  A total;
  DeviceMemory<Cuda>::to_host(&total, result.data(), sizeof(A));
  return total;
}

}  // namespace fathom::kernels
