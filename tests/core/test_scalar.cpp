// Tests for fathom::bf16 (include/fathom/core/scalar.hpp): round-to-nearest-even from float on
// hand-picked values, ties, NaN and infinities, and a random sweep against a reference rounding
// computed in double arithmetic.
#include <fathom/core/scalar.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "support/catch.hpp"

using fathom::bf16;

namespace {

float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

bool is_bf16_nan(std::uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x007fu) != 0; }

// The bf16 value nearest to a finite float, ties to even, computed without looking at bits:
// bf16 keeps 8 significant bits, so within the binade [2^e, 2^(e+1)) its spacing is 2^(e-7)
// (and 2^-133 below the smallest normal, 2^-126). Dividing by the spacing is exact in double;
// nearbyint rounds half to even in the default rounding mode; beyond the largest bf16,
// (2 - 2^-7) * 2^127, the value rounds to infinity when it is at least halfway to 2^128.
std::uint16_t reference_bits(float f) {
  const double x = f;
  if (x == 0.0) return std::signbit(x) ? 0x8000u : 0x0000u;
  int e = 0;
  std::frexp(std::abs(x), &e);  // |x| = m * 2^e, m in [0.5, 1): binade exponent is e - 1
  const int spacing_exp = std::max(e - 1, -126) - 7;
  const double spacing = std::ldexp(1.0, spacing_exp);
  double r = std::nearbyint(x / spacing) * spacing;
  const double max_bf16 = std::ldexp(2.0 - std::ldexp(1.0, -7), 127);
  if (std::abs(r) > max_bf16) r = std::copysign(std::numeric_limits<double>::infinity(), x);
  return static_cast<std::uint16_t>(bits_of(static_cast<float>(r)) >> 16);
}

}  // namespace

TEST_CASE("bf16 keeps values it can represent exactly", "[core][scalar][bf16]") {
  for (float f : {1.0f, -1.0f, 0.5f, 3.0f, -0.15625f, 256.0f, 1.5f * 1024.0f}) {
    INFO("f = " << f);
    CHECK(static_cast<float>(bf16(f)) == f);
  }
  CHECK(bf16(1.0f).bits == 0x3f80u);
  CHECK(bf16(-2.0f).bits == 0xc000u);
  CHECK(bf16(0.0f).bits == 0x0000u);
  CHECK(bf16(-0.0f).bits == 0x8000u);
}

TEST_CASE("bf16 rounds to nearest, ties to even", "[core][scalar][bf16]") {
  struct Case {
    std::uint32_t in;
    std::uint16_t out;
  };
  const Case cases[] = {
      {0x3f808000u, 0x3f80u},  // 1 + 2^-8: halfway between 1 and 1 + 2^-7, tie goes to even 1
      {0x3f818000u, 0x3f82u},  // halfway between odd 0x3f81 and even 0x3f82: up to even
      {0xbf808000u, 0xbf80u},  // negative tie, down in magnitude to even
      {0xbf818000u, 0xbf82u},  // negative tie, up in magnitude to even
      {0x3f808001u, 0x3f81u},  // just above the tie: up
      {0x3f807fffu, 0x3f80u},  // just below the tie: down
      {0x3f7fffffu, 0x3f80u},  // largest float below 1 rounds up into the next binade
      {0x3fffc000u, 0x4000u},  // 1.998046875, above the tie: carries into the next binade
      {0x7f7f7fffu, 0x7f7fu},  // just below halfway to 2^128: the largest bf16
      {0x7f7f8000u, 0x7f80u},  // halfway past the largest bf16 (odd): overflows to +inf
      {0x7f7fffffu, 0x7f80u},  // FLT_MAX overflows to +inf
      {0xff7fffffu, 0xff80u},  // -FLT_MAX overflows to -inf
      {0x00008000u, 0x0000u},  // subnormal tie down to even (zero)
      {0x00018000u, 0x0002u},  // subnormal tie up to even
      {0x80008001u, 0x8001u},  // negative subnormal above the tie
      {0x007fffffu, 0x0080u},  // largest subnormal rounds up to the smallest normal
  };
  for (const Case& c : cases) {
    INFO("input bits 0x" << std::hex << c.in << ", expected 0x" << c.out);
    CHECK(bf16(float_from_bits(c.in)).bits == c.out);
  }
}

