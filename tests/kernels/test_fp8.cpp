// Tests for fathom's fp8 types (include/fathom/core/fp8.hpp) and the CPU fp8 kernels
// (include/fathom/kernels/fp8.hpp): E4M3 and E5M2 conversions against hand-checked codes (the
// largest finite values, 0.5, subnormals, ties, saturation, NaN, signed zero), every code through
// decode and encode, encoding as the nearest value with ties to even against a brute-force search
// over all codes, the scale from amax, amax itself, quantize/dequantize error bounds and the
// transposed copy, and the reference fp8 GEMM against a double loop (its beta term read from C or
// from a separate c_in); the SwiGLU quantize passes against the activation kernels' values.
#include <fathom/kernels/fp8.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fathom/core/rng.hpp"
#include "kernels/support.hpp"
#include "support/catch.hpp"

namespace {

using fathom::bf16;
using fathom::Cpu;
using fathom::fp8_decode;
using fathom::fp8_e4m3;
using fathom::fp8_e5m2;
using fathom::fp8_encode;
using fathom::Fp8Format;
namespace kernels = fathom::kernels;

constexpr auto E4M3 = Fp8Format::e4m3;
constexpr auto E5M2 = Fp8Format::e5m2;

float nan_f() { return std::numeric_limits<float>::quiet_NaN(); }
float inf_f() { return std::numeric_limits<float>::infinity(); }

// Every finite value of format F that is >= 0, by code (codes 0 .. max_code).
template <Fp8Format F>
std::vector<double> finite_magnitudes() {
  std::vector<double> v;
  for (unsigned c = 0; c <= fathom::Fp8Traits<F>::max_code; ++c)
    v.push_back(fp8_decode<F>(static_cast<std::uint8_t>(c)));
  return v;
}

// The code the conversion must give for x (finite, |x| below the largest value), by brute force:
// the nearest magnitude, ties to the even code.
template <Fp8Format F>
std::uint8_t nearest_code(double x, const std::vector<double>& mags) {
  const double a = std::abs(x);
  std::size_t best = 0;
  for (std::size_t c = 1; c < mags.size(); ++c) {
    const double d = std::abs(mags[c] - a), db = std::abs(mags[best] - a);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return static_cast<std::uint8_t>((std::signbit(x) ? 0x80u : 0u) | best);
}

}  // namespace

TEST_CASE("fp8 E4M3 conversions match hand-checked codes", "[kernels][fp8]") {
  struct Case {
    float x;
    std::uint8_t code;
  };
  const Case cases[] = {
      {0.0f, 0x00},          {-0.0f, 0x80},     {1.0f, 0x38},    {0.5f, 0x30},
      {-2.0f, 0xc0},         {448.0f, 0x7e},    {-448.0f, 0xfe}, {240.0f, 0x77},
      {256.0f, 0x78},        {0.015625f, 0x08},  // 2^-6, the smallest normal
      {0.001953125f, 0x01},                      // 2^-9, the smallest subnormal
      {0.013671875f, 0x07},                      // 7 * 2^-9, the largest subnormal
      {1.0625f, 0x38},                           // tie between 1 (0x38) and 1.125 (0x39): to even
      {1.1875f, 0x3a},        // tie between 1.125 (0x39) and 1.25 (0x3a): to even
      {1.0625001f, 0x39},     // just above the tie: up
      {0.0009765625f, 0x00},  // 2^-10, half the smallest subnormal: tie to zero (even)
      {0.0029296875f, 0x02},  // 3 * 2^-10, tie between 0x01 and 0x02: to even
      {0.0009765626f, 0x01},  // just above half the smallest subnormal: up
      {0.0146484375f, 0x08},  // 7.5 * 2^-9: rounds up out of the subnormals to 2^-6
      {464.0f, 0x7e},        {449.0f, 0x7e},    {1e6f, 0x7e},    {-1e6f, 0xfe},
      {3e38f, 0x7e},         {1e-30f, 0x00},    {-1e-30f, 0x80},
  };
  for (const Case& c : cases) {
    INFO("x = " << c.x);
    CHECK(int(fp8_encode<E4M3>(c.x)) == int(c.code));
    CHECK(int(fp8_e4m3(c.x).bits) == int(c.code));
  }
  // Infinities saturate to the largest finite value; NaN stays NaN with its sign.
  CHECK(int(fp8_encode<E4M3>(inf_f())) == 0x7e);
  CHECK(int(fp8_encode<E4M3>(-inf_f())) == 0xfe);
  CHECK(int(fp8_encode<E4M3>(nan_f())) == 0x7f);
  CHECK(int(fp8_encode<E4M3>(-nan_f())) == 0xff);
  CHECK(std::isnan(fp8_decode<E4M3>(0x7f)));
  CHECK(std::isnan(fp8_decode<E4M3>(0xff)));
  CHECK(fp8_decode<E4M3>(0x7e) == 448.0f);
  CHECK(fp8_decode<E4M3>(0x01) == 0.001953125f);
  CHECK(fp8_decode<E4M3>(0x3a) == 1.25f);
  CHECK(fp8_decode<E4M3>(0xb9) == -1.125f);
  CHECK(std::signbit(fp8_decode<E4M3>(0x80)));
  CHECK(static_cast<float>(fp8_e4m3::from_bits(0x30)) == 0.5f);
}

TEST_CASE("fp8 E5M2 conversions match hand-checked codes", "[kernels][fp8]") {
  struct Case {
    float x;
    std::uint8_t code;
  };
  const Case cases[] = {
      {0.0f, 0x00},
      {-0.0f, 0x80},
      {1.0f, 0x3c},
      {0.5f, 0x38},
      {-3.0f, 0xc2},
      {57344.0f, 0x7b},
      {-57344.0f, 0xfb},
      {49152.0f, 0x7a},
      {6.103515625e-05f, 0x04},     // 2^-14, the smallest normal
      {1.52587890625e-05f, 0x01},   // 2^-16, the smallest subnormal
      {4.57763671875e-05f, 0x03},   // 3 * 2^-16, the largest subnormal
      {1.125f, 0x3c},               // tie between 1 and 1.25: to even
      {1.375f, 0x3e},               // tie between 1.25 (0x3d) and 1.5 (0x3e): to even
      {1.1250001f, 0x3d},           // just above the tie: up
      {7.62939453125e-06f, 0x00},   // 2^-17, half the smallest subnormal: to zero
      {2.288818359375e-05f, 0x02},  // 1.5 * 2^-16: tie between 0x01 and 0x02, to even
      {61440.0f, 0x7b},             // the midpoint to 2^16 saturates
      {1e6f, 0x7b},
      {-1e6f, 0xfb},
  };
  for (const Case& c : cases) {
    INFO("x = " << c.x);
    CHECK(int(fp8_encode<E5M2>(c.x)) == int(c.code));
    CHECK(int(fp8_e5m2(c.x).bits) == int(c.code));
  }
  CHECK(int(fp8_encode<E5M2>(inf_f())) == 0x7b);
  CHECK(int(fp8_encode<E5M2>(-inf_f())) == 0xfb);
  CHECK(int(fp8_encode<E5M2>(nan_f())) == 0x7f);
  CHECK(int(fp8_encode<E5M2>(-nan_f())) == 0xff);
  CHECK(fp8_decode<E5M2>(0x7c) == inf_f());
  CHECK(fp8_decode<E5M2>(0xfc) == -inf_f());
  CHECK(std::isnan(fp8_decode<E5M2>(0x7d)));
  CHECK(std::isnan(fp8_decode<E5M2>(0x7f)));
  CHECK(fp8_decode<E5M2>(0x7b) == 57344.0f);
  CHECK(fp8_decode<E5M2>(0x01) == 1.52587890625e-05f);
  CHECK(fp8_decode<E5M2>(0x3d) == 1.25f);
}

TEMPLATE_TEST_CASE("fp8: every finite code survives decode then encode", "[kernels][fp8]", fp8_e4m3,
                   fp8_e5m2) {
  constexpr Fp8Format F = TestType::format;
  int finite = 0;
  for (unsigned c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    const float v = fp8_decode<F>(code);
    INFO("code 0x" << std::hex << c);
    if (std::isnan(v)) {
      CHECK(int(fp8_encode<F>(v) & 0x7f) == int(fathom::Fp8Traits<F>::nan_code));
    } else if (std::isinf(v)) {
      CHECK(int(fp8_encode<F>(v)) == int((code & 0x80) | fathom::Fp8Traits<F>::max_code));
    } else {
      CHECK(int(fp8_encode<F>(v)) == int(code));
      ++finite;
    }
  }
  // E4M3: 2 * 127 finite (one NaN per sign); E5M2: 2 * 124 (infinity and 3 NaNs per sign).
  CHECK(finite == (F == E4M3 ? 254 : 248));
}

TEMPLATE_TEST_CASE("fp8: encoding gives the nearest value, ties to even", "[kernels][fp8]",
                   fp8_e4m3, fp8_e5m2) {
  constexpr Fp8Format F = TestType::format;
  const auto mags = finite_magnitudes<F>();
  const double max_value = fathom::Fp8Traits<F>::max_value;
  std::size_t checked = 0;
  // Log-uniform magnitudes from far below the smallest subnormal to past the largest value, both
  // signs; plus every midpoint between neighbouring values (the ties) and its float neighbours.
  std::vector<float> xs;
  for (std::uint64_t i = 0; i < 60000; ++i) {
    const double e = -24.0 + 44.0 * fathom::rng::uniform(17, i);
    xs.push_back(static_cast<float>((i % 2 ? -1.0 : 1.0) * std::exp2(e)));
  }
  for (std::size_t c = 0; c + 1 < mags.size(); ++c) {
    const float mid = static_cast<float>((mags[c] + mags[c + 1]) / 2);
    xs.push_back(mid);
    xs.push_back(-mid);
    xs.push_back(std::nextafter(mid, 0.0f));
    xs.push_back(std::nextafter(mid, 1e30f));
  }
  for (float x : xs) {
    const std::uint8_t got = fp8_encode<F>(x);
    if (std::abs(x) >= max_value) {
      CHECK(int(got) == int((std::signbit(x) ? 0x80 : 0) | fathom::Fp8Traits<F>::max_code));
    } else {
      const std::uint8_t want = nearest_code<F>(x, mags);
      if (got != want) {
        INFO("x = " << x << " got 0x" << std::hex << int(got) << " want 0x" << int(want));
        CHECK(got == want);
      }
      ++checked;
    }
  }
  CHECK(checked > 40000);  // most samples lie inside the range
}

TEST_CASE("fp8 scale from amax", "[kernels][fp8]") {
  CHECK(fathom::fp8_scale_from_amax<E4M3>(2.0f, 0) == 224.0f);
  CHECK(fathom::fp8_scale_from_amax<E4M3>(2.0f, 1) == 112.0f);
  CHECK(fathom::fp8_scale_from_amax<E5M2>(4.0f, 0) == 14336.0f);
  CHECK(fathom::fp8_scale_from_amax<E4M3>(-2.0f, 0) == 224.0f);  // a magnitude
  CHECK(fathom::fp8_scale_from_amax<E4M3>(0.0f, 0) == 1.0f);
  CHECK(fathom::fp8_scale_from_amax<E4M3>(inf_f(), 0) == 1.0f);
  CHECK(fathom::fp8_scale_from_amax<E4M3>(nan_f(), 0) == 1.0f);
  // A tiny amax would overflow float: clamped to float's largest finite value.
  CHECK(fathom::fp8_scale_from_amax<E4M3>(1e-40f, 0) == std::numeric_limits<float>::max());
}

TEMPLATE_TEST_CASE("CPU amax", "[kernels][fp8]", float, bf16) {
  using T = TestType;
  std::vector<T> x = fathom::test::rng_uniform_values<T>(1001, 3);
  x[417] = fathom::scalar_cast<T>(-7.5);
  float out = -1.0f;
  kernels::amax(Cpu{}, kernels::AmaxParams<T>{x.data(), static_cast<std::int64_t>(x.size()), &out});
  CHECK(out == 7.5f);
  x[3] = fathom::scalar_cast<T>(nan_f());
  kernels::amax(Cpu{}, kernels::AmaxParams<T>{x.data(), static_cast<std::int64_t>(x.size()), &out});
  CHECK(std::isnan(out));
  kernels::amax(Cpu{}, kernels::AmaxParams<T>{x.data(), 0, &out});
  CHECK(out == 0.0f);
}

TEMPLATE_TEST_CASE("CPU quantize_fp8 / dequantize_fp8 round trip within the format's error",
                   "[kernels][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  constexpr Fp8Format Fmt = F::format;
  constexpr int M = fathom::Fp8Traits<Fmt>::mantissa_bits;
  const std::int64_t rows = GENERATE(1, 7, 37), cols = GENERATE(1, 13, 50);
  const int margin = GENERATE(0, 2);
  INFO(rows << " x " << cols << " margin " << margin);
  // Values over several orders of magnitude, so that some land among the subnormals.
  std::vector<bf16> x(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = bf16(static_cast<float>((2.0 * fathom::rng::uniform(5, i) - 1.0) *
                                   std::exp2(-12.0 * fathom::rng::uniform(6, i))));
  float amax = 0.0f;
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{x.data(), rows * cols, &amax});
  std::vector<F> q(x.size()), qt(x.size());
  float scale_inv = 0.0f;
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, F>{.x = x.data(),
                                                                   .out = q.data(),
                                                                   .out_t = qt.data(),
                                                                   .rows = rows,
                                                                   .cols = cols,
                                                                   .amax = &amax,
                                                                   .scale_inv = &scale_inv,
                                                                   .margin = margin});
  const float scale = fathom::fp8_scale_from_amax<Fmt>(amax, margin);
  CHECK(scale_inv == 1.0f / scale);
  std::vector<float> back(x.size());
  kernels::dequantize_fp8(Cpu{}, kernels::DequantizeFp8Params<F, float>{q.data(), back.data(),
                                                                        rows * cols, &scale_inv});
  // Relative error 2^-(M+1) among the normals, half the smallest subnormal below them.
  const double sub_unit = std::exp2(1 - fathom::Fp8Traits<Fmt>::bias - M);
  double largest_code = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::size_t k = static_cast<std::size_t>(i * cols + j);
      const double xv = static_cast<float>(x[k]);
      const double tol =
          std::max(std::abs(xv) * std::exp2(-(M + 1)), sub_unit / 2 / scale) * 1.0001;
      if (!(std::abs(back[k] - xv) <= tol)) {
        INFO("element (" << i << ", " << j << "): x " << xv << " back " << back[k]);
        CHECK(std::abs(back[k] - xv) <= tol);
      }
      if (q[k].bits != qt[static_cast<std::size_t>(j * rows + i)].bits) {
        INFO("transposed copy differs at (" << i << ", " << j << ")");
        CHECK(q[k].bits == qt[static_cast<std::size_t>(j * rows + i)].bits);
      }
      largest_code =
          std::max(largest_code, std::abs(static_cast<double>(static_cast<float>(q[k]))));
    }
  }
  // The largest element lands on the format's maximum / 2^margin (exactly: it is a power-of-two
  // multiple of a bf16 value... within one rounding).
  const double target = fathom::Fp8Traits<Fmt>::max_value * std::exp2(-margin);
  CHECK(largest_code <= target);
  CHECK(largest_code >= target * (1.0 - std::exp2(-M)));
}

