// fathom with the CUDA backend: everything in <fathom/fathom.hpp> plus the CUDA kernels that the
// Cuda device tag dispatches to. Compile with nvcc. (Each op header brings its own kernels when
// compiled by nvcc; this header adds the runtime, the tensor primitives and the optimizers.)
#pragma once

#if !defined(__CUDACC__)
#error "<fathom/cuda.hpp> holds CUDA kernels: compile this translation unit with nvcc (a .cu file)"
#endif

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/cuda/optimizer.cuh"
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/cuda/reduce.cuh"
#include "fathom/fathom.hpp"
