// Memory: the per-device memory interface (DeviceMemory<D>), the host allocator, and Storage, the
// reference-counted buffer that tensors share. The CUDA specialization, DeviceMemory<Cuda>, is in
// core/cuda_runtime.hpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"

namespace fathom {

// DeviceMemory<D> models, for a device tag D:
//   static void* allocate(std::size_t bytes)            bytes > 0; aligned to at least 256 bytes
//   static void deallocate(void* p, std::size_t bytes)  p from allocate with the same bytes
//   static void to_host(void* dst, const void* src, std::size_t bytes)    device -> host
//   static void from_host(void* dst, const void* src, std::size_t bytes)  host -> device
//   static void copy(void* dst, const void* src, std::size_t bytes)       device -> device
//   static void zero(void* p, std::size_t bytes)
//   static void fill_bytes(void* p, int byte, std::size_t bytes)
template <class D>
struct DeviceMemory;

namespace memory {

// A testing aid: while on, every new Storage is filled with 0xFF bytes, which read as NaN in
// float, double and bf16, so a kernel that reads memory it was meant to overwrite shows up as a
// NaN in its result rather than passing on memory that happened to hold zeros.
inline std::atomic<bool>& poison_flag() {
  static std::atomic<bool> on{false};
  return on;
}
inline bool poison_new_buffers() { return poison_flag().load(std::memory_order_relaxed); }

// Turns poisoning on for its lifetime (then restores what was set before).
class PoisonNewBuffers {
 public:
  PoisonNewBuffers() : previous_(poison_flag().exchange(true)) {}
  ~PoisonNewBuffers() { poison_flag().store(previous_); }
  PoisonNewBuffers(const PoisonNewBuffers&) = delete;
  PoisonNewBuffers& operator=(const PoisonNewBuffers&) = delete;

 private:
  bool previous_;
};

}  // namespace memory

template <>
struct DeviceMemory<Cpu> {
  static constexpr std::size_t alignment = 256;
  static void* allocate(std::size_t bytes) {
    std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = ::operator new(rounded, std::align_val_t{alignment}, std::nothrow);
    FATHOM_CHECK(p != nullptr, "host allocation of " << bytes << " bytes failed");
    return p;
  }
  static void deallocate(void* p, std::size_t) { ::operator delete(p, std::align_val_t{alignment}); }
  static void to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memmove(dst, src, bytes); }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
  static void fill_bytes(void* p, int byte, std::size_t bytes) { std::memset(p, byte, bytes); }
};

// A buffer of bytes on device D, freed when the last tensor that views it goes away.
template <class D>
class Storage {
 public:
  explicit Storage(std::size_t bytes) : bytes_(bytes) {
    data_ = bytes_ ? DeviceMemory<D>::allocate(bytes_) : nullptr;
    if (data_ && memory::poison_new_buffers()) DeviceMemory<D>::fill_bytes(data_, 0xFF, bytes_);
  }
  ~Storage() {
    if (data_) DeviceMemory<D>::deallocate(data_, bytes_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace fathom