TEST_CASE("CPU quantize_fp8 of zeros uses scale 1; bad parameters are refused", "[kernels][fp8]") {
  std::vector<float> x(6, 0.0f);
  std::vector<fp8_e4m3> q(6, fp8_e4m3::from_bits(0x55));
  float amax = 0.0f, scale_inv = -1.0f;
  kernels::quantize_fp8(Cpu{},
                        kernels::QuantizeFp8Params<float, fp8_e4m3>{.x = x.data(),
                                                                    .out = q.data(),
                                                                    .rows = 2,
                                                                    .cols = 3,
                                                                    .amax = &amax,
                                                                    .scale_inv = &scale_inv});
  CHECK(scale_inv == 1.0f);
  for (auto v : q) CHECK(int(v.bits) == 0);
  CHECK_THROWS_WITH(
      kernels::quantize_fp8(
          Cpu{},
          kernels::QuantizeFp8Params<float, fp8_e4m3>{
              .x = x.data(), .out = q.data(), .rows = 2, .cols = 3, .amax = &amax, .margin = 99}),
      HasSubstring("margin must be in [0, 64], got 99"));
  CHECK_THROWS_WITH(
      kernels::quantize_fp8(Cpu{},
                            kernels::QuantizeFp8Params<float, fp8_e4m3>{
                                .x = x.data(), .out = q.data(), .rows = 2, .cols = 3}),
      HasSubstring("amax is null"));
}

