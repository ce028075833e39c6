// detail::run_beside: a backward's work that only writes gradients nothing needs until later (the
// weight gradients of a linear layer), queued on CUDA's side stream (cuda::SideStream) so that it
// overlaps the rest of the backward; run in place on the CPU, or with FATHOM_BACKWARD_OVERLAP=0.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#include "fathom/autograd/var.hpp"
#if defined(__CUDACC__)
#include "fathom/core/cuda_side_stream.hpp"
#endif

namespace fathom::autograd::detail {

enum class Beside { start, extend };

// Runs fn, which writes gradients and reads the tensors `keep` (and nothing else that the main
// stream may free or overwrite). On CUDA, with overlap on, fn's work is queued on the side stream
// (a new entry, or added to the open one: `how`) and `keep` is held until the main stream has
// waited for it; returns the entry's number, which the slots whose gradients fn writes record
// (mark_beside), so that whatever touches those gradients on the main stream waits first
// (GradSlot::wait_side). Returns 0 when fn ran in place. Every gradient buffer fn writes must exist
// before the call: allocating it is main-stream work.
template <class D, class Fn, class... Keep>
std::uint64_t run_beside(Beside how, Fn&& fn, const Keep&... keep) {
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<D, Cuda>) {
    auto& side = cuda::SideStream::instance();
    if (side.enabled()) {
      auto hold = [](const auto& t) {
        using Held = std::decay_t<decltype(t)>;
        return cuda::SideStream::Held{std::make_shared<Held>(t),
                                      reinterpret_cast<const char*>(t.data()), t.bytes()};
      };
      std::vector<cuda::SideStream::Held> held;
      ((keep.defined() ? held.push_back(hold(keep)) : void()), ...);
      return how == Beside::start ? side.start(fn, std::move(held))
                                  : side.extend(fn, std::move(held));
    }
  }
#endif
  (void)how;
  ((void)keep, ...);
  fn();
  return 0;
}

// The slots (null ones skipped) record that work `entry` of run_beside writes their gradients.
template <class... Slots>
void mark_beside(std::uint64_t entry, Slots*... slots) {
  ((slots ? (void)(slots->side_entry = entry) : void()), ...);
}

}  // namespace fathom::autograd::detail
