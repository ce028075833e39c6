// Tests for the CPU activation kernels (include/fathom/kernels/activation.hpp): GELU (tanh form),
// SiLU and SwiGLU against formulas written here in double, backward against central differences
// of those formulas, known values, and the extremes where exp overflows.
#include <fathom/kernels/activation.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;
namespace kernels = fathom::kernels;

using namespace fathom::test;

namespace {

const double pi = std::acos(-1.0);
double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

// Derivative by central differences: independent of the kernels' closed forms. With h = 1e-5 its
// error is about h^2 |third derivative| + eps / h, below derivative_tolerance.
constexpr double derivative_tolerance = 1e-8;
template <class F>
double derivative(F f, double x) {
  const double h = 1e-5;
  return (f(x + h) - f(x - h)) / (2.0 * h);
}

}  // namespace

TEST_CASE("gelu and silu give known values", "[kernels][activation]") {
  // GELU tanh form at 1 and -2 (computed once in high precision); silu(1) = 1 / (1 + e^-1).
  std::vector<double> x{1.0, -2.0, 0.0};
  std::vector<double> y(3);
  kernels::gelu(Cpu{}, kernels::ActivationParams<double>{x.data(), y.data(), 3});
  CHECK_THAT(y[0], WithinRel(0.8411919906082768, 1e-14));
  CHECK_THAT(y[1], WithinRel(-0.04540230591222494, 1e-13));
  CHECK(y[2] == 0.0);
  kernels::silu(Cpu{}, kernels::ActivationParams<double>{x.data(), y.data(), 3});
  CHECK_THAT(y[0], WithinRel(0.7310585786300049, 1e-14));
}

TEMPLATE_TEST_CASE("gelu and silu match their formulas", "[kernels][activation]", double, float,
                   bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 1000, 5461);
  INFO(Precision<T>::name << " n " << n);
  auto x = normal_values<T>(n, 41, 2.0);
  std::vector<T> y(x.size());
  std::vector<double> want(x.size());

  for (std::size_t i = 0; i < x.size(); ++i) want[i] = gelu_ref(to_double(x[i]));
  kernels::gelu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), n});
  CHECK(first_mismatch(y, want) == "");

  for (std::size_t i = 0; i < x.size(); ++i) want[i] = silu_ref(to_double(x[i]));
  kernels::silu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), n});
  CHECK(first_mismatch(y, want) == "");

  SECTION("in place") {
    kernels::silu(Cpu{}, kernels::ActivationParams<T>{x.data(), x.data(), n});
    CHECK(first_mismatch(x, want) == "");
  }
}

TEMPLATE_TEST_CASE("gelu_backward and silu_backward accumulate dy f'(x)", "[kernels][activation]",
                   double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 9, 1000);
  INFO(Precision<T>::name << " n " << n);
  auto x = normal_values<T>(n, 42, 2.0), dy = normal_values<T>(n, 43);
  const auto dx0 = normal_values<T>(n, 44);
  std::vector<double> want(x.size());

  auto dx = dx0;
  for (std::size_t i = 0; i < x.size(); ++i)
    want[i] = to_double(dx0[i]) + to_double(dy[i]) * derivative(gelu_ref, to_double(x[i]));
  kernels::gelu_backward(Cpu{},
                         kernels::ActivationBackwardParams<T>{x.data(), dy.data(), dx.data(), n});
  CHECK(first_mismatch(dx, want, derivative_tolerance) == "");

  dx = dx0;
  for (std::size_t i = 0; i < x.size(); ++i)
    want[i] = to_double(dx0[i]) + to_double(dy[i]) * derivative(silu_ref, to_double(x[i]));
  kernels::silu_backward(Cpu{},
                         kernels::ActivationBackwardParams<T>{x.data(), dy.data(), dx.data(), n});
  CHECK(first_mismatch(dx, want, derivative_tolerance) == "");
}

