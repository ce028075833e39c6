// Backward overlap, as autograd sees it: some of a backward's work (the weight gradients' GEMMs)
// may be queued on a second stream of the device while the rest of the backward goes on
// (cuda::SideStream). Autograd is device-generic, so it reaches that machinery through these
// hooks, which the CUDA side sets when it is first used; unset (the CPU, or no CUDA work beside),
// every call here does nothing.
#pragma once

#include <cstdint>

namespace fathom::overlap {

struct Hooks {
  // The device's main stream waits for all work queued beside it; what that work held is freed.
  void (*join)() = nullptr;
  // join() when work queued beside may still read or write the buffer at `data`.
  void (*release)(const void* data) = nullptr;
  // The number of the batch of work queued beside that is not yet joined (0: none).
  std::uint64_t (*open_entry)() = nullptr;
};

inline Hooks& hooks() {
  static Hooks h;
  return h;
}

inline void join() {
  if (auto f = hooks().join) f();
}
inline void release(const void* data) {
  if (auto f = hooks().release) f(data);
}
// Whether work numbered `entry` (as open_entry gave it when it was queued) may still be running.
inline bool pending(std::uint64_t entry) {
  auto f = hooks().open_entry;
  return entry != 0 && f && f() == entry;
}

}  // namespace fathom::overlap
