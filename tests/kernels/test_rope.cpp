// Tests for the CPU RoPE kernels (include/fathom/kernels/rope.hpp): the forward against a rotation
// written with std::complex, a hand-computed example that pins the Hugging Face rotate_half
// pairing, the backward as the inverse rotation (round trip and accumulation), and rope_qkv (in
// place on a fused (B, T, 3C) projection) equal to rope and rope_backward on its q and k thirds.
#include <fathom/kernels/rope.hpp>

#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;

using namespace fathom::test;

namespace {

struct RopeShape {
  std::int64_t B, T, H, hd;
  std::int64_t C() const { return H * hd; }
  std::size_t n() const { return static_cast<std::size_t>(B * T * H * hd); }
};

// Element (b, t, c) of x rotated: z = x[i] + j x[i + hd/2] times exp(j angle), with the angle in
// double.
std::vector<double> reference_rope(const std::vector<double>& x, const RopeShape& s, double theta,
                                   std::int64_t pos0, double sign) {
  std::vector<double> y(x.size());
  const std::int64_t half = s.hd / 2;
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t t = 0; t < s.T; ++t)
      for (std::int64_t h = 0; h < s.H; ++h)
        for (std::int64_t i = 0; i < half; ++i) {
          const auto k1 = static_cast<std::size_t>((b * s.T + t) * s.C() + h * s.hd + i);
          const auto k2 = k1 + static_cast<std::size_t>(half);
          const double angle =
              static_cast<double>(pos0 + t) *
              std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(s.hd));
          const std::complex<double> z =
              std::complex<double>(x[k1], x[k2]) * std::polar(1.0, sign * angle);
          y[k1] = z.real();
          y[k2] = z.imag();
        }
  return y;
}

// For float and bf16 the kernel computes the angle (pos * inv_freq) in fp32, as transformers does:
// an angle of magnitude a carries an error of about 2 ulps of a, which moves each output by up to
// that much times the pair's norm. The allowance is added to the precision's tolerance.
template <class T>
std::string first_mismatch(const std::string& name, const std::vector<double>& got,
                           const std::vector<double>& want, const std::vector<double>& x,
                           const RopeShape& s, std::int64_t pos0) {
  const double angle_eps =
      std::is_same_v<T, double> ? 0.0 : 2.0 * std::numeric_limits<float>::epsilon();
  const auto C = static_cast<std::size_t>(s.C()), hd = static_cast<std::size_t>(s.hd),
             half = hd / 2;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const std::size_t t = i / C % static_cast<std::size_t>(s.T), c = i % hd;
    const std::size_t k1 = i - c + c % half, k2 = k1 + half;
    const double pair_norm = std::hypot(x[k1], x[k2]);
    const double tol =
        Precision<T>::atol + Precision<T>::rtol * std::abs(want[i]) +
        pair_norm * angle_eps * static_cast<double>(pos0 + static_cast<std::int64_t>(t));
    const double err = std::abs(got[i] - want[i]);
    if (!(err <= tol)) {
      std::ostringstream m;
      m << name << "[b " << i / (C * static_cast<std::size_t>(s.T)) << ", t " << t << ", c "
        << i % C << "]: got " << got[i] << ", want " << want[i] << " (|diff| " << err << ", tol "
        << tol << ")";
      return m.str();
    }
  }
  return {};
}

}  // namespace

TEMPLATE_TEST_CASE("rope forward is the complex rotation of each (i, i + hd/2) pair",
                   "[kernels][rope]", double, float, bf16) {
  using T = TestType;
  const auto shape = GENERATE(RopeShape{1, 1, 1, 2}, RopeShape{2, 5, 3, 4}, RopeShape{1, 17, 2, 64},
                              RopeShape{3, 4, 4, 6});
  const std::int64_t pos0 = GENERATE(0, 7, 1000);
  const double theta = GENERATE(10000.0, 500000.0);
  CAPTURE(shape.B, shape.T, shape.H, shape.hd, pos0, theta, Precision<T>::name);
  auto x = normal_values<T>(shape.n(), 131, 1.5);
  std::vector<T> y(shape.n());
  fathom::kernels::rope(
      Cpu{}, fathom::kernels::RopeParams<T>{x.data(), y.data(), shape.B, shape.T, shape.C(),
                                            static_cast<int>(shape.H), theta, pos0});
  const auto xd = to_double(x);
  auto want = reference_rope(xd, shape, theta, pos0, 1.0);
  CHECK(first_mismatch<T>("y", to_double(y), want, xd, shape, pos0) == "");
}

TEST_CASE("rope pairs channel i with i + hd/2 (rotate_half), not neighbours", "[kernels][rope]") {
  // One head of size 4 at position 1, theta 10000: inv_freq = (1, 10000^-0.5 = 0.01).
  std::vector<double> x{1.0, 2.0, 3.0, 4.0}, y(4);
  fathom::kernels::rope(
      Cpu{}, fathom::kernels::RopeParams<double>{x.data(), y.data(), 1, 1, 4, 1, 10000.0, 0});
  CHECK(y == x);  // position 0 turns by 0
  fathom::kernels::rope(
      Cpu{}, fathom::kernels::RopeParams<double>{x.data(), y.data(), 1, 1, 4, 1, 10000.0, 1});
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), c2 = std::cos(0.01), s2 = std::sin(0.01);
  CHECK_THAT(y[0], WithinAbs(1.0 * c1 - 3.0 * s1, 1e-14));
  CHECK_THAT(y[1], WithinAbs(2.0 * c2 - 4.0 * s2, 1e-14));
  CHECK_THAT(y[2], WithinAbs(3.0 * c1 + 1.0 * s1, 1e-14));
  CHECK_THAT(y[3], WithinAbs(4.0 * c2 + 2.0 * s2, 1e-14));
}