TEMPLATE_TEST_CASE("activations stay finite where exp overflows", "[kernels][activation]", double,
                   float) {
  using T = TestType;
  std::vector<T> x{T(-1000), T(-100), T(100), T(1000)};
  std::vector<T> y(4), dx(4, T(0)), dy(4, T(1));
  kernels::silu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), 4});
  CHECK(std::abs(y[0]) < T(1e-30));
  CHECK(std::abs(y[1]) < T(1e-30));
  CHECK_THAT(static_cast<double>(y[2]), WithinRel(100.0, 1e-6));
  CHECK(y[3] == T(1000));
  kernels::silu_backward(Cpu{},
                         kernels::ActivationBackwardParams<T>{x.data(), dy.data(), dx.data(), 4});
  for (T v : dx) CHECK(std::isfinite(v));
  CHECK_THAT(static_cast<double>(dx[3]), WithinAbs(1.0, 1e-6));
  kernels::gelu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), 4});
  CHECK(y[0] == T(0));
  CHECK(y[3] == T(1000));
}

TEMPLATE_TEST_CASE("swiglu is silu(gate) * up, forward and backward", "[kernels][activation]",
                   double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 11, 5461);
  INFO(Precision<T>::name << " n " << n);
  auto gate = normal_values<T>(n, 45, 2.0), up = normal_values<T>(n, 46),
       dy = normal_values<T>(n, 47);
  std::vector<T> y(gate.size());
  std::vector<double> want(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i)
    want[i] = silu_ref(to_double(gate[i])) * to_double(up[i]);
  kernels::swiglu(Cpu{}, kernels::SwigluParams<T>{gate.data(), up.data(), y.data(), n});
  CHECK(first_mismatch(y, want) == "");

  const auto dg0 = normal_values<T>(n, 48), du0 = normal_values<T>(n, 49);
  std::vector<double> want_dg(gate.size()), want_du(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) {
    want_dg[i] = to_double(dg0[i]) +
                 to_double(dy[i]) * to_double(up[i]) * derivative(silu_ref, to_double(gate[i]));
    want_du[i] = to_double(du0[i]) + to_double(dy[i]) * silu_ref(to_double(gate[i]));
  }
  SECTION("both gradients") {
    auto dg = dg0, du = du0;
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), up.data(), dy.data(), dg.data(),
                                                du.data(), n});
    CHECK(first_mismatch(dg, want_dg, derivative_tolerance) == "");
    CHECK(first_mismatch(du, want_du) == "");
  }
  SECTION("one gradient, the other null") {
    auto dg = dg0, du = du0;
    kernels::swiglu_backward(Cpu{}, kernels::SwigluBackwardParams<T>{
                                        gate.data(), up.data(), dy.data(), nullptr, du.data(), n});
    CHECK(first_mismatch(du, want_du) == "");
    kernels::swiglu_backward(Cpu{}, kernels::SwigluBackwardParams<T>{
                                        gate.data(), up.data(), dy.data(), dg.data(), nullptr, n});
    CHECK(first_mismatch(dg, want_dg, derivative_tolerance) == "");
  }
  SECTION("gate and up the same tensor, one gradient buffer") {
    auto g = dg0;
    std::vector<double> want_g(gate.size());
    for (std::size_t i = 0; i < gate.size(); ++i) {
      const double x = to_double(gate[i]);
      want_g[i] = to_double(dg0[i]) +
                  to_double(dy[i]) * derivative([](double v) { return silu_ref(v) * v; }, x);
    }
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), gate.data(), dy.data(), g.data(),
                                                g.data(), n});
    CHECK(first_mismatch(g, want_g, derivative_tolerance) == "");
  }
}

