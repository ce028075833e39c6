// Compile-only check: <fathom/cuda.hpp> and device code using fathom's host/device types build
// with nvcc for every architecture fathom targets. Nothing here runs.
#include <fathom/cuda.hpp>

namespace {

// Device code touching what fathom promises works on the device: bf16 conversion both ways and
// the counter-based RNG.
__global__ void cuda_compile_kernel(fathom::bf16* out, float* noise, int n,
                                    unsigned long long seed) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    float x = static_cast<float>(out[i]);
    out[i] = fathom::bf16(x * 0.5f);
    noise[i] = static_cast<float>(fathom::rng::normal(seed, static_cast<unsigned long long>(i)));
  }
}

}  // namespace

// Host side: a launch on fathom's stream, so the launch syntax and the runtime header compile too.
void fathom_cuda_compile_launch(fathom::bf16* out, float* noise, int n) {
  cuda_compile_kernel<<<(n + 255) / 256, 256, 0, fathom::cuda::stream()>>>(out, noise, n, 1234u);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}
