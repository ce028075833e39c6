// 8-bit floating point: fathom::fp8_e4m3 and fathom::fp8_e5m2 (the OCP FP8 formats that Hopper's
// tensor cores multiply), usable on host and device, with saturating round-to-nearest-even
// conversion from float. Same layout as CUDA's __nv_fp8_e4m3 / __nv_fp8_e5m2 (one byte).
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <type_traits>

#include "fathom/core/config.hpp"

namespace fathom {

// The two encodings. E4M3: 4 exponent bits (bias 7), 3 mantissa bits, no infinities, one NaN per
// sign (S.1111.111), largest finite 448. E5M2: 5 exponent bits (bias 15), 2 mantissa bits, IEEE
// style infinities and NaNs, largest finite 57344.
enum class Fp8Format : std::uint8_t { e4m3, e5m2 };

namespace detail {

FATHOM_HOST_DEVICE inline std::uint32_t fp8_float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FATHOM_HOST_DEVICE inline float fp8_bits_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

}  // namespace detail

// What a format's bit fields mean.
//   mantissa_bits, bias    the field widths' consequences
//   max_code               the largest finite magnitude's code (sign bit clear)
//   nan_code               the code written for NaN (sign bit clear; the sign is kept)
//   max_value              the largest finite value
template <Fp8Format F>
struct Fp8Traits;

template <>
struct Fp8Traits<Fp8Format::e4m3> {
  static constexpr int mantissa_bits = 3, bias = 7;
  static constexpr std::uint8_t max_code = 0x7e, nan_code = 0x7f;
  static constexpr float max_value = 448.0f;
  static constexpr bool has_infinity = false;
  static constexpr const char* name = "e4m3";
};

template <>
struct Fp8Traits<Fp8Format::e5m2> {
  static constexpr int mantissa_bits = 2, bias = 15;
  static constexpr std::uint8_t max_code = 0x7b, nan_code = 0x7f;
  static constexpr float max_value = 57344.0f;
  static constexpr bool has_infinity = true;
  static constexpr const char* name = "e5m2";
};

// float -> code: round to nearest, ties to even; magnitudes above the largest finite value
// (infinities included) saturate to it, as fp8 training wants (CUDA's __NV_SATFINITE); NaN stays
// NaN with its sign.
template <Fp8Format F>
FATHOM_HOST_DEVICE inline std::uint8_t fp8_encode(float f) {
  using Tr = Fp8Traits<F>;
  constexpr int M = Tr::mantissa_bits;
  const std::uint32_t u = detail::fp8_float_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint8_t>(sign | Tr::nan_code);
  if (a >= detail::fp8_float_bits(Tr::max_value))
    return static_cast<std::uint8_t>(sign | Tr::max_code);
  const int fe = static_cast<int>(a >> 23);  // float's biased exponent
  const std::uint32_t mant = a & 0x7fffffu;
  std::uint32_t full, shift, base;
  if (fe - 127 + Tr::bias >= 1) {  // a normal fp8: keep M of the 23 mantissa bits
    shift = 23 - M;
    full = mant;
    base = static_cast<std::uint32_t>(fe - 127 + Tr::bias) << M;
  } else {  // a subnormal fp8 (or zero): the value in units of the smallest subnormal
    if (fe == 0) return sign;  // float subnormals are far below half the smallest fp8 subnormal
    shift = static_cast<std::uint32_t>(151 - Tr::bias - M - fe);
    if (shift > 24) return sign;  // below half the smallest subnormal
    full = mant | 0x800000u;
    base = 0;
  }
  std::uint32_t code = base + (full >> shift);
  const std::uint32_t dropped = full & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (dropped > half || (dropped == half && (code & 1u))) ++code;  // a carry moves the exponent
  if (code > Tr::max_code) code = Tr::max_code;
  return static_cast<std::uint8_t>(sign | code);
}

// code -> float, exact (every fp8 value is a float).
template <Fp8Format F>
FATHOM_HOST_DEVICE inline float fp8_decode(std::uint8_t c) {
  using Tr = Fp8Traits<F>;
  constexpr int M = Tr::mantissa_bits;
  const std::uint32_t sign = static_cast<std::uint32_t>(c & 0x80u) << 24;
  const std::uint32_t mag = c & 0x7fu;
  const std::uint32_t e = mag >> M, m = mag & ((1u << M) - 1u);
  if constexpr (Tr::has_infinity) {
    if (e == (1u << (7 - M)) - 1u)
      return detail::fp8_bits_float(sign | 0x7f800000u | (m ? 0x400000u : 0u));
  } else {
    if (mag == Tr::nan_code) return detail::fp8_bits_float(sign | 0x7fc00000u);
  }
  if (e == 0) {  // subnormal: m * 2^(1 - bias - M), exact in float
    const float unit =
        detail::fp8_bits_float(static_cast<std::uint32_t>(127 + 1 - Tr::bias - M) << 23);
    const float v = static_cast<float>(m) * unit;
    return sign ? -v : v;
  }
  return detail::fp8_bits_float(sign | ((e - Tr::bias + 127) << 23) | (m << (23 - M)));
}

// One fp8 value. Explicit from float (a lossy conversion), implicit to float (exact).
template <Fp8Format F>
struct Fp8 {
  static constexpr Fp8Format format = F;
  using traits = Fp8Traits<F>;
  std::uint8_t bits = 0;

