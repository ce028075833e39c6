// What the [cuda] kernel tests add to kernels/support.hpp: device copies placed on or off the
// 16-byte grid, and GEMM autotuning set for one scope.
#pragma once

#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/gemm.cuh>

#include <cstdint>
#include <vector>

#include "kernels/support.hpp"

namespace fathom::test {

template <class T>
Tensor<T, Cuda> to_device(const std::vector<T>& v) {
  return Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(v.size())}, v);
}

// A device copy of v in T, starting `offset` elements into its buffer (offset 1 puts the data off
// the 16-byte grid, so the kernels take their element-at-a-time path).
template <class T>
struct DeviceArray {
  Tensor<T, Cuda> buffer;
  std::int64_t offset = 0;
  template <class U>
  DeviceArray(const std::vector<U>& v, std::int64_t off) : offset(off) {
    std::vector<T> host(v.size() + static_cast<std::size_t>(off), scalar_cast<T>(0.0));
    for (std::size_t i = 0; i < v.size(); ++i)
      host[i + static_cast<std::size_t>(off)] = scalar_cast<T>(v[i]);
    buffer = to_device(host);
  }
  T* data() const { return buffer.data() + offset; }
  std::vector<T> values() const {
    auto all = buffer.to_vector();
    return {all.begin() + offset, all.end()};
  }
};

// Turns GEMM autotuning on or off for one scope, and back as it was after (a failed check too).
struct AutotuneScope {
  explicit AutotuneScope(bool on) : previous(kernels::gemm_autotune()) {
    kernels::set_gemm_autotune(on);
  }
  ~AutotuneScope() { kernels::set_gemm_autotune(previous); }
  AutotuneScope(const AutotuneScope&) = delete;
  AutotuneScope& operator=(const AutotuneScope&) = delete;
  bool previous;
};

}  // namespace fathom::test
