// Times work on fathom's CUDA stream with a pair of CUDA events: what the benchmark programs
// (fathom-bench's GEMM peak, fathom-attention-bench, fathom-memory-bench) measure calls with.
#pragma once

#include <fathom/cuda.hpp>

namespace fathom::programs {

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

  // Milliseconds per call of f, over `iters` calls after `warmup` untimed ones.
  template <class F>
  double ms(F&& f, int warmup, int iters) {
    for (int i = 0; i < warmup; ++i) f();
    FATHOM_CUDA_CHECK(cudaEventRecord(start_, cuda::stream()));
    for (int i = 0; i < iters; ++i) f();
    FATHOM_CUDA_CHECK(cudaEventRecord(end_, cuda::stream()));
    FATHOM_CUDA_CHECK(cudaEventSynchronize(end_));
    float total = 0.0f;
    FATHOM_CUDA_CHECK(cudaEventElapsedTime(&total, start_, end_));
    return static_cast<double>(total) / iters;
  }

 private:
  cudaEvent_t start_{}, end_{};
};

}  // namespace fathom::programs
