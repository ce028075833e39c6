// cuda::SideStream: a second stream for work that nothing on fathom's stream needs until later,
// the backward's weight-gradient GEMMs above all. Those are compute-bound and wait on nothing
// after them but the optimizer, so queued beside the memory-bound kernels of the backward that
// follow them (SwiGLU's and the norms' backwards, attention's) the two share the GPU.
//
// How it stays correct, with one caching allocator whose frees are ordered on fathom's stream:
// - Work is queued beside in batches (entries). start() opens one: fathom's stream first waits
//   for the open entry (so at most one runs beside at a time, and its held buffers are freed),
//   then the side stream waits for everything fathom's stream has queued so far (the inputs are
//   ready, and every block the allocator hands out was last used by work queued before that),
//   then the work is queued on the side stream. extend() adds to the open entry without the wait.
// - An entry holds the tensors its work reads (keep), and blocks freed while its work is queued
//   go to the entry too (CachingAllocator::defer_frees); both are freed once fathom's stream has
//   waited for the entry, so no block the side stream may still touch is handed out before.
// - Autograd joins (fathom's stream waits for the open entry) before anything on fathom's stream
//   touches a buffer the entry writes or holds (overlap::Hooks), and at the end of a backward.
// So the results, bit for bit, and what a step allocates are those of the same work queued on
// one stream; FATHOM_BACKWARD_OVERLAP=0 (or set_enabled(false)) queues everything on one.
// One host thread drives the streams, as everywhere in fathom.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/overlap.hpp"

namespace fathom::cuda {

class SideStream {
 public:
  // A buffer held by an entry: `owner` keeps it alive (a Tensor, type-erased), [begin, begin +
  // bytes) is what it covers.
  struct Held {
    std::shared_ptr<const void> owner;
    const char* begin = nullptr;
    std::size_t bytes = 0;
  };

  static SideStream& instance() {
    static SideStream* s = new SideStream();  // never destroyed, as the allocator
    return *s;
  }

  // Whether work is queued beside at all (FATHOM_BACKWARD_OVERLAP, on unless "0").
  bool enabled() const { return enabled_; }
  void set_enabled(bool on) {
    join();
    enabled_ = on;
  }

  // Queues fn's work on the side stream as a new entry, holding `keep` (see the file comment);
  // returns the entry's number.
  template <class Fn>
  std::uint64_t start(Fn&& fn, std::vector<Held> keep) {
    join();
    ++serial_;
    queue(fn, std::move(keep));
    return serial_;
  }
  // The same, added to the open entry (a new one when none is open).
  template <class Fn>
  std::uint64_t extend(Fn&& fn, std::vector<Held> keep) {
    if (!open_) return start(std::forward<Fn>(fn), std::move(keep));
    queue(fn, std::move(keep));
    return serial_;
  }

  // fathom's stream waits for the open entry; what it held is freed.
  void join() {
    if (!open_) return;
    open_ = false;
    FATHOM_CUDA_CHECK(cudaStreamWaitEvent(stream_slot(), done_, 0));
    held_.clear();
    CachingAllocator::instance().release_deferred(deferred_);
  }
  // join() when the open entry holds the buffer at `data`.
  void release(const void* data) {
    if (!open_) return;
    const char* p = static_cast<const char*>(data);
    for (const Held& h : held_)
      if (p >= h.begin && p < h.begin + h.bytes) {
        join();
        return;
      }
  }
  std::uint64_t open_entry() const { return open_ ? serial_ : 0; }
  // Entries started so far (a count for tests and diagnostics).
  std::uint64_t entries_started() const { return serial_; }

 private:
  SideStream() {
    const char* v = std::getenv("FATHOM_BACKWARD_OVERLAP");
    enabled_ = !(v && std::strcmp(v, "0") == 0);
    overlap::Hooks& h = overlap::hooks();
    h.join = [] { instance().join(); };
    h.release = [](const void* data) { instance().release(data); };
    h.open_entry = [] { return instance().open_entry(); };
  }

  template <class Fn>
  void queue(Fn& fn, std::vector<Held> keep) {
    if (!side_) {
      // The same priority as fathom's stream: the work beside is as urgent, only independent.
      FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
      FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    }
    FATHOM_CUDA_CHECK(cudaEventRecord(fork_, stream_slot()));
    FATHOM_CUDA_CHECK(cudaStreamWaitEvent(side_, fork_, 0));
    open_ = true;
    for (Held& h : keep) held_.push_back(std::move(h));
    struct Beside {  // the side stream current and frees deferred, until fn returns or throws
      StreamGuard guard;
      std::vector<void*>* deferred;
      Beside(cudaStream_t s, std::vector<void*>* d) : guard(s), deferred(d) {
        CachingAllocator::instance().defer_frees(deferred);
      }
      ~Beside() { CachingAllocator::instance().defer_frees(nullptr); }
      Beside(const Beside&) = delete;
      Beside& operator=(const Beside&) = delete;
    };
    struct Done {  // the entry's event marks its end even when fn throws
      cudaStream_t side;
      cudaEvent_t done;
      ~Done() { (void)cudaEventRecord(done, side); }
    };
    Done done{side_, done_};
    Beside beside(side_, &deferred_);
    fn();
  }

  bool enabled_ = true;
  bool open_ = false;
  std::uint64_t serial_ = 0;
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_ = nullptr, done_ = nullptr;
  std::vector<Held> held_;
  std::vector<void*> deferred_;
};

}  // namespace fathom::cuda
