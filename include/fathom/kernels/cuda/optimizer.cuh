// CUDA optimizer updates: one launch updates every parameter tensor (multi-tensor apply). The
// slot table travels as a kernel parameter, up to kMaxSlots tensors a launch.
#pragma once

#if !defined(__CUDACC__)
#error "kernels/cuda/optimizer.cuh must be compiled by nvcc"
#endif

#include <algorithm>
#include <cstdint>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/env.hpp"
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/optimizer.hpp"

namespace fathom::kernels {

namespace detail {

// 160 * 56 bytes + offsets and pack counts: well under the 32 KiB parameter limit.
constexpr int kMaxOptimizerSlots = 160;
// Elements a thread updates with one load of each array: 16 bytes of fp32 state and master weights.
constexpr int kOptimizerPack = 4;

// Work items: each slot's first packs[s] items are packs of kOptimizerPack elements, the rest of
// its elements (all of them when its arrays are not aligned for packs) one item each.
template <class T>
struct SlotTable {
  OptimizerSlot<T> slots[kMaxOptimizerSlots];
  std::int64_t begin[kMaxOptimizerSlots + 1];  // prefix offsets of the work items
  std::int64_t packs[kMaxOptimizerSlots];
  int count;
};

// Index of the slot holding work item u (begin[s] <= u < begin[s + 1]).
template <class T>
__device__ inline int find_slot(const SlotTable<T>& table, std::int64_t u) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (table.begin[mid] <= u)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Elements [i, i + N) of t, each as update_element does it (the same arithmetic, so the same bits),
// with one vector load and store of each array.
template <int N, class T, class Update>
__device__ inline void update_pack(const OptimizerSlot<T>& t, std::int64_t i, const Update& update,
                                   accum_t<T> scale) {
  using A = accum_t<T>;
  A g[N];
  unpack(map_load<N>(t.grad + i), g);
  MapPack<A, N> w, s0{}, s1{};
  if (t.master) {
    w = map_load<N>(t.master + i);
  } else {
    unpack(map_load<N>(t.param + i), w.v);
  }
  if (t.state0) s0 = map_load<N>(t.state0 + i);
  if (t.state1) s1 = map_load<N>(t.state1 + i);
  const A wd = static_cast<A>(t.weight_decay);
#pragma unroll
  for (int j = 0; j < N; ++j)
    w.v[j] = update(w.v[j], g[j] * scale, wd, s0.v[j], s1.v[j], t.state0 != nullptr);
  if (t.state0) map_store<N>(t.state0 + i, s0);
  if (t.state1) map_store<N>(t.state1 + i, s1);
  if (t.master) map_store<N>(t.master + i, w);
  round_store<N>(t.param + i, w.v);
}

// Every work item of the table through `update` (AdamUpdate or SgdUpdate), a grid-stride loop over
// the items of the tensors' virtual concatenation.
template <class T, class Update>
__global__ void update_kernel(const __grid_constant__ SlotTable<T> table, Update update) {
  const auto scale = update.grad_scale.value();
  const std::int64_t total = table.begin[table.count];
  for (std::int64_t u = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int s = find_slot(table, u);
    const std::int64_t item = u - table.begin[s], packs = table.packs[s];
    if (item < packs) {
      update_pack<kOptimizerPack>(table.slots[s], item * kOptimizerPack, update, scale);
    } else {
      update_element(table.slots[s], packs * kOptimizerPack + (item - packs), update, scale);
    }
  }
}

// Whether p may be read kOptimizerPack elements of U at a time.
template <class U>
bool pack_aligned(const U* p) {
  return reinterpret_cast<std::uintptr_t>(p) % (sizeof(U) * kOptimizerPack) == 0;
}

// Whether aligned tensors are updated in packs (on by default; FATHOM_OPTIMIZER_PACKS=0, or a
// test, turns it off to compare the two ways, which give the same bits).
inline bool& optimizer_packs_setting() {
  static bool on = env_switch("FATHOM_OPTIMIZER_PACKS", true);
  return on;
}

// Tensors updated in packs so far (the tests check which way ran).
inline std::uint64_t& optimizer_packed_tensors() {
  static std::uint64_t count = 0;
  return count;
}

// Packs of slot t: all its whole packs when every array it has is aligned for them, else none.
template <class T>
std::int64_t slot_packs(const OptimizerSlot<T>& t) {
  if (!optimizer_packs_setting()) return 0;
  const bool aligned = pack_aligned(t.param) && pack_aligned(t.grad) && pack_aligned(t.master) &&
                       pack_aligned(t.state0) && pack_aligned(t.state1);
  return aligned ? t.n / kOptimizerPack : 0;
}

// One launch of update_kernel per kMaxOptimizerSlots tensors.
template <class T, class Update>
void launch_update(OptimizerSlot<T>* slots, int count, const Update& update) {
  for (int first = 0; first < count; first += kMaxOptimizerSlots) {
    SlotTable<T> table{};
    table.count = std::min(kMaxOptimizerSlots, count - first);
    table.begin[0] = 0;
    for (int s = 0; s < table.count; ++s) {
      const OptimizerSlot<T>& t = slots[first + s];
      table.slots[s] = t;
      table.packs[s] = slot_packs(t);
      optimizer_packed_tensors() += table.packs[s] > 0;
      table.begin[s + 1] =
          table.begin[s] + table.packs[s] + (t.n - table.packs[s] * kOptimizerPack);
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