namespace {

// With `with_c_in` the values C would start with go to a separate c_in and C holds NaN, so that
// reading C's old contents instead of c_in would show.
template <class FA, class FB, class T>
void check_reference_gemm_fp8(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb,
                              bool bias, double beta, bool with_c_in = false) {
  INFO("M " << m << " N " << n << " K " << k << " trans " << ta << tb << " bias " << bias
            << " beta " << beta << " c_in " << with_c_in);
  const std::int64_t lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
  std::vector<FA> a(static_cast<std::size_t>((ta ? k : m) * lda));
  std::vector<FB> b(static_cast<std::size_t>((tb ? n : k) * ldb));
  for (std::size_t i = 0; i < a.size(); ++i)
    a[i] = FA(static_cast<float>(8.0 * (2.0 * fathom::rng::uniform(11, i) - 1.0)));
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = FB(static_cast<float>(3.0 * (2.0 * fathom::rng::uniform(12, i) - 1.0)));
  std::vector<T> bias_v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < bias_v.size(); ++i)
    bias_v[i] = fathom::scalar_cast<T>(fathom::rng::uniform(13, i) - 0.5);
  std::vector<T> c(static_cast<std::size_t>(m * ldc));
  for (std::size_t i = 0; i < c.size(); ++i)
    c[i] = fathom::scalar_cast<T>(beta == 0.0 ? nan_f() : float(fathom::rng::uniform(14, i)));
  std::vector<T> c_in;
  if (with_c_in) {
    c_in = c;
    std::fill(c.begin(), c.end(), fathom::scalar_cast<T>(nan_f()));
  }
  const std::vector<T> c0 = with_c_in ? c_in : c;  // what the beta term reads
  const std::vector<T> c_start = c, c_in_start = c_in;
  const float sa = 0.03125f, sb = 1.0f / 3.0f;
  kernels::gemm_fp8(Cpu{},
                    kernels::Fp8GemmParams<FA, FB, T>{.a = a.data(),
                                                      .b = b.data(),
                                                      .c = c.data(),
                                                      .c_in = with_c_in ? c_in.data() : nullptr,
                                                      .bias = bias ? bias_v.data() : nullptr,
                                                      .a_scale_inv = &sa,
                                                      .b_scale_inv = &sb,
                                                      .m = m,
                                                      .n = n,
                                                      .k = k,
                                                      .trans_a = ta,
                                                      .trans_b = tb,
                                                      .lda = lda,
                                                      .ldb = ldb,
                                                      .ldc = ldc,
                                                      .beta = beta});
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double want = 0, mass = 0;
      for (std::int64_t q = 0; q < k; ++q) {
        const double av = static_cast<float>(ta ? a[q * lda + i] : a[i * lda + q]);
        const double bv = static_cast<float>(tb ? b[j * ldb + q] : b[q * ldb + j]);
        want += av * bv;
        mass += std::abs(av * bv);
      }
      want *= double(sa) * double(sb);
      mass *= double(sa) * double(sb);
      if (beta != 0.0) want += beta * fathom::scalar_cast<double>(c0[i * ldc + j]);
      if (bias) want += fathom::scalar_cast<double>(bias_v[j]);
      const double got = fathom::scalar_cast<double>(c[i * ldc + j]);
      const double out_round = std::is_same_v<T, bf16> ? std::exp2(-8) : std::exp2(-23);
      const double tol =
          (static_cast<double>(k) + 4) * std::exp2(-23) * (mass + 1) + out_round * std::abs(want);
      if (!(std::abs(got - want) <= tol)) {
        INFO("C[" << i << ", " << j << "] got " << got << " want " << want);
        CHECK(std::abs(got - want) <= tol);
      }
    }
    for (std::int64_t j = n; j < ldc; ++j) {  // the padding is never written
      const double got = fathom::scalar_cast<double>(c[i * ldc + j]);
      const double was = fathom::scalar_cast<double>(c_start[i * ldc + j]);
      CHECK((got == was || (std::isnan(got) && std::isnan(was))));
    }
  }
  CHECK(fathom::test::same_bits(c_in, c_in_start));
}

}  // namespace

