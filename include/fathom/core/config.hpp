// Compiler glue: host/device annotations that vanish outside nvcc.
#pragma once

#if defined(__CUDACC__)
#define FATHOM_HOST_DEVICE __host__ __device__
#define FATHOM_DEVICE __device__
#else
#define FATHOM_HOST_DEVICE
#define FATHOM_DEVICE
#endif
