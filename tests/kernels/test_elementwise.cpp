// Tests for the CPU element-wise kernels (include/fathom/kernels/elementwise.hpp): each against a
// naive loop in double on random inputs of several lengths, in fp64, fp32 and bf16, including the
// in-place and aliased cases the autograd ops rely on.
#include <fathom/kernels/elementwise.hpp>

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

TEMPLATE_TEST_CASE("axpby computes alpha a + beta b", "[kernels][elementwise]", double, float,
                   bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 64, 1000, 4099);
  const double alpha = GENERATE(1.0, -0.75), beta = GENERATE(1.0, -1.0, 2.5);
  INFO(Precision<T>::name << " n " << n << " alpha " << alpha << " beta " << beta);
  auto a = normal_values<T>(n, 1), b = normal_values<T>(n, 2);
  std::vector<T> y(a.size());
  kernels::axpby(Cpu{}, kernels::AxpbyParams<T>{a.data(), b.data(), y.data(), n, alpha, beta});
  std::vector<double> want(a.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    want[i] = alpha * to_double(a[i]) + beta * to_double(b[i]);
  CHECK(first_mismatch(y, want) == "");

  SECTION("in place: y aliases a") {
    kernels::axpby(Cpu{}, kernels::AxpbyParams<T>{a.data(), b.data(), a.data(), n, alpha, beta});
    CHECK(first_mismatch(a, want) == "");
  }
}

TEMPLATE_TEST_CASE("axpy accumulates alpha x into y", "[kernels][elementwise]", double, float,
                   bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 13, 1000);
  const double alpha = GENERATE(1.0, 0.3, -2.0);
  INFO(Precision<T>::name << " n " << n << " alpha " << alpha);
  auto x = normal_values<T>(n, 3), y = normal_values<T>(n, 4);
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = to_double(y[i]) + alpha * to_double(x[i]);
  kernels::axpy(Cpu{}, kernels::AxpyParams<T>{x.data(), y.data(), n, alpha});
  CHECK(first_mismatch(y, want) == "");
}

TEMPLATE_TEST_CASE("scale multiplies by s, in place too", "[kernels][elementwise]", double, float,
                   bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 9, 1025);
  const double s = GENERATE(-1.0, 0.125, 3.7);
  INFO(Precision<T>::name << " n " << n << " s " << s);
  auto x = normal_values<T>(n, 5);
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = s * to_double(x[i]);
  std::vector<T> y(x.size());
  kernels::scale(Cpu{}, kernels::ScaleParams<T>{x.data(), y.data(), n, s});
  CHECK(first_mismatch(y, want) == "");
  kernels::scale(Cpu{}, kernels::ScaleParams<T>{x.data(), x.data(), n, s});
  CHECK(first_mismatch(x, want) == "");
}

TEMPLATE_TEST_CASE("mul multiplies element-wise", "[kernels][elementwise]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 31, 2048);
  INFO(Precision<T>::name << " n " << n);
  auto a = normal_values<T>(n, 6), b = normal_values<T>(n, 7);
  std::vector<T> y(a.size());
  kernels::mul(Cpu{}, kernels::MulParams<T>{a.data(), b.data(), y.data(), n});
  std::vector<double> want(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) want[i] = to_double(a[i]) * to_double(b[i]);
  CHECK(first_mismatch(y, want) == "");
}

TEMPLATE_TEST_CASE("mul_backward accumulates dy b into da and dy a into db",
                   "[kernels][elementwise]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 17, 999);
  INFO(Precision<T>::name << " n " << n);
  auto a = normal_values<T>(n, 8), b = normal_values<T>(n, 9), dy = normal_values<T>(n, 10);
  auto da = normal_values<T>(n, 11), db = normal_values<T>(n, 12);
  std::vector<double> want_da(a.size()), want_db(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    want_da[i] = to_double(da[i]) + to_double(dy[i]) * to_double(b[i]);
    want_db[i] = to_double(db[i]) + to_double(dy[i]) * to_double(a[i]);
  }

  SECTION("both gradients") {
    kernels::mul_backward(Cpu{}, kernels::MulBackwardParams<T>{a.data(), b.data(), dy.data(),
                                                               da.data(), db.data(), n});
    CHECK(first_mismatch(da, want_da) == "");
    CHECK(first_mismatch(db, want_db) == "");
  }
  SECTION("a null output is skipped, and the operand only it needs is never read") {
    kernels::mul_backward(
        Cpu{}, kernels::MulBackwardParams<T>{a.data(), nullptr, dy.data(), nullptr, db.data(), n});
    CHECK(first_mismatch(db, want_db) == "");
    kernels::mul_backward(
        Cpu{}, kernels::MulBackwardParams<T>{nullptr, b.data(), dy.data(), da.data(), nullptr, n});
    CHECK(first_mismatch(da, want_da) == "");
  }
  SECTION("da and db the same buffer (x * x) receive both terms") {
    auto g = normal_values<T>(n, 13);
    std::vector<double> want(a.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      want[i] = to_double(g[i]) + 2.0 * to_double(dy[i]) * to_double(a[i]);
    kernels::mul_backward(
        Cpu{}, kernels::MulBackwardParams<T>{a.data(), a.data(), dy.data(), g.data(), g.data(), n});
    CHECK(first_mismatch(g, want) == "");
  }
}

TEMPLATE_TEST_CASE("axpy_2d adds a block into strided rows and leaves the rest alone",
                   "[kernels][elementwise]", double, float, bf16) {
  using T = TestType;
  auto [rows, cols, ldx, ldy] =
      GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
          {{1, 1, 1, 3}, {4, 3, 3, 9}, {5, 2, 7, 6}, {3, 8, 8, 8}}));
  const double alpha = GENERATE(1.0, -0.5);
  INFO(Precision<T>::name << " rows " << rows << " cols " << cols << " ldx " << ldx << " ldy "
                          << ldy);
  auto x = normal_values<T>(rows * ldx, 14), y = normal_values<T>(rows * ldy, 15);
  std::vector<double> want(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) want[i] = to_double(y[i]);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      want[static_cast<std::size_t>(r * ldy + c)] +=
          alpha * to_double(x[static_cast<std::size_t>(r * ldx + c)]);
  kernels::axpy_2d(Cpu{},
                   kernels::Axpy2dParams<T>{x.data(), y.data(), rows, cols, ldx, ldy, alpha});
  CHECK(first_mismatch(y, want) == "");
}
