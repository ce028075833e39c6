// Reductions on CUDA: sum (and mean) with its backward, and the multi-tensor sum of squares for
// global-norm clipping. CUB block reductions in accum_t<T>; the grand total is a second, single-block
// pass over per-block partials in a fixed order, so results are deterministic run to run.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/reduce.cuh holds CUDA kernels: include it from a .cu file compiled by nvcc"
#endif

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <vector>

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
    if constexpr (Square) return v * v;
    else return v;
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
  for (std::int64_t i = done + threadIdx.x; i < n; i += blockDim.x) acc += term(scalar_cast<A>(x[i]));
  return acc;
}

// Block b reduces elements [b * chunk, min(n, (b + 1) * chunk)) into partials[b].
template <class T, bool Square>
__global__ void reduce_chunks_kernel(const T* x, std::int64_t n, std::int64_t chunk, accum_t<T>* partials) {
  using A = accum_t<T>;
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * chunk;
  const std::int64_t count = std::min(chunk, n - begin);
  const A total = BlockReduce(temp).Sum(block_range_partial(x + begin, count, ReduceTerm<Square>{}));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// One chunk of one tensor of a list.
template <class T>
struct ReduceChunk {
  const T* data;
  std::int64_t n;
};

template <class T>
__global__ void sum_squares_chunks_kernel(const ReduceChunk<T>* chunks, accum_t<T>* partials) {
  using A = accum_t<T>;
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const ReduceChunk<T> c = chunks[blockIdx.x];
  const A total = BlockReduce(temp).Sum(block_range_partial(c.data, c.n, ReduceTerm<true>{}));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// out[0] = scale * sum(partials[0, count)), by a single block in a fixed order.
template <class A, class Out>
__global__ void reduce_partials_kernel(const A* partials, std::int64_t count, Out* out, double scale) {
  using BlockReduce = cub::BlockReduce<A, reduce_threads>;
  __shared__ typename BlockReduce::TempStorage temp;
  A acc = 0;
  for (std::int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  const A total = BlockReduce(temp).Sum(acc);
  if (threadIdx.x == 0) out[0] = scalar_cast<Out>(static_cast<A>(scale) * total);
}

// Scratch memory from the caching allocator, released (stream-ordered) when it goes out of scope.
class ReduceScratch {
 public:
  explicit ReduceScratch(std::size_t bytes) : p_(cuda::CachingAllocator::instance().allocate(bytes)) {}
  ~ReduceScratch() { cuda::CachingAllocator::instance().deallocate(p_); }
  ReduceScratch(const ReduceScratch&) = delete;
  ReduceScratch& operator=(const ReduceScratch&) = delete;
  template <class U>
  U* as(std::size_t byte_offset = 0) const {
    return reinterpret_cast<U*>(static_cast<char*>(p_) + byte_offset);
  }

 private:
  void* p_;
};

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
  std::int64_t blocks = std::min<std::int64_t>(detail::reduce_max_blocks, (p.n + per_block - 1) / per_block);
  std::int64_t chunk = blocks > 0 ? (p.n + blocks - 1) / blocks : 0;
  chunk = (chunk + 7) / 8 * 8;
  if (chunk > 0) blocks = (p.n + chunk - 1) / chunk;
  detail::ReduceScratch scratch(static_cast<std::size_t>(std::max<std::int64_t>(blocks, 1)) * sizeof(A));
  A* partials = scratch.as<A>();
  if (blocks > 0) {
    detail::reduce_chunks_kernel<T, false>
        <<<static_cast<int>(blocks), detail::reduce_threads, 0, cuda::stream()>>>(p.x, p.n, chunk, partials);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  detail::reduce_partials_kernel<<<1, detail::reduce_threads, 0, cuda::stream()>>>(partials, blocks, p.out,
                                                                                   p.scale);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void sum_backward(Cuda, const SumBackwardParams<T>& p) {
  detail::launch_map<detail::map_width<T>()>(detail::SumBackwardMap<T>{p, static_cast<accum_t<T>>(p.scale)},
                                             p.n, p.dx);
}

// Writes the total to *out, a device pointer, without synchronizing: one launch reduces every chunk
// of every tensor of the list, a second adds the partials.
template <class T>
void sum_squares(Cuda, const SumSquaresParams<T>& p, accum_t<T>* out) {
  using A = accum_t<T>;
  std::vector<detail::ReduceChunk<T>> chunks;
  for (const Span<T>& t : p.tensors)
    for (std::int64_t begin = 0; begin < t.n; begin += detail::sum_squares_chunk)
      chunks.push_back({t.data + begin, std::min(detail::sum_squares_chunk, t.n - begin)});
  const std::size_t table_bytes = (chunks.size() * sizeof(detail::ReduceChunk<T>) + 255) / 256 * 256;
  detail::ReduceScratch scratch(table_bytes + std::max<std::size_t>(chunks.size(), 1) * sizeof(A));
  auto* table = scratch.as<detail::ReduceChunk<T>>();
  A* partials = scratch.as<A>(table_bytes);
  if (!chunks.empty()) {
    // From pageable memory: staged before the call returns, so `chunks` may go away afterwards.
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(table, chunks.data(), chunks.size() * sizeof(detail::ReduceChunk<T>),
                                      cudaMemcpyHostToDevice, cuda::stream()));
    detail::sum_squares_chunks_kernel<<<static_cast<unsigned>(chunks.size()), detail::reduce_threads, 0,
                                        cuda::stream()>>>(table, partials);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  detail::reduce_partials_kernel<<<1, detail::reduce_threads, 0, cuda::stream()>>>(
      partials, static_cast<std::int64_t>(chunks.size()), out, 1.0);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// The total, returned on the host (synchronizes fathom's stream).
template <class T>
accum_t<T> sum_squares(Cuda, const SumSquaresParams<T>& p) {
  using A = accum_t<T>;
  detail::ReduceScratch result(sizeof(A));
  sum_squares(Cuda{}, p, result.as<A>());
  A total;
  DeviceMemory<Cuda>::to_host(&total, result.as<A>(), sizeof(A));
  return total;
}

}  // namespace fathom::kernels