TEMPLATE_TEST_CASE("swiglu on the halves of stacked rows equals swiglu on separate copies",
                   "[kernels][activation]", double, float, bf16) {
  // gu (rows, 2F): gate in [0, F), up in [F, 2F) of each row (cols = F, in_stride = 2F), the
  // gradient into the halves of one (rows, 2F) buffer (grad_stride = 2F). The same elements as
  // separate contiguous (rows, F) arrays through the contiguous route: the results must be equal
  // bit for bit, and the elements between the rows of a strided view untouched.
  using T = TestType;
  const auto [rows, F] = GENERATE(
      table<std::int64_t, std::int64_t>({{1, 1}, {3, 5}, {4, 7}, {2, 8}, {5, 16}, {1, 13}}));
  const std::int64_t n = rows * F;
  INFO(Precision<T>::name << " rows " << rows << " F " << F);
  const auto gu = normal_values<T>(2 * n, 50, 2.0), dy = normal_values<T>(n, 51),
             dgu0 = normal_values<T>(2 * n, 52);
  std::vector<T> gate(n), up(n), dg0(n), du0(n);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < F; ++c) {
      gate[r * F + c] = gu[r * 2 * F + c];
      up[r * F + c] = gu[r * 2 * F + F + c];
      dg0[r * F + c] = dgu0[r * 2 * F + c];
      du0[r * F + c] = dgu0[r * 2 * F + F + c];
    }
  std::vector<T> want(n), y(n);
  kernels::swiglu(Cpu{}, kernels::SwigluParams<T>{gate.data(), up.data(), want.data(), n});
  kernels::swiglu(Cpu{}, kernels::SwigluParams<T>{gu.data(), gu.data() + F, y.data(), n, F, 2 * F});
  CHECK(to_double(y) == to_double(want));
  std::vector<double> formula(n);  // and the formula, within the precision's tolerance
  for (std::int64_t i = 0; i < n; ++i) formula[i] = silu_ref(to_double(gate[i])) * to_double(up[i]);
  CHECK(first_mismatch(y, formula) == "");

  const bool accumulate = GENERATE(true, false);
  INFO("accumulate " << accumulate);
  auto dg = dg0, du = du0;
  kernels::swiglu_backward(
      Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), up.data(), dy.data(), dg.data(),
                                              du.data(), n, accumulate, accumulate});
  // A fresh buffer holds NaN where it is overwritten: never read.
  auto dgu = accumulate ? dgu0 : std::vector<T>(2 * n, scalar_cast<T>(std::nan("")));
  kernels::swiglu_backward(Cpu{}, kernels::SwigluBackwardParams<T>{
                                      gu.data(), gu.data() + F, dy.data(), dgu.data(),
                                      dgu.data() + F, n, accumulate, accumulate, F, 2 * F, 2 * F});
  std::vector<T> got_dg(n), got_du(n);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < F; ++c) {
      got_dg[r * F + c] = dgu[r * 2 * F + c];
      got_du[r * F + c] = dgu[r * 2 * F + F + c];
    }
  CHECK(to_double(got_dg) == to_double(dg));
  CHECK(to_double(got_du) == to_double(du));
}

TEST_CASE("swiglu rows: gate and up of a wider row, the gaps untouched", "[kernels][activation]") {
  // Rows 7 apart holding 3 gate and 3 up elements at offsets 0 and 3, one element of slack:
  // in_stride and cols are independent; the gradient rows are 4 apart.
  const std::int64_t rows = 3, F = 3, stride = 7, gstride = 4;
  std::vector<double> buf(rows * stride), dy(rows * F);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = 0.3 * static_cast<double>(i) - 2.0;
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = 1.0 + 0.1 * static_cast<double>(i);
  std::vector<double> y(rows * F);
  kernels::swiglu(Cpu{}, kernels::SwigluParams<double>{buf.data(), buf.data() + F, y.data(),
                                                       rows * F, F, stride});
  std::vector<double> dg(rows * gstride, -7.0), du(rows * gstride, -7.0);
  kernels::swiglu_backward(Cpu{}, kernels::SwigluBackwardParams<double>{
                                      buf.data(), buf.data() + F, dy.data(), dg.data(), du.data(),
                                      rows * F, false, true, F, stride, gstride});
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < F; ++c) {
      const double g = buf[r * stride + c], u = buf[r * stride + F + c], d = dy[r * F + c];
      CHECK_THAT(y[r * F + c], WithinRel(silu_ref(g) * u, 1e-14));
      CHECK_THAT(dg[r * gstride + c], WithinAbs(d * u * derivative(silu_ref, g), 1e-8));
      CHECK_THAT(du[r * gstride + c], WithinAbs(-7.0 + d * silu_ref(g), 1e-12));
    }
    CHECK(dg[r * gstride + F] == -7.0);  // the gap between gradient rows
    CHECK(du[r * gstride + F] == -7.0);
  }
}