TEST_CASE("CPU gemm_fp8 matches a double loop", "[kernels][fp8]") {
  const bool ta = GENERATE(false, true), tb = GENERATE(false, true);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e4m3, float>(5, 7, 33, ta, tb, false, 0.0);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e4m3, bf16>(17, 3, 64, ta, tb, true, 0.0);
  check_reference_gemm_fp8<fp8_e5m2, fp8_e4m3, bf16>(9, 11, 19, ta, tb, false, 1.0);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e5m2, float>(1, 13, 5, ta, tb, true, 0.5);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e4m3, float>(4, 6, 0, ta, tb, true, 0.0);  // K = 0
}

TEST_CASE("CPU gemm_fp8's beta term reads c_in, never C's previous contents", "[kernels][fp8]") {
  const bool ta = GENERATE(false, true), tb = GENERATE(false, true);
  const double beta = GENERATE(1.0, 0.5, -2.0);
  const bool bias = GENERATE(false, true);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e4m3, float>(7, 13, 5, ta, tb, bias, beta, true);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e4m3, bf16>(17, 3, 64, ta, tb, bias, beta, true);
  check_reference_gemm_fp8<fp8_e5m2, fp8_e4m3, bf16>(9, 11, 19, ta, tb, bias, beta, true);
  check_reference_gemm_fp8<fp8_e4m3, fp8_e5m2, float>(4, 6, 0, ta, tb, bias, beta, true);  // K = 0
  // c_in == c is the in-place GEMM; beta 0 reads neither (a NaN c_in changes nothing).
  const std::int64_t m = 3, n = 5, k = 16;
  std::vector<fp8_e4m3> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(n * k));
  for (std::size_t i = 0; i < a.size(); ++i)
    a[i] = fp8_e4m3(static_cast<float>(2.0 * fathom::rng::uniform(15, i) - 1.0));
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = fp8_e4m3(static_cast<float>(2.0 * fathom::rng::uniform(16, i) - 1.0));
  const auto c0 = fathom::test::rng_uniform_values<float>(static_cast<std::size_t>(m * n), 17);
  const float s = 0.5f;
  auto in_place = c0, self = c0;
  kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, float> p{.a = a.data(),
                                                      .b = b.data(),
                                                      .c = in_place.data(),
                                                      .a_scale_inv = &s,
                                                      .b_scale_inv = &s,
                                                      .m = m,
                                                      .n = n,
                                                      .k = k,
                                                      .beta = beta};
  kernels::gemm_fp8(Cpu{}, p);
  p.c = self.data();
  p.c_in = self.data();
  kernels::gemm_fp8(Cpu{}, p);
  CHECK(fathom::test::same_bits(self, in_place));
  const std::vector<float> nan_in(c0.size(), nan_f());
  std::vector<float> fresh = c0, with_nan = c0;
  p.beta = 0.0;
  p.c = fresh.data();
  p.c_in = nullptr;
  kernels::gemm_fp8(Cpu{}, p);
  p.c = with_nan.data();
  p.c_in = nan_in.data();
  kernels::gemm_fp8(Cpu{}, p);
  CHECK(fathom::test::same_bits(with_nan, fresh));
  p.c_in = with_nan.data() + 1;  // overlaps C without being C
  CHECK_THROWS_WITH(kernels::gemm_fp8(Cpu{}, p), HasSubstring("gemm_fp8: c_in overlaps C"));
}

