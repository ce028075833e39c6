// A consumer of fathom's NCCL communicator: includes <fathom/dist/nccl.hpp> and links fathom::nccl
// (find_package(fathom COMPONENTS nccl)). Runs anywhere: it asks NCCL its version, which needs no
// GPU.
#include <fathom/dist/nccl.hpp>

#include <cstdio>

int main() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess || version <= 0) {
    std::printf("fathom downstream (nccl): ncclGetVersion failed\n");
    return 1;
  }
  std::printf("fathom downstream (nccl): ok, NCCL %d\n", version);
  return 0;
}
