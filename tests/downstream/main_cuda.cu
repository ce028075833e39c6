// A CUDA consumer of fathom: compiles <fathom/cuda.hpp> with nvcc and links fathom::cuda (the
// CUDA runtime and cuBLAS come through the target). Built, not run, where no GPU is present.
#include <fathom/cuda.hpp>

#include <cstdio>

__global__ void scale_bf16(fathom::bf16* x, int n, float s) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = fathom::bf16(static_cast<float>(x[i]) * s);
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("fathom downstream (cuda): built; no GPU to run on\n");
    return 0;
  }
  fathom::bf16* x = nullptr;
  FATHOM_CUDA_CHECK(cudaMalloc(&x, 256 * sizeof(fathom::bf16)));
  scale_bf16<<<1, 256, 0, fathom::cuda::stream()>>>(x, 256, 0.5f);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  fathom::cuda::synchronize();
  FATHOM_CUDA_CHECK(cudaFree(x));
  std::printf("fathom downstream (cuda): ok\n");
  return 0;
}
