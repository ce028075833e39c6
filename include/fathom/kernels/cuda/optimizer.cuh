// CUDA optimizer updates: one launch updates every parameter tensor (multi-tensor apply). The
// slot table travels as a kernel parameter, up to kMaxSlots tensors a launch.
#pragma once

#if !defined(__CUDACC__)
#error "kernels/cuda/optimizer.cuh must be compiled by nvcc"
#endif

#include <algorithm>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/optimizer.hpp"

namespace fathom::kernels {

namespace detail {

// 160 * 56 bytes + offsets: well under the 32 KiB parameter limit.
constexpr int kMaxOptimizerSlots = 160;

template <class T>
struct SlotTable {
  OptimizerSlot<T> slots[kMaxOptimizerSlots];
  std::int64_t begin[kMaxOptimizerSlots + 1];  // prefix offsets into the virtual concatenation
  int count;
};

// Index of the slot holding virtual element i (begin[s] <= i < begin[s + 1]).
template <class T>
__device__ inline int find_slot(const SlotTable<T>& table, std::int64_t i) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (table.begin[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Every element of the table through `update` (AdamUpdate or SgdUpdate), a grid-stride loop over
// the tensors' virtual concatenation.
template <class T, class Update>
__global__ void update_kernel(const __grid_constant__ SlotTable<T> table, Update update) {
  const auto scale = update.grad_scale.value();
  const std::int64_t total = table.begin[table.count];
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int s = find_slot(table, i);
    update_element(table.slots[s], i - table.begin[s], update, scale);
  }
}

// One launch of update_kernel per kMaxOptimizerSlots tensors.
template <class T, class Update>
void launch_update(OptimizerSlot<T>* slots, int count, const Update& update) {
  for (int first = 0; first < count; first += kMaxOptimizerSlots) {
    SlotTable<T> table{};
    table.count = std::min(kMaxOptimizerSlots, count - first);
    table.begin[0] = 0;
    for (int s = 0; s < table.count; ++s) {
      table.slots[s] = slots[first + s];
      table.begin[s + 1] = table.begin[s] + slots[first + s].n;
    }
    const std::int64_t total = table.begin[table.count];
    if (total == 0) continue;
    const int threads = 256;
    const int blocks =
        static_cast<int>(std::min<std::int64_t>((total + threads - 1) / threads, 132 * 16));
    update_kernel<<<blocks, threads, 0, cuda::stream()>>>(table, update);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace detail

template <class T>
void adam_step(Cuda, const AdamParams<T>& p) {
  detail::launch_update(p.slots, p.count, AdamUpdate<accum_t<T>>(p.hyper));
}

template <class T>
void sgd_step(Cuda, const SgdParams<T>& p) {
  detail::launch_update(p.slots, p.count, SgdUpdate<accum_t<T>>(p.hyper));
}

}  // namespace fathom::kernels