TEMPLATE_TEST_CASE("CPU quantize_fp8 with an amax history: delayed scale, recorded amax",
                   "[kernels][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  constexpr Fp8Format Fmt = F::format;
  const std::int64_t rows = 7, cols = 13;
  const int len = 5;
  const int record = GENERATE(0, 3, 4);  // 4: the slot cleared wraps to 0
  const bool record_amax = GENERATE(true, false);
  INFO("record " << record << (record_amax ? " recording" : " reading only"));
  const int next = (record + 1) % len;
  std::vector<bf16> x(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = bf16(static_cast<float>(3.0 * fathom::rng::uniform(31, i) - 1.5));
  x[17] = bf16(nan_f());  // neither enters the history
  x[40] = bf16(-inf_f());
  // The slots a pass writes hold the largest values, so that reading them would show.
  std::vector<float> history = {0.75f, 0.5f, 1.0f, 2.25f, 0.125f};
  history[static_cast<std::size_t>(record)] = 0.0f;
  history[static_cast<std::size_t>(next)] = 100.0f;
  const std::vector<float> before = history;
  float expected_amax = 0.0f;  // over the slots read
  for (int i = 0; i < len; ++i)
    if (i != record && i != next)
      expected_amax = std::max(expected_amax, history[static_cast<std::size_t>(i)]);
  float finite_max = 0.0f;
  for (auto v : x)
    if (std::isfinite(static_cast<float>(v)))
      finite_max = std::max(finite_max, std::abs(static_cast<float>(v)));

  std::vector<F> q(x.size()), qt(x.size()), want(x.size());
  float scale_inv = 0.0f, want_scale_inv = 0.0f;
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, F>{.x = x.data(),
                                                                   .out = q.data(),
                                                                   .out_t = qt.data(),
                                                                   .rows = rows,
                                                                   .cols = cols,
                                                                   .scale_inv = &scale_inv,
                                                                   .history = history.data(),
                                                                   .history_len = len,
                                                                   .record = record,
                                                                   .record_amax = record_amax});
  // The same codes as current scaling by the history's amax.
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, F>{.x = x.data(),
                                                                   .out = want.data(),
                                                                   .rows = rows,
                                                                   .cols = cols,
                                                                   .amax = &expected_amax,
                                                                   .scale_inv = &want_scale_inv});
  CHECK(scale_inv == want_scale_inv);
  CHECK(scale_inv == 1.0f / fathom::fp8_scale_from_amax<Fmt>(expected_amax, 0));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto k = static_cast<std::size_t>(i * cols + j);
      REQUIRE(q[k].bits == want[k].bits);
      REQUIRE(qt[static_cast<std::size_t>(j * rows + i)].bits == want[k].bits);
    }
  // Values beyond the history's amax saturate to the largest finite code.
  bool saturated = false;
  for (std::size_t k = 0; k < x.size(); ++k)
    if (std::isfinite(static_cast<float>(x[k])) &&
        std::abs(static_cast<float>(x[k])) > expected_amax) {
      saturated = true;
      CHECK(std::abs(static_cast<float>(q[k])) == fathom::Fp8Traits<Fmt>::max_value);
    }
  if (record == 3) CHECK(saturated);  // slots 0-2 read: amax 1.0, the inputs reach about 1.5
  CHECK(std::isnan(static_cast<float>(q[17])));
  for (int i = 0; i < len; ++i) {
    const auto s = static_cast<std::size_t>(i);
    if (record_amax && i == record)
      CHECK(history[s] == finite_max);
    else if (record_amax && i == next)
      CHECK(history[s] == 0.0f);
    else
      CHECK(history[s] == before[s]);
  }
}