TEST_CASE("bf16 keeps infinities and NaNs", "[core][scalar][bf16]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bf16(inf).bits == 0x7f80u);
  CHECK(bf16(-inf).bits == 0xff80u);
  CHECK(std::isinf(static_cast<float>(bf16(inf))));

  // Quiet NaN, negative NaN, and NaNs whose payload sits only in the low 16 bits (plain
  // truncation or rounding would turn these into infinity).
  for (std::uint32_t nan_bits :
       {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7fffffffu}) {
    INFO("NaN bits 0x" << std::hex << nan_bits);
    const bf16 b(float_from_bits(nan_bits));
    CHECK(is_bf16_nan(b.bits));
    CHECK(std::isnan(static_cast<float>(b)));
    CHECK((b.bits & 0x8000u) == ((nan_bits >> 16) & 0x8000u));  // sign kept
  }
  CHECK(std::isnan(static_cast<float>(std::numeric_limits<bf16>::quiet_NaN())));
  CHECK(static_cast<float>(std::numeric_limits<bf16>::infinity()) == inf);
}

TEST_CASE("bf16 -> float -> bf16 is the identity on every bf16", "[core][scalar][bf16]") {
  int mismatches = 0;
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = bf16::from_bits(bits);
    const bf16 back(f);
    if (is_bf16_nan(bits)) {
      mismatches += !is_bf16_nan(back.bits);
    } else {
      mismatches += back.bits != bits;
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("bf16 rounding matches a reference computed in double", "[core][scalar][bf16]") {
  std::mt19937 gen(20240520u);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  std::uniform_int_distribution<std::uint32_t> high_half(0, 0xffffu);
  int checked = 0, mismatches = 0, ties = 0;
  for (int i = 0; i < 400000; ++i) {
    std::uint32_t u = any_bits(gen);
    // A quarter of the samples are exact ties and a quarter sit one ulp from a tie, where
    // a wrong rounding rule would show.
    if (i % 4 == 1) u = (high_half(gen) << 16) | 0x8000u;
    if (i % 4 == 2) u = (high_half(gen) << 16) | ((i & 8) ? 0x8001u : 0x7fffu);
    const float f = float_from_bits(u);
    if (std::isnan(f)) continue;
    ties += (u & 0xffffu) == 0x8000u;
    const std::uint16_t got = bf16(f).bits, want = reference_bits(f);
    if (got != want && mismatches < 5) {
      UNSCOPED_INFO("input 0x" << std::hex << u << ": got 0x" << got << ", want 0x" << want);
    }
    mismatches += got != want;
    ++checked;
  }
  CHECK(checked > 390000);
  CHECK(ties > 90000);
  CHECK(mismatches == 0);
}

TEST_CASE("bf16 conversions from double and int round the same way", "[core][scalar][bf16]") {
  std::mt19937 gen(7u);
  std::uniform_real_distribution<float> dist(-1000.0f, 1000.0f);
  for (int i = 0; i < 1000; ++i) {
    const float f = dist(gen);
    CHECK(bf16(static_cast<double>(f)).bits == bf16(f).bits);
  }
  CHECK(bf16(257).bits == bf16(257.0f).bits);  // 257 needs 9 bits: a tie, rounds to even 256
  CHECK(static_cast<float>(bf16(257)) == 256.0f);
  CHECK(static_cast<float>(bf16(259)) == 260.0f);  // tie between 258 and 260: to even 260
  CHECK(fathom::scalar_cast<float>(bf16(3.5f)) == 3.5f);
  CHECK(fathom::scalar_cast<bf16>(3.5).bits == bf16(3.5f).bits);
}