TEMPLATE_TEST_CASE("rope backward is the inverse rotation and accumulates", "[kernels][rope]",
                   double, float, bf16) {
  using T = TestType;
  const auto shape = GENERATE(RopeShape{1, 3, 1, 2}, RopeShape{2, 6, 3, 8}, RopeShape{1, 9, 2, 10});
  const std::int64_t pos0 = GENERATE(0, 13);
  const bool accumulate = GENERATE(true, false);
  CAPTURE(shape.B, shape.T, shape.H, shape.hd, pos0, accumulate, Precision<T>::name);
  auto dy = normal_values<T>(shape.n(), 141);
  const auto dx0 = normal_values<T>(shape.n(), 142);
  auto dx = dx0;
  fathom::kernels::rope_backward(Cpu{}, fathom::kernels::RopeBackwardParams<T>{
                                            dy.data(), dx.data(), shape.B, shape.T, shape.C(),
                                            static_cast<int>(shape.H), 10000.0, pos0, accumulate});
  const auto dyd = to_double(dy);
  auto want = reference_rope(dyd, shape, 10000.0, pos0, -1.0);
  if (accumulate)
    for (std::size_t i = 0; i < want.size(); ++i) want[i] += scalar_cast<double>(dx0[i]);
  CHECK(first_mismatch<T>("dx", to_double(dx), want, dyd, shape, pos0) == "");
}

TEST_CASE("rope then its backward gives the input back", "[kernels][rope]") {
  const RopeShape s{2, 7, 3, 16};
  auto x = normal_values<double>(s.n(), 151);
  std::vector<double> y(s.n()), back(s.n());
  fathom::kernels::rope(Cpu{}, fathom::kernels::RopeParams<double>{x.data(), y.data(), s.B, s.T,
                                                                   s.C(), 3, 10000.0, 40});
  fathom::kernels::rope_backward(
      Cpu{}, fathom::kernels::RopeBackwardParams<double>{y.data(), back.data(), s.B, s.T, s.C(), 3,
                                                         10000.0, 40, false});
  double max_err = 0.0, max_moved = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    max_err = std::max(max_err, std::abs(back[i] - x[i]));
    max_moved = std::max(max_moved, std::abs(y[i] - x[i]));
  }
  CHECK(max_err < 1e-12);
  CHECK(max_moved > 0.1);  // the forward did rotate
}

TEMPLATE_TEST_CASE("rope_qkv turns the q and k thirds in place exactly as rope turns each",
                   "[kernels][rope]", double, float, bf16) {
  using T = TestType;
  const auto shape = GENERATE(RopeShape{1, 1, 1, 2}, RopeShape{2, 5, 3, 4}, RopeShape{3, 7, 5, 6},
                              RopeShape{1, 17, 2, 64});
  const std::int64_t pos0 = GENERATE(0, 1000);
  const bool inverse = GENERATE(false, true);
  CAPTURE(shape.B, shape.T, shape.H, shape.hd, pos0, inverse, Precision<T>::name);
  const std::int64_t C = shape.C(), rows = shape.B * shape.T;
  const auto qkv0 = normal_values<T>(3 * shape.n(), 161);
  auto qkv = qkv0;
  fathom::kernels::rope_qkv(
      Cpu{}, fathom::kernels::RopeQkvParams<T>{qkv.data(), shape.B, shape.T, C,
                                               static_cast<int>(shape.H), 10000.0, pos0, inverse});
  for (int third = 0; third < 3; ++third) {
    INFO("third " << third);
    std::vector<T> in(shape.n()), want(shape.n());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < C; ++c)
        in[static_cast<std::size_t>(r * C + c)] =
            qkv0[static_cast<std::size_t>(r * 3 * C + third * C + c)];
    if (third == 2) {
      want = in;  // v: untouched
    } else if (inverse) {
      fathom::kernels::rope_backward(Cpu{}, fathom::kernels::RopeBackwardParams<T>{
                                                in.data(), want.data(), shape.B, shape.T, C,
                                                static_cast<int>(shape.H), 10000.0, pos0, false});
    } else {
      fathom::kernels::rope(
          Cpu{}, fathom::kernels::RopeParams<T>{in.data(), want.data(), shape.B, shape.T, C,
                                                static_cast<int>(shape.H), 10000.0, pos0});
    }
    bool same = true;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < C; ++c)
        same =
            same && scalar_cast<double>(qkv[static_cast<std::size_t>(r * 3 * C + third * C + c)]) ==
                        scalar_cast<double>(want[static_cast<std::size_t>(r * C + c)]);
    CHECK(same);
  }
}