TEST_CASE("CPU quantize_fp8 records its own amax while scaling by it; bad histories are refused",
          "[kernels][fp8]") {
  std::vector<float> x = {0.5f, -3.0f, 1.25f, 2.0f, -0.25f, 0.0f};
  std::vector<float> history(4, 0.0f);
  std::vector<fp8_e4m3> q(6), want(6);
  float amax = 3.0f, scale_inv = 0.0f, want_scale_inv = 0.0f;
  // The first quantization of a history: current scaling, and its amax becomes slot 0.
  kernels::quantize_fp8(Cpu{},
                        kernels::QuantizeFp8Params<float, fp8_e4m3>{.x = x.data(),
                                                                    .out = q.data(),
                                                                    .rows = 2,
                                                                    .cols = 3,
                                                                    .amax = &amax,
                                                                    .scale_inv = &scale_inv,
                                                                    .history = history.data(),
                                                                    .history_len = 4,
                                                                    .record = 0});
  kernels::quantize_fp8(Cpu{},
                        kernels::QuantizeFp8Params<float, fp8_e4m3>{.x = x.data(),
                                                                    .out = want.data(),
                                                                    .rows = 2,
                                                                    .cols = 3,
                                                                    .amax = &amax,
                                                                    .scale_inv = &want_scale_inv});
  CHECK(scale_inv == want_scale_inv);
  for (std::size_t k = 0; k < q.size(); ++k) CHECK(q[k].bits == want[k].bits);
  CHECK(history == std::vector<float>{3.0f, 0.0f, 0.0f, 0.0f});
  // An empty tensor records 0 and still clears the next slot.
  history = {1.0f, 0.0f, 7.0f, 2.0f};
  kernels::quantize_fp8(Cpu{},
                        kernels::QuantizeFp8Params<float, fp8_e4m3>{.x = nullptr,
                                                                    .rows = 0,
                                                                    .cols = 3,
                                                                    .scale_inv = &scale_inv,
                                                                    .history = history.data(),
                                                                    .history_len = 4,
                                                                    .record = 1});
  CHECK(history == std::vector<float>{1.0f, 0.0f, 0.0f, 2.0f});
  CHECK(scale_inv == 1.0f / fathom::fp8_scale_from_amax<E4M3>(2.0f, 0));

  auto bad = [&](int len, int record) {
    kernels::quantize_fp8(Cpu{},
                          kernels::QuantizeFp8Params<float, fp8_e4m3>{.x = x.data(),
                                                                      .out = q.data(),
                                                                      .rows = 2,
                                                                      .cols = 3,
                                                                      .history = history.data(),
                                                                      .history_len = len,
                                                                      .record = record});
  };
  CHECK_THROWS_WITH(bad(2, 0), HasSubstring("3 to 256 entries, got 2"));
  CHECK_THROWS_WITH(bad(4, 4), HasSubstring("slot 4 is outside [0, 4)"));
  CHECK_THROWS_WITH(bad(4, -1), HasSubstring("slot -1"));
}

