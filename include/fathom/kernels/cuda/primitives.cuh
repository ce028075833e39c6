// CUDA versions of the tensor primitives (device_fill, device_strided_copy, device_cast in
// namespace fathom, found by Tensor through argument-dependent lookup on the Cuda tag), and the
// element-wise launch machinery the CUDA kernel families share: 16-byte vector packs and a
// grid-stride map.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/primitives.cuh holds CUDA kernels: include it from a .cu file (nvcc)"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/tensor/shape.hpp"

namespace fathom::kernels::detail {

// N consecutive elements moved as one load or store (16 bytes when N * sizeof(T) == 16).
template <class T, int N>
struct alignas(sizeof(T) * N) MapPack {
  T v[N];
};

template <int N, class T>
__device__ inline MapPack<T, N> map_load(const T* p) {
  return *reinterpret_cast<const MapPack<T, N>*>(p);
}
template <int N, class T>
__device__ inline void map_store(T* p, const MapPack<T, N>& pack) {
  *reinterpret_cast<MapPack<T, N>*>(p) = pack;
}

// The bf16 in the high (high = 1) or low half of a 32-bit word, as a float: one mask or shift
// (extracting the half as 16 bits first, which the compiler does for a MapPack's v[j], costs a
// second instruction).
__device__ inline float bf16_half_float(std::uint32_t word, int high) {
  return __uint_as_float(high ? word & 0xffff0000u : word << 16);
}

// The N values of a pack in A, as scalar_cast<A> gives each; bf16 to float from the pack's 32-bit
// words (bf16_half_float).
template <class A, class T, int N>
__device__ inline void unpack(const MapPack<T, N>& pack, A (&out)[N]) {
  if constexpr (std::is_same_v<T, bf16> && std::is_same_v<A, float> && N % 2 == 0) {
    std::uint32_t words[N / 2];
    static_assert(sizeof(words) == sizeof(pack));
    std::memcpy(words, &pack, sizeof(words));
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = bf16_half_float(words[j / 2], j % 2);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = scalar_cast<A>(pack.v[j]);
  }
}

// Two floats rounded to bf16, lo in the low half, by bf16's own rounding (round to nearest, ties to
// even; a NaN made quiet, keeping its sign and upper payload bits).
__device__ inline std::uint32_t bf16x2_bits(float lo, float hi) {
  return bf16::round_from_float(lo) | (std::uint32_t{bf16::round_from_float(hi)} << 16);
}

// A pack as loaded, kept as 32-bit words: for a kernel that holds several packs and loads some of
// them only under a condition. A MapPack of bf16 is zero-filled when declared (bf16's bits start at
// 0), so each conditionally loaded one costs a zeroing and an insert per element, each element in a
// register of its own; these words are left alone until loaded, and an element is read out of its
// word by one shift or mask.
template <class T, int N>
struct alignas(sizeof(T) * N) WordPack {
  static constexpr std::size_t kBytes = sizeof(T) * N;
  // 32-bit words, or narrower ones where a pack is smaller (a single bf16).
  using Word = std::conditional_t<kBytes % 4 == 0, std::uint32_t,
                                  std::conditional_t<kBytes % 2 == 0, std::uint16_t, std::uint8_t>>;
  Word w[kBytes / sizeof(Word)];