  Fp8() = default;
  FATHOM_HOST_DEVICE explicit Fp8(float f) : bits(fp8_encode<F>(f)) {}
  FATHOM_HOST_DEVICE explicit Fp8(double d) : bits(fp8_encode<F>(static_cast<float>(d))) {}
  FATHOM_HOST_DEVICE operator float() const { return fp8_decode<F>(bits); }  // NOLINT

  static constexpr Fp8 from_bits(std::uint8_t b) {
    Fp8 r;
    r.bits = b;
    return r;
  }

  friend std::ostream& operator<<(std::ostream& os, Fp8 v) { return os << static_cast<float>(v); }
};

using fp8_e4m3 = Fp8<Fp8Format::e4m3>;
using fp8_e5m2 = Fp8<Fp8Format::e5m2>;

static_assert(sizeof(fp8_e4m3) == 1 && std::is_trivially_copyable_v<fp8_e4m3>);
static_assert(sizeof(fp8_e5m2) == 1 && std::is_trivially_copyable_v<fp8_e5m2>);

template <class T>
concept Fp8Scalar = std::same_as<T, fp8_e4m3> || std::same_as<T, fp8_e5m2>;

// The per-tensor scale that maps a tensor of absolute maximum `amax` onto the format's range,
// 2^-margin short of its largest finite value: scale = max_value / amax / 2^margin, so that
// quantize(x) = fp8(x * scale) and x ~ decode(q) / scale. An amax of zero, or one that is not
// finite, gives 1 (nothing to scale, or a tensor that has already failed: the NaN or infinity
// then shows in the loss); a scale that would overflow float is clamped to float's largest value.
template <Fp8Format F>
FATHOM_HOST_DEVICE inline float fp8_scale_from_amax(float amax, int margin) {
  const std::uint32_t bits = detail::fp8_float_bits(amax) & 0x7fffffffu;
  if (bits == 0 || bits >= 0x7f800000u) return 1.0f;
  float scale = Fp8Traits<F>::max_value / detail::fp8_bits_float(bits);
  // 2^-margin by the exponent field (margin small: a few powers of two)
  scale *= detail::fp8_bits_float(static_cast<std::uint32_t>(127 - margin) << 23);
  if (detail::fp8_float_bits(scale) >= 0x7f800000u) scale = 3.40282347e38f;
  return scale;
}

}  // namespace fathom
