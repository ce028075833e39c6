// Embedding on CUDA: the gather copies rows (16 bytes at a time when rows allow); the
// scatter-add is deterministic: ids are sorted with their positions (CUB radix sort, stable), and
// each run of equal ids is summed in fp32 (fp64 for double) in a fixed order and added to its
// table row once. No atomics, so gradients are bitwise reproducible.
//
// Out-of-range ids are not checked on the host (that needs a device-to-host copy and a stream
// synchronization every step, and would break CUDA graph capture). Instead the forward writes NaN
// into the output row of an id outside [0, V), so the loss turns NaN and says so, and the
// backward skips such ids. The CPU kernels throw fathom::Error naming the id.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/embedding.cuh is CUDA code: include it from a .cu file compiled by nvcc"
#endif

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/scalar.hpp"
// CUDA primitives of Tensor<T, Cuda> (scratch tensors)
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/embedding.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::kernels {

namespace detail {

// One block per output row. Word is T, or uint4 (16 bytes) when rows are 16-byte multiples and
// the buffers 16-byte aligned.
template <class T, class Word>
__global__ void embedding_forward_kernel(const std::int32_t* ids, const T* table, T* out,
                                         std::int64_t vocab, std::int64_t channels,
                                         std::int64_t row_words) {
  const std::int64_t row = blockIdx.x;
  const std::int32_t id = ids[row];
  if (id < 0 || id >= vocab) {
    T* dst = out + row * channels;
    for (std::int64_t c = threadIdx.x; c < channels; c += blockDim.x)
      dst[c] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  const Word* src = reinterpret_cast<const Word*>(table + static_cast<std::int64_t>(id) * channels);
  Word* dst = reinterpret_cast<Word*>(out + row * channels);
  for (std::int64_t w = threadIdx.x; w < row_words; w += blockDim.x) dst[w] = src[w];
}

// keys[i] = ids[i] when in range, else vocab (sorted last and skipped); positions[i] = i.
// (A template, so that every translation unit may instantiate it without clashing.)
template <class Id>
__global__ void embedding_sort_inputs_kernel(const Id* ids, Id* keys, Id* positions, std::int64_t n,
                                             std::int64_t vocab) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const Id id = ids[i];
  keys[i] = id >= 0 && id < vocab ? id : static_cast<Id>(vocab);
  positions[i] = static_cast<Id>(i);
}

// The scatter-add over sorted (key, position) pairs runs in two passes over chunks of
// embedding_chunk sorted positions, so that an id repeated thousands of times (a frequent token,
// padding) is summed by many blocks rather than one:
//   pass 1: each chunk sums its runs of equal keys; a run wholly inside the chunk is added to
//           dtable at once; the piece of a run that continues from the previous chunk goes to
//           head[chunk], the piece that starts a run continuing into the next chunk to tail[chunk];
//   pass 2: the chunk where a spanning run starts adds tail + the heads that follow, in order.
// Every row of dtable has one writer and a fixed summation order: deterministic without atomics.
constexpr std::int64_t embedding_chunk = 64;

template <class T>
__global__ void embedding_backward_chunk_kernel(const std::int32_t* keys,
                                                const std::int32_t* positions, const T* dout,
                                                T* dtable, accum_t<T>* head, accum_t<T>* tail,
                                                std::int64_t n, std::int64_t vocab,
                                                std::int64_t channels) {
  using Acc = accum_t<T>;
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const std::int64_t i0 = chunk * embedding_chunk, i1 = min(n, i0 + embedding_chunk);
  for (std::int64_t start = i0; start < i1;) {
    const std::int32_t key = keys[start];
    Acc sum = 0;
    std::int64_t j = start;
    for (; j < i1 && keys[j] == key; ++j)
      sum += static_cast<Acc>(dout[static_cast<std::int64_t>(positions[j]) * channels + c]);
    const bool from_previous = start == i0 && i0 > 0 && keys[i0 - 1] == key;
    const bool into_next = j == i1 && i1 < n && keys[i1] == key;
    if (from_previous) {
      head[chunk * channels + c] = sum;
    } else if (into_next) {
      tail[chunk * channels + c] = sum;
    } else if (key < vocab) {  // key == vocab marks out-of-range ids: skipped
      T& dst = dtable[static_cast<std::int64_t>(key) * channels + c];
      dst = scalar_cast<T>(static_cast<Acc>(dst) + sum);
    }
    start = j;
  }
}

template <class T>
__global__ void embedding_backward_span_kernel(const std::int32_t* keys, const accum_t<T>* head,
                                               const accum_t<T>* tail, T* dtable, std::int64_t n,
                                               std::int64_t vocab, std::int64_t channels,
                                               std::int64_t chunks) {
  using Acc = accum_t<T>;
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const std::int64_t i0 = chunk * embedding_chunk, i1 = min(n, i0 + embedding_chunk);
  if (i1 >= n) return;
  const std::int32_t key = keys[i1 - 1];
  if (keys[i1] != key || key >= vocab) return;                   // no run continues from here
  if (keys[i0] == key && i0 > 0 && keys[i0 - 1] == key) return;  // it started in an earlier chunk
  Acc sum = tail[chunk * channels + c];
  for (std::int64_t next = chunk + 1; next < chunks; ++next) {
    sum += head[next * channels + c];
    const std::int64_t end = min(n, (next + 1) * embedding_chunk);
    if (end >= n || keys[end] != key) break;  // the run ends inside chunk `next`
  }
  T& dst = dtable[static_cast<std::int64_t>(key) * channels + c];
  dst = scalar_cast<T>(static_cast<Acc>(dst) + sum);
}

inline int bits_for(std::int64_t v) {
  int bits = 1;
  while (bits < 31 && (std::int64_t{1} << bits) <= v) ++bits;
  return bits;
}

}  // namespace detail

template <class T>
void embedding(Cuda, const EmbeddingParams<T>& p) {
  FATHOM_CHECK(p.n >= 0 && p.vocab >= 0 && p.channels >= 0 && p.n <= INT32_MAX,
               "embedding: expected 0 <= n <= 2^31 - 1 and non-negative sizes, got n "
                   << p.n << ", vocab " << p.vocab << ", channels " << p.channels);
  if (p.n == 0 || p.channels == 0) return;
  const int threads = 128;
  const std::size_t row_bytes = static_cast<std::size_t>(p.channels) * sizeof(T);
  const bool wide = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(p.table) % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(p.out) % 16 == 0;
  if (wide) {
    detail::embedding_forward_kernel<T, uint4>
        <<<static_cast<unsigned>(p.n), threads, 0, cuda::stream()>>>(
            p.ids, p.table, p.out, p.vocab, p.channels, static_cast<std::int64_t>(row_bytes / 16));
  } else {
    detail::embedding_forward_kernel<T, T>
        <<<static_cast<unsigned>(p.n), threads, 0, cuda::stream()>>>(p.ids, p.table, p.out, p.vocab,
                                                                     p.channels, p.channels);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void embedding_backward(Cuda, const EmbeddingBackwardParams<T>& p) {
  FATHOM_CHECK(
      p.n >= 0 && p.channels >= 0 && p.n <= INT32_MAX && p.vocab >= 0 && p.vocab < INT32_MAX,
      "embedding_backward: expected 0 <= n <= 2^31 - 1, 0 <= vocab < 2^31 - 1 and "
      "non-negative channels, got n "
          << p.n << ", vocab " << p.vocab << ", channels " << p.channels);
  if (p.n == 0 || p.channels == 0) return;
  const auto n = static_cast<int>(p.n);
  Tensor<std::int32_t, Cuda> keys_in(Shape{p.n}), keys(Shape{p.n}), positions_in(Shape{p.n}),
      positions(Shape{p.n});
  const int threads = 256;
  detail::embedding_sort_inputs_kernel<std::int32_t>
      <<<static_cast<unsigned>((p.n + threads - 1) / threads), threads, 0, cuda::stream()>>>(
          p.ids, keys_in.data(), positions_in.data(), p.n, p.vocab);
  FATHOM_CUDA_CHECK(cudaGetLastError());

  // Keys are in [0, vocab]: sorting only the bits that can be set halves the passes for 50257.
  const int end_bit = detail::bits_for(p.vocab);
  std::size_t temp_bytes = 0;
  FATHOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, keys_in.data(), keys.data(), positions_in.data(), positions.data(), n, 0,
      end_bit, cuda::stream()));
  Tensor<std::uint8_t, Cuda> temp(
      Shape{static_cast<std::int64_t>(std::max<std::size_t>(temp_bytes, 1))});
  FATHOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data(), temp_bytes, keys_in.data(), keys.data(), positions_in.data(), positions.data(),
      n, 0, end_bit, cuda::stream()));

  using Acc = accum_t<T>;
  const std::int64_t chunks = (p.n + detail::embedding_chunk - 1) / detail::embedding_chunk;
  Tensor<Acc, Cuda> head(Shape{chunks * p.channels}),
      tail(Shape{chunks * p.channels});  // (chunks, C)
  const int channel_threads = 128;
  const dim3 grid(static_cast<unsigned>(chunks),
                  static_cast<unsigned>((p.channels + channel_threads - 1) / channel_threads));
  detail::embedding_backward_chunk_kernel<T><<<grid, channel_threads, 0, cuda::stream()>>>(
      keys.data(), positions.data(), p.dout, p.dtable, head.data(), tail.data(), p.n, p.vocab,
      p.channels);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  detail::embedding_backward_span_kernel<T><<<grid, channel_threads, 0, cuda::stream()>>>(
      keys.data(), head.data(), tail.data(), p.dtable, p.n, p.vocab, p.channels, chunks);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fathom::kernels
