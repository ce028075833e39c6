// Memory: the per-device memory interface (DeviceMemory<D>), the host allocator, and Storage, the
// reference-counted buffer that tensors share. The CUDA specialization, DeviceMemory<Cuda>, is in
// core/cuda_runtime.hpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

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
//   static std::uint64_t available()  bytes that can still be allocated, an estimate made without
//                                     allocating; 0 when the device cannot tell
template <class D>
struct DeviceMemory;

namespace memory {

// Bytes the host can still give this process without swapping: /proc/meminfo's MemAvailable,
// lowered to what a cgroup (v2) limit leaves, else the free physical pages; 0 when unknown.
inline std::uint64_t host_available_bytes() {
  std::uint64_t available = 0;
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        available = static_cast<std::uint64_t>(kb) * 1024;
        break;
      }
    std::fclose(f);
  }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
  if (available == 0) {
    const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
      available = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  }
#endif
  auto read_number = [](const char* path, unsigned long long& value) {
    std::FILE* f = std::fopen(path, "r");
    if (!f) return false;
    const bool ok = std::fscanf(f, "%llu", &value) == 1;  // "max" (no limit) reads as no number
    std::fclose(f);
    return ok;
  };
  unsigned long long limit = 0, current = 0;
  if (read_number("/sys/fs/cgroup/memory.max", limit) &&
      read_number("/sys/fs/cgroup/memory.current", current)) {
    const std::uint64_t left = limit > current ? limit - current : 0;
    if (available == 0 || left < available) available = left;
  }
  return available;
}

// "12.3 GiB": a byte count for messages.
inline std::string gib_string(std::uint64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f GiB",
                static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// count * element_bytes, or the largest uint64 when that overflows (for require_available).
inline std::uint64_t saturating_bytes(std::uint64_t count, std::uint64_t element_bytes) {
  std::uint64_t bytes = 0;
  return __builtin_mul_overflow(count, element_bytes, &bytes) ? UINT64_MAX : bytes;
}

// Throws fathom::Error unless `bytes` more can be allocated on device D (as far as
// DeviceMemory<D>::available() can tell): "<what> needs 18.6 GiB of cpu memory, 9.2 GiB are
// available". Called before large allocations, so that a size that cannot fit is refused at once
// instead of filling the memory (or the swap) first.
template <class D>
void require_available(std::uint64_t bytes, const std::string& what) {
  const std::uint64_t available = DeviceMemory<D>::available();
  FATHOM_CHECK(available == 0 || bytes <= available,
               what << " needs " << gib_string(bytes) << " of " << D::name << " memory, "
                    << gib_string(available) << " are available");
}

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
    void* p = ::operator new (rounded, std::align_val_t{alignment}, std::nothrow);
    FATHOM_CHECK(p != nullptr, "host allocation of " << bytes << " bytes failed");
    return p;
  }
  static void deallocate(void* p, std::size_t) {
    ::operator delete (p, std::align_val_t{alignment});
  }
  static void to_host(void* dst, const void* src, std::size_t bytes) {
    std::memcpy(dst, src, bytes);
  }
  static void from_host(void* dst, const void* src, std::size_t bytes) {
    std::memcpy(dst, src, bytes);
  }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memmove(dst, src, bytes); }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
  static void fill_bytes(void* p, int byte, std::size_t bytes) { std::memset(p, byte, bytes); }
  static std::uint64_t available() { return memory::host_available_bytes(); }
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