namespace {

// quantize_fp8 (F, current scaling by `amax`, or a copy of `history` slot 1 when it is not empty)
// of x (rows, cols) read as float: codes, transposed codes, scale_inv and the history after.
template <class F>
struct QuantizedRef {
  std::vector<F> out, out_t;
  float scale_inv = 0;
  std::vector<float> history;
};
template <class F, class Quantize>
QuantizedRef<F> quantized_with(std::int64_t rows, std::int64_t cols, const float* amax,
                               std::vector<float> history, Quantize quantize) {
  QuantizedRef<F> r{std::vector<F>(static_cast<std::size_t>(rows * cols)),
                    std::vector<F>(static_cast<std::size_t>(rows * cols)), 0, std::move(history)};
  kernels::QuantizeFp8Params<float, F> p{.out = r.out.data(),
                                         .out_t = r.out_t.data(),
                                         .rows = rows,
                                         .cols = cols,
                                         .amax = amax,
                                         .scale_inv = &r.scale_inv};
  if (!r.history.empty()) {
    p.history = r.history.data();
    p.history_len = static_cast<int>(r.history.size());
    p.record = 1;
  }
  quantize(p);
  return r;
}

template <class F>
bool same(const QuantizedRef<F>& a, const QuantizedRef<F>& b) {
  return fathom::test::same_bits(a.out, b.out) && fathom::test::same_bits(a.out_t, b.out_t) &&
         a.scale_inv == b.scale_inv && a.history == b.history;
}

}  // namespace