  __host__ __device__ T operator[](int j) const {
    T out;
    std::memcpy(&out, reinterpret_cast<const unsigned char*>(w) + j * sizeof(T), sizeof(T));
    return out;
  }
  // Element j in A, as scalar_cast<A>((*this)[j]); bf16 to float from its word (bf16_half_float).
  template <class A>
  __device__ A get(int j) const {
    if constexpr (std::is_same_v<T, bf16> && std::is_same_v<A, float> &&
                  std::is_same_v<Word, std::uint32_t>) {
      return bf16_half_float(w[j / 2], j % 2);
    } else {
      return scalar_cast<A>((*this)[j]);
    }
  }
};

template <int N, class T>
__device__ inline WordPack<T, N> word_load(const T* p) {
  return *reinterpret_cast<const WordPack<T, N>*>(p);
}

// Stores the W 32-bit words of a bf16 pack at p (aligned for the pack) as one MapPack: one vector
// store. Stored as a struct of words (or a uint4), some kernels' packs were written word by word,
// four stores where one would do (RoPE's, whose pass then streamed ~30% slower).
template <int W>
__device__ inline void store_words(bf16* p, const std::uint32_t (&w)[W]) {
  MapPack<bf16, 2 * W> pack;
  static_assert(sizeof(pack) == sizeof(w));
  std::memcpy(&pack, w, sizeof(w));
  map_store<2 * W>(p, pack);
}

// Stores N values of A at p (16-byte aligned for a whole pack) rounded to T, as scalar_cast<T>
// rounds each. bf16 from float, on sm_80 and later: two values an instruction
// (cvt.rn.bf16x2.f32) when the pack holds no NaN, which rounds every number as
// bf16::round_from_float does; a pack with a NaN takes that function for each value (the hardware's
// canonical NaN would lose the NaN's sign and payload). One branch a pack; the words are stored as
// they come, in one vector store (store_words).
template <int N, class T, class A>
__device__ inline void round_store(T* p, const A (&v)[N]) {
  if constexpr (std::is_same_v<T, bf16> && std::is_same_v<A, float> && N % 2 == 0) {
    std::uint32_t out[N / 2];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    bool nan = false;
#pragma unroll
    for (int j = 0; j < N / 2; ++j) nan |= !(v[2 * j] == v[2 * j] && v[2 * j + 1] == v[2 * j + 1]);
    if (!nan) {
#pragma unroll
      for (int j = 0; j < N / 2; ++j)
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(out[j]) : "f"(v[2 * j + 1]), "f"(v[2 * j]));
      store_words(p, out);
      return;
    }
#endif
#pragma unroll
    for (int j = 0; j < N / 2; ++j) out[j] = bf16x2_bits(v[2 * j], v[2 * j + 1]);
    store_words(p, out);
  } else {
    MapPack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = scalar_cast<T>(v[j]);
    map_store<N>(p, out);
  }
}

// Threads a column in a (32, kPartialSlices) block of sum_partial_rows.
constexpr int kPartialSlices = 32;

// Column `col` of `partial` (`rows` rows `stride` elements apart) summed by the (32,
// kPartialSlices) block of this thread, in a fixed order: slice y (threadIdx.y) adds rows y,
// y + kPartialSlices, ... with several loads in flight, then thread y == 0 adds the slices in order
// (the same bits on every run; the per-block partial sums of a weight or bias gradient). Returns
// the total to the threads with threadIdx.y == 0, 0 to the others. Every thread of the block calls
// it (it synchronizes); `inside` false: a column past the end, which adds nothing.
template <class A>
__device__ inline A sum_partial_rows(const A* partial, std::int64_t rows, std::int64_t stride,
                                     std::int64_t col, bool inside) {
  __shared__ A slices[kPartialSlices][32];
  constexpr int kAhead = 8;  // rows a slice has in flight
  A sum = 0;
  if (inside) {
    for (std::int64_t g0 = threadIdx.y; g0 < rows; g0 += kAhead * kPartialSlices) {
      A v[kAhead];
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        const std::int64_t g = g0 + u * kPartialSlices;
        v[u] = g < rows ? partial[g * stride + col] : A(0);  // + 0 leaves the sum's bits
      }
#pragma unroll
      for (int u = 0; u < kAhead; ++u) sum += v[u];
    }
  }
  slices[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  A total = 0;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int s = 0; s < kPartialSlices; ++s) total += slices[s][threadIdx.x];
  }
  __syncthreads();  // slices may be written again by the next call
  return total;
}

// The grid and block of a kernel that sums `cols` columns with sum_partial_rows: 32 columns a
// block, kPartialSlices threads a column.
struct PartialRowsLaunch {
  dim3 grid, block;
};
inline PartialRowsLaunch partial_rows_launch(std::int64_t cols) {
  return {dim3(static_cast<unsigned>((cols + 31) / 32)), dim3(32, kPartialSlices)};
}

// Elements per 16-byte pack for the widest of the element types involved.
template <class... Ts>
constexpr int map_width() {
  constexpr std::size_t widest = std::max({sizeof(Ts)...});
  return widest >= 16 ? 1 : static_cast<int>(16 / widest);
}

