// Scalar types: fathom::bf16 (bfloat16 usable on host and device, round-to-nearest-even) and the
// Precision trait that gives each element type its accumulator type and test tolerances.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <type_traits>

#include "fathom/core/config.hpp"

namespace fathom {

// bfloat16: the upper 16 bits of an IEEE float. Same layout as CUDA's __nv_bfloat16, so device
// code may reinterpret a bf16* as __nv_bfloat16*.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  FATHOM_HOST_DEVICE bf16(float f) : bits(round_from_float(f)) {}  // NOLINT: implicit by design
  FATHOM_HOST_DEVICE explicit bf16(double d) : bits(round_from_float(static_cast<float>(d))) {}
  FATHOM_HOST_DEVICE explicit bf16(int i) : bits(round_from_float(static_cast<float>(i))) {}

  FATHOM_HOST_DEVICE operator float() const { return to_float(bits); }  // NOLINT

  static constexpr bf16 from_bits(std::uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }

  FATHOM_HOST_DEVICE static float to_float(std::uint16_t b) {
    std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
    float f;
#if defined(__CUDA_ARCH__)
    f = __uint_as_float(u);
#else
    std::memcpy(&f, &u, sizeof f);
#endif
    return f;
  }

  // Round to nearest, ties to even; NaN stays a (quiet) NaN with its sign and upper payload bits,
  // infinities stay infinite.
  FATHOM_HOST_DEVICE static std::uint16_t round_from_float(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // The hardware conversion (one instruction, where the integer rounding below is eight) rounds
    // every number the same way; a NaN takes the integer path, whose bits the hardware's canonical
    // NaN would not keep.
    if (f != f) return quiet_nan_bits(__float_as_uint(f));
    std::uint16_t out;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(out) : "f"(f));
    return out;
#else
    std::uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(f);
#else
    std::memcpy(&u, &f, sizeof u);
#endif
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return quiet_nan_bits(u);
    std::uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return static_cast<std::uint16_t>(u >> 16);
#endif
  }
  // The bf16 of a float NaN's bits u: its upper half, made quiet.
  FATHOM_HOST_DEVICE static constexpr std::uint16_t quiet_nan_bits(std::uint32_t u) {
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  }

  friend std::ostream& operator<<(std::ostream& os, bf16 v) { return os << static_cast<float>(v); }
};

static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);

// Precision<T>: how arithmetic on T is carried out and checked.
//   accum       type that reductions, norms and losses accumulate in
//   rtol, atol  tolerances for comparing a T result with a double reference
//   name        short name for messages and tests
template <class T>
struct Precision;

template <>
struct Precision<double> {
  using accum = double;
  static constexpr double rtol = 1e-10, atol = 1e-12;
  static constexpr const char* name = "fp64";
};
template <>
struct Precision<float> {
  using accum = float;
  static constexpr double rtol = 1e-4, atol = 1e-5;
  static constexpr const char* name = "fp32";
};
template <>
struct Precision<bf16> {
  using accum = float;
  static constexpr double rtol = 2e-2, atol = 2e-2;
  static constexpr const char* name = "bf16";
};

template <class T>
using accum_t = typename Precision<T>::accum;

template <class T>
concept FloatingScalar = std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, bf16>;

// Scalar conversion that works for bf16, float, double and integers alike.
template <class To, class From>
FATHOM_HOST_DEVICE inline To scalar_cast(From v) {
  if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<From, bf16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace fathom

template <>
class std::numeric_limits<fathom::bf16> {
 public:
  static constexpr bool is_specialized = true;
  static constexpr fathom::bf16 lowest() { return fathom::bf16::from_bits(0xff7f); }
  static constexpr fathom::bf16 max() { return fathom::bf16::from_bits(0x7f7f); }
  static constexpr fathom::bf16 min() { return fathom::bf16::from_bits(0x0080); }
  static constexpr fathom::bf16 epsilon() { return fathom::bf16::from_bits(0x3c00); }  // 2^-7
  static constexpr fathom::bf16 infinity() { return fathom::bf16::from_bits(0x7f80); }
  static constexpr fathom::bf16 quiet_NaN() { return fathom::bf16::from_bits(0x7fc0); }
  static constexpr int digits = 8;
};
