// CUDA runtime glue: FATHOM_CUDA_CHECK, the stream all fathom work is queued on, an event timer for
// it, a caching device allocator (no cudaMalloc in steady state), pinned host memory, and
// DeviceMemory<Cuda>. Plain C++ over the CUDA runtime API: usable from .cpp files that link
// CUDA::cudart.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "fathom/core/error.hpp"
#include "fathom/core/memory.hpp"

#define FATHOM_CUDA_CHECK(expr)                                                               \
  do {                                                                                        \
    cudaError_t fathom_cuda_status_ = (expr);                                                 \
    if (fathom_cuda_status_ != cudaSuccess) {                                                 \
      FATHOM_FAIL("CUDA call `" #expr "` failed: " << cudaGetErrorString(fathom_cuda_status_) \
                                                   << " at " << __FILE__ << ":" << __LINE__); \
    }                                                                                         \
  } while (0)

namespace fathom::cuda {

// The stream that every fathom kernel, copy and cuBLAS call is queued on. A non-blocking stream
// (not the legacy default stream) so that a training step can be captured as a CUDA graph.
inline cudaStream_t& stream_slot() {
  static cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return s;
}
inline cudaStream_t stream() { return stream_slot(); }
inline void synchronize() { FATHOM_CUDA_CHECK(cudaStreamSynchronize(stream())); }

// Times work queued on fathom's stream with a pair of CUDA events (GEMM autotuning, the benchmark
// programs).
class EventTimer {
 public:
  EventTimer() {
    FATHOM_CUDA_CHECK(cudaEventCreate(&start_));
    FATHOM_CUDA_CHECK(cudaEventCreate(&end_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(end_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Milliseconds per call of f, over `iters` calls after `warmup` untimed ones (waits for them).
  template <class F>
  double ms(F&& f, int warmup, int iters) {
    for (int i = 0; i < warmup; ++i) f();
    FATHOM_CUDA_CHECK(cudaEventRecord(start_, stream()));
    for (int i = 0; i < iters; ++i) f();
    FATHOM_CUDA_CHECK(cudaEventRecord(end_, stream()));
    FATHOM_CUDA_CHECK(cudaEventSynchronize(end_));
    float total = 0.0f;
    FATHOM_CUDA_CHECK(cudaEventElapsedTime(&total, start_, end_));
    return static_cast<double>(total) / iters;
  }

 private:
  cudaEvent_t start_{}, end_{};
};

// CachingAllocator: blocks are rounded up (to 512 bytes below 1 MiB, to 2 MiB above) and kept in
// size-keyed free lists when freed, so that steady-state training never calls cudaMalloc.
// Frees are stream-ordered on fathom's single stream, so reuse needs no events.
class CachingAllocator {
 public:
  struct Stats {
    std::size_t cuda_mallocs = 0;  // calls to cudaMalloc so far
    std::size_t bytes_in_use = 0;  // bytes handed out and not yet freed
    std::size_t peak_bytes_in_use = 0;
    std::size_t bytes_reserved = 0;  // bytes obtained from cudaMalloc and not released
  };

  static CachingAllocator& instance() {
    static CachingAllocator* a =
        new CachingAllocator();  // never destroyed: outlives static tensors
    return *a;
  }

  void* allocate(std::size_t bytes) {
    std::size_t size = round(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(size);
    // Take a cached block of the same size class, or one at most twice as large.
    if (it != free_.end() && it->first <= 2 * size) {
      void* p = it->second;
      std::size_t got = it->first;
      free_.erase(it);
      in_use_[p] = got;
      account(got);
      return p;
    }
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, size);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      release_cached_locked();
      status = cudaMalloc(&p, size);
    }
    FATHOM_CHECK(status == cudaSuccess, "CUDA out of memory: cannot allocate "
                                            << size << " bytes (" << stats_.bytes_in_use
                                            << " bytes in use): " << cudaGetErrorString(status));
    ++stats_.cuda_mallocs;
    stats_.bytes_reserved += size;
    in_use_[p] = size;
    account(size);
    return p;
  }

  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = in_use_.find(p);
    FATHOM_CHECK(it != in_use_.end(), "CachingAllocator: freeing a pointer it did not allocate");
    stats_.bytes_in_use -= it->second;
    free_.emplace(it->second, p);
    in_use_.erase(it);
  }

  // The workspace: scratch of at least `bytes` for the kernels of one call (partial sums, row
  // statistics), valid until the next workspace() call. Every kernel runs on fathom's one stream,
  // so the next user's kernels start only after the last user's are done. It only grows (the old
  // block goes back to the cache), so once training has run a step it never allocates again, and a
  // captured CUDA graph keeps pointing at the workspace. One host thread drives the stream.
  void* workspace(std::size_t bytes) {
    if (bytes > workspace_bytes_) {
      void* grown = allocate(bytes);
      deallocate(workspace_);
      workspace_ = grown;
      workspace_bytes_ = round(bytes);
    }
    return workspace_;
  }
  template <class U>
  U* workspace_for(std::size_t count) {
    return static_cast<U*>(workspace(count * sizeof(U)));
  }

  // Give every cached (free) block back to the driver.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

  Stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  static std::size_t round(std::size_t bytes) {
    constexpr std::size_t small = 512, large = 2u << 20;
    if (bytes == 0) bytes = 1;
    std::size_t unit = bytes < (1u << 20) ? small : large;
    return (bytes + unit - 1) / unit * unit;
  }

 private:
  CachingAllocator() = default;
  void account(std::size_t size) {
    stats_.bytes_in_use += size;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use)
      stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }
  void release_cached_locked() {
    cudaStreamSynchronize(stream());
    for (auto& [size, p] : free_) {
      cudaFree(p);
      stats_.bytes_reserved -= size;
    }
    free_.clear();
  }

  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;
  std::unordered_map<void*, std::size_t> in_use_;
  Stats stats_;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

// Page-locked host memory, for fast and asynchronous host <-> device copies.
struct PinnedHostAllocator {
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    FATHOM_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
  }
  static void deallocate(void* p) { FATHOM_CUDA_CHECK(cudaFreeHost(p)); }
};

}  // namespace fathom::cuda

namespace fathom {

template <>
struct DeviceMemory<Cuda> {
  static void* allocate(std::size_t bytes) {
    return cuda::CachingAllocator::instance().allocate(bytes);
  }
  static void deallocate(void* p, std::size_t) { cuda::CachingAllocator::instance().deallocate(p); }
  static void to_host(void* dst, const void* src, std::size_t bytes) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda::stream()));
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  }
  static void from_host(void* dst, const void* src, std::size_t bytes) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda::stream()));
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  }
  static void copy(void* dst, const void* src, std::size_t bytes) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::stream()));
  }
  static void zero(void* p, std::size_t bytes) {
    FATHOM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda::stream()));
  }
  static void fill_bytes(void* p, int byte, std::size_t bytes) {
    FATHOM_CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, cuda::stream()));
  }
  // The driver's free memory plus the blocks the caching allocator holds unused.
  static std::uint64_t available() {
    std::size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    const auto stats = cuda::CachingAllocator::instance().stats();
    return free + (stats.bytes_reserved - stats.bytes_in_use);
  }
};

}  // namespace fathom