__host__ __device__ inline bool map_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Op models: template <int N> __device__ void apply(std::int64_t i) const, which handles elements
// [i, i + N). The kernel gives each thread whole packs, then the n % N tail one element at a time.
template <int N, class Op>
__global__ void map_kernel(Op op, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t packs = n / N;
  for (std::int64_t k = tid; k < packs; k += stride) op.template apply<N>(k * N);
  if constexpr (N > 1) {
    for (std::int64_t i = packs * N + tid; i < n; i += stride) op.template apply<1>(i);
  }
}

constexpr int map_threads = 256;
constexpr std::int64_t map_max_blocks = 8192;  // a grid-stride loop covers the rest

// Runs op over n elements on fathom's stream, N at a time when every pointer given is 16-byte
// aligned (null pointers count as aligned), one at a time otherwise.
template <int N, class Op, class... Ptrs>
void launch_map(const Op& op, std::int64_t n, const Ptrs*... ptrs) {
  if (n <= 0) return;
  const bool packed = N > 1 && (true && ... && map_aligned(ptrs));
  const std::int64_t work = packed ? (n + N - 1) / N : n;
  const int blocks =
      static_cast<int>(std::min(map_max_blocks, (work + map_threads - 1) / map_threads));
  if (packed) {
    map_kernel<N><<<blocks, map_threads, 0, cuda::stream()>>>(op, n);
  } else {
    map_kernel<1><<<blocks, map_threads, 0, cuda::stream()>>>(op, n);
  }
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

template <class T>
struct FillMap {
  T* dst;
  T value;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    MapPack<T, N> pack;
#pragma unroll
    for (int j = 0; j < N; ++j) pack.v[j] = value;
    map_store<N>(dst + i, pack);
  }
};

template <class To, class From>
struct CastMap {
  To* dst;
  const From* src;
  template <int N>
  __device__ void apply(std::int64_t i) const {
    const MapPack<From, N> in = map_load<N>(src + i);
    MapPack<To, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = scalar_cast<To>(in.v[j]);
    map_store<N>(dst + i, out);
  }
};

// A shape and strides by value, for kernel arguments (Shape itself is host-only).
struct StridedLayout {
  std::int64_t extent[Shape::max_rank];
  std::int64_t stride[Shape::max_rank];
  int rank;
};

template <class T>
__global__ void strided_copy_kernel(T* dst, const T* src, StridedLayout layout, std::int64_t n) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += step) {
    std::int64_t rest = i, offset = 0;
    for (int d = layout.rank - 1; d >= 0; --d) {  // row-major index -> source offset
      const std::int64_t e = layout.extent[d];
      offset += (rest % e) * layout.stride[d];
      rest /= e;
    }
    dst[i] = src[offset];
  }
}

}  // namespace fathom::kernels::detail

namespace fathom {

template <class T>
void device_fill(Cuda, T* dst, std::int64_t n, T value) {
  kernels::detail::launch_map<kernels::detail::map_width<T>()>(
      kernels::detail::FillMap<T>{dst, value}, n, dst);
}

// dst (contiguous) <- src viewed with `shape` and `src_strides` (in elements).
template <class T>
void device_strided_copy(Cuda, T* dst, const T* src, const Shape& shape, const Shape& src_strides) {
  const std::int64_t n = shape.numel();
  if (n == 0) return;
  kernels::detail::StridedLayout layout{};
  // Merge dimensions that are contiguous with respect to each other: fewer divisions per element.
  int rank = 0;
  for (int d = 0; d < shape.rank(); ++d) {
    if (shape[d] == 1) continue;
    if (rank > 0 && layout.stride[rank - 1] == src_strides[d] * shape[d]) {
      layout.extent[rank - 1] *= shape[d];
      layout.stride[rank - 1] = src_strides[d];
    } else {
      layout.extent[rank] = shape[d];
      layout.stride[rank] = src_strides[d];
      ++rank;
    }
  }
  layout.rank = rank;
  const int threads = kernels::detail::map_threads;
  const int blocks =
      static_cast<int>(std::min(kernels::detail::map_max_blocks, (n + threads - 1) / threads));
  kernels::detail::strided_copy_kernel<<<blocks, threads, 0, cuda::stream()>>>(dst, src, layout, n);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// Element type conversion (to bf16: round to nearest even, as on the CPU).
template <class To, class From>
void device_cast(Cuda, To* dst, const From* src, std::int64_t n) {
  kernels::detail::launch_map<kernels::detail::map_width<To, From>()>(
      kernels::detail::CastMap<To, From>{dst, src}, n, dst, src);
}

}  // namespace fathom
