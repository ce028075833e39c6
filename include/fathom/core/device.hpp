// Device tags. A tag is an empty type that selects a backend at compile time; kernels overload on
// it (kernels::op(Cpu{}, params) / kernels::op(Cuda{}, params)).
#pragma once

#include <concepts>
#include <string_view>

namespace fathom {

struct Cpu {
  static constexpr std::string_view name = "cpu";
};
struct Cuda {
  static constexpr std::string_view name = "cuda";
};

template <class D>
concept DeviceTag = std::same_as<D, Cpu> || std::same_as<D, Cuda>;

}  // namespace fathom
