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

constexpr int kMaxOptimizerSlots = 160;  // 160 * 56 bytes + offsets: well under the 32 KiB param limit

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
    if (table.begin[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <class T>
__global__ void adam_kernel(const __grid_constant__ SlotTable<T> table, AdamHyper h, accum_t<T> bias1,
                            accum_t<T> bias2) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(h.grad_scale_device ? *h.grad_scale_device : h.grad_scale);
  const std::int64_t total = table.begin[table.count];
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int s = find_slot(table, i);
    const auto& t = table.slots[s];
    const std::int64_t j = i - table.begin[s];
    A w = t.master ? t.master[j] : scalar_cast<A>(t.param[j]);
    A g = scalar_cast<A>(t.grad[j]) * scale;
    A m = t.state0[j], v = t.state1[j];
    w = adam_update<A>(w, g, m, v, static_cast<A>(h.lr), static_cast<A>(h.beta1), static_cast<A>(h.beta2),
                       static_cast<A>(h.eps), static_cast<A>(t.weight_decay), h.decoupled, bias1, bias2);
    t.state0[j] = m;
    t.state1[j] = v;
    if (t.master) t.master[j] = w;
    t.param[j] = scalar_cast<T>(w);
  }
}

template <class T>
__global__ void sgd_kernel(const __grid_constant__ SlotTable<T> table, SgdHyper h) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(h.grad_scale_device ? *h.grad_scale_device : h.grad_scale);
  const std::int64_t total = table.begin[table.count];
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int s = find_slot(table, i);
    const auto& t = table.slots[s];
    const std::int64_t j = i - table.begin[s];
    A w = t.master ? t.master[j] : scalar_cast<A>(t.param[j]);
    A g = scalar_cast<A>(t.grad[j]) * scale;
    w = sgd_update<A>(w, g, t.state0 ? t.state0 + j : nullptr, static_cast<A>(h.lr),
                      static_cast<A>(h.momentum), static_cast<A>(h.dampening),
                      static_cast<A>(t.weight_decay), h.nesterov, h.first_step);
    if (t.master) t.master[j] = w;
    t.param[j] = scalar_cast<T>(w);
  }
}

template <class T, class Launch>
void for_each_table(OptimizerSlot<T>* slots, int count, Launch&& launch) {
  for (int first = 0; first < count; first += kMaxOptimizerSlots) {
    SlotTable<T> table{};
    table.count = std::min(kMaxOptimizerSlots, count - first);
    table.begin[0] = 0;
    for (int s = 0; s < table.count; ++s) {
      table.slots[s] = slots[first + s];
      table.begin[s + 1] = table.begin[s] + slots[first + s].n;
    }
    if (table.begin[table.count] == 0) continue;
    const std::int64_t total = table.begin[table.count];
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<std::int64_t>((total + threads - 1) / threads, 132 * 16));
    launch(table, blocks, threads);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace detail

template <class T>
void adam_step(Cuda, const AdamParams<T>& p) {
  using A = accum_t<T>;
  const auto& h = p.hyper;
  const A bias1 = static_cast<A>(1.0 - std::pow(h.beta1, static_cast<double>(h.step)));
  const A bias2 = static_cast<A>(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
  detail::for_each_table(p.slots, p.count, [&](const detail::SlotTable<T>& table, int blocks, int threads) {
    detail::adam_kernel<T><<<blocks, threads, 0, cuda::stream()>>>(table, h, bias1, bias2);
  });
}

template <class T>
void sgd_step(Cuda, const SgdParams<T>& p) {
  detail::for_each_table(p.slots, p.count, [&](const detail::SlotTable<T>& table, int blocks, int threads) {
    detail::sgd_kernel<T><<<blocks, threads, 0, cuda::stream()>>>(table, p.hyper);
  });
}

}  // namespace fathom::kernels
