// The cuBLAS and cuBLASLt handles that fathom's GEMMs share: created once, bound to
// fathom::cuda::stream(), with one 32 MiB workspace from the caching allocator.
#pragma once

#if !defined(__CUDACC__)
#error \
    "fathom/kernels/cuda/blas_handle.cuh is CUDA code: include it from a .cu file compiled by nvcc"
#endif

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/error.hpp"

#define FATHOM_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                          \
    cublasStatus_t fathom_cublas_status_ = (expr);                                              \
    if (fathom_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                       \
      FATHOM_FAIL("cuBLAS call `" #expr "` failed: "                                            \
                  << cublasGetStatusName(fathom_cublas_status_) << " ("                         \
                  << cublasGetStatusString(fathom_cublas_status_) << ") at " << __FILE__ << ":" \
                  << __LINE__);                                                                 \
    }                                                                                           \
  } while (0)

namespace fathom::kernels {

// One per process. The workspace lets cuBLASLt pick split-K and other algorithms that need
// scratch memory, and, given to cuBLAS with cublasSetWorkspace, keeps cuBLAS from allocating while
// a CUDA graph is captured. cuBLAS and cuBLASLt use it in turn on one stream, never at once.
class BlasHandles {
 public:
  static constexpr std::size_t workspace_bytes = std::size_t{32} << 20;

  static BlasHandles& instance() {
    // Never destroyed: the CUDA context may already be torn down when static destructors run.
    static BlasHandles* handles = new BlasHandles();
    return *handles;
  }

  cublasHandle_t blas() const { return blas_; }
  cublasLtHandle_t lt() const { return lt_; }
  void* workspace() const { return workspace_; }

 private:
  BlasHandles() {
    FATHOM_CUBLAS_CHECK(cublasCreate(&blas_));
    FATHOM_CUBLAS_CHECK(cublasSetStream(blas_, cuda::stream()));
    // Plain fp32 math: TF32 only where a GEMM asks for it (see set_gemm_allow_tf32).
    FATHOM_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
    FATHOM_CUBLAS_CHECK(cublasLtCreate(&lt_));
    workspace_ = cuda::CachingAllocator::instance().allocate(workspace_bytes);
    FATHOM_CUBLAS_CHECK(cublasSetWorkspace(blas_, workspace_, workspace_bytes));
  }

  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace fathom::kernels