TEMPLATE_TEST_CASE("CPU quantize_fp8_swiglu gives quantize_fp8's codes of swiglu and its backward",
                   "[kernels][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  const std::int64_t rows = 6, f = 12;
  const bool backward = GENERATE(false, true);
  const bool delayed = GENERATE(false, true);
  INFO((backward ? "backward" : "forward") << ", " << (delayed ? "delayed" : "current"));
  auto gu = fathom::test::rng_uniform_values<float>(static_cast<std::size_t>(rows * 2 * f), 21);
  for (auto& v : gu) v *= 4.0f;  // silu's curved part and both tails
  const auto dh = fathom::test::rng_uniform_values<float>(static_cast<std::size_t>(rows * f), 22);
  // The values through the activation kernels, in float (no rounding between).
  const std::int64_t cols = backward ? 2 * f : f;
  std::vector<float> values(static_cast<std::size_t>(rows * cols), nan_f());
  if (backward)
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<float>{gu.data(), gu.data() + f, dh.data(),
                                                    values.data(), values.data() + f, rows * f,
                                                    false, false, f, 2 * f, 2 * f});
  else
    kernels::swiglu(Cpu{}, kernels::SwigluParams<float>{gu.data(), gu.data() + f, values.data(),
                                                        rows * f, f, 2 * f});
  const kernels::SwigluFp8Source<float> source{gu.data(), dh.data(), f, backward};
  float amax = -1, amax_fused = -1;
  kernels::amax(Cpu{}, kernels::AmaxParams<float>{values.data(), rows * cols, &amax});
  kernels::amax_swiglu(Cpu{}, source, rows, &amax_fused);
  CHECK(amax_fused == amax);
  CHECK(amax > 0);
  const std::vector<float> history =
      delayed ? std::vector<float>{0.5f, 0.0f, 0.0f, 3.0f} : std::vector<float>{};
  const float* scale_from = delayed ? nullptr : &amax;
  const auto want = quantized_with<F>(rows, cols, scale_from, history, [&](auto p) {
    p.x = values.data();
    kernels::quantize_fp8(Cpu{}, p);
  });
  const auto got = quantized_with<F>(rows, cols, scale_from, history, [&](auto p) {
    kernels::quantize_fp8_swiglu(Cpu{}, p, source);
  });
  CHECK(same(got, want));
  if (delayed) CHECK(got.history[1] == amax);  // this pass's amax, recorded

  // bf16 inputs: the same values in float, so the same codes.
  std::vector<bf16> gu16(gu.size()), dh16(dh.size());
  std::vector<float> gu_rounded(gu.size()), dh_rounded(dh.size());
  for (std::size_t i = 0; i < gu.size(); ++i) gu_rounded[i] = float(gu16[i] = bf16(gu[i]));
  for (std::size_t i = 0; i < dh.size(); ++i) dh_rounded[i] = float(dh16[i] = bf16(dh[i]));
  const kernels::SwigluFp8Source<float> rounded{gu_rounded.data(), dh_rounded.data(), f, backward};
  const kernels::SwigluFp8Source<bf16> source16{gu16.data(), dh16.data(), f, backward};
  auto fused16 = [&](auto p) {
    const kernels::QuantizeFp8Params<bf16, F> q{.out = p.out,
                                                .out_t = p.out_t,
                                                .rows = p.rows,
                                                .cols = p.cols,
                                                .amax = p.amax,
                                                .scale_inv = p.scale_inv,
                                                .history = p.history,
                                                .history_len = p.history_len,
                                                .record = p.record};
    kernels::quantize_fp8_swiglu(Cpu{}, q, source16);
  };
  CHECK(same(quantized_with<F>(rows, cols, scale_from, history, fused16),
             quantized_with<F>(rows, cols, scale_from, history,
                               [&](auto p) { kernels::quantize_fp8_swiglu(Cpu{}, p, rounded); })));
}

TEST_CASE("CPU quantize_fp8_swiglu refuses a tensor to read and a wrong width", "[kernels][fp8]") {
  std::vector<float> gu(2 * 8, 1.0f), x(8, 1.0f);
  std::vector<fp8_e4m3> out(16);
  float amax = 1.0f;
  const kernels::SwigluFp8Source<float> source{gu.data(), nullptr, 8, false};
  CHECK_THROWS_WITH(kernels::quantize_fp8_swiglu(
                        Cpu{},
                        kernels::QuantizeFp8Params<float, fp8_e4m3>{
                            .x = x.data(), .out = out.data(), .rows = 1, .cols = 8, .amax = &amax},
                        source),
                    HasSubstring("x must be null"));
  CHECK_THROWS_WITH(
      kernels::quantize_fp8_swiglu(Cpu{},
                                   kernels::QuantizeFp8Params<float, fp8_e4m3>{
                                       .out = out.data(), .rows = 1, .cols = 16, .amax = &amax},
                                   source),
      HasSubstring("SwiGLU of width 8 has 8 output columns, got 16"));
}
