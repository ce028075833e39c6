// fathom with the CUDA backend: everything in <fathom/fathom.hpp> plus the CUDA kernels that the
// Cuda device tag dispatches to. Compile with nvcc.
#pragma once

#if !defined(__CUDACC__)
#error "<fathom/cuda.hpp> holds CUDA kernels: compile this translation unit with nvcc (a .cu file)"
#endif

#include "fathom/fathom.hpp"
#include "fathom/core/cuda_runtime.hpp"
