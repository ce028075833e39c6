// Tests for the CPU dropout kernels (include/fathom/kernels/dropout.hpp): the mask is exactly
// rng::uniform(seed, offset + i) >= p, kept values are scaled by 1 / (1 - p), the drop rate is p,
// backward uses the forward's mask, and offsets let a tensor be processed in pieces.
#include <fathom/kernels/dropout.hpp>

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
namespace rng = fathom::rng;
using fathom::test::to_double;

namespace {

// Values bounded away from zero (0.5 to 2.5 with random sign), so a dropped element is
// distinguishable from a kept one.
template <class T>
std::vector<T> random_nonzero(std::int64_t n, std::uint64_t seed) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double u = rng::uniform(seed, i);
    v[i] = scalar_cast<T>((u < 0.5 ? -1.0 : 1.0) * (0.5 + 4.0 * std::abs(u - 0.5)));
  }
  return v;
}

std::string describe(std::size_t i, bool kept, double want, double got) {
  std::ostringstream s;
  s << "element " << i << (kept ? " (kept)" : " (dropped)") << ": want " << want << ", got " << got;
  return s.str();
}

template <class T>
bool close(double got, double want) {
  return std::abs(got - want) <= Precision<T>::atol + Precision<T>::rtol * std::abs(want);
}

}  // namespace

TEMPLATE_TEST_CASE("dropout keeps element i exactly when uniform(seed, offset + i) >= p",
                   "[kernels][dropout]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 10, 4097);
  const double p = GENERATE(0.1, 0.5, 0.9);
  const std::uint64_t seed = 77, offset = GENERATE(0ull, 123456789ull);
  INFO(Precision<T>::name << " n " << n << " p " << p << " offset " << offset);
  auto x = random_nonzero<T>(n, 5);
  std::vector<T> y(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<T>{x.data(), y.data(), n, p, seed, offset});
  std::string bad;
  for (std::size_t i = 0; i < x.size() && bad.empty(); ++i) {
    const bool keep = rng::uniform(seed, offset + i) >= p;
    const bool ok =
        keep ? close<T>(to_double(y[i]), to_double(x[i]) / (1.0 - p)) : to_double(y[i]) == 0.0;
    if (!ok) bad = describe(i, keep, keep ? to_double(x[i]) / (1.0 - p) : 0.0, to_double(y[i]));
  }
  CHECK(bad == "");
}

TEST_CASE("dropout drops a fraction p of the elements", "[kernels][dropout]") {
  const std::int64_t n = 200000;
  const double p = GENERATE(0.05, 0.3, 0.7);
  std::vector<float> x(static_cast<std::size_t>(n), 1.0f), y(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<float>{x.data(), y.data(), n, p, 2024, 0});
  double dropped = 0, total = 0;
  for (float v : y) {
    dropped += v == 0.0f;
    total += v;
  }
  // Binomial: standard deviation sqrt(n p (1 - p)); 6 of them is a false alarm in ~1e-9 runs.
  const double sigma = std::sqrt(static_cast<double>(n) * p * (1.0 - p));
  CHECK(std::abs(dropped - p * static_cast<double>(n)) < 6.0 * sigma);
  // Scaling by 1 / (1 - p) keeps the expected sum: mean of y near 1.
  CHECK(std::abs(total / static_cast<double>(n) - 1.0) <
        6.0 * sigma / ((1.0 - p) * static_cast<double>(n)));
}

TEST_CASE("dropout masks differ between seeds and are reproducible for one seed",
          "[kernels][dropout]") {
  const std::int64_t n = 1000;
  std::vector<float> x(static_cast<std::size_t>(n), 1.0f), a(x.size()), b(x.size()), c(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<float>{x.data(), a.data(), n, 0.5, 1, 0});
  kernels::dropout(Cpu{}, kernels::DropoutParams<float>{x.data(), b.data(), n, 0.5, 1, 0});
  kernels::dropout(Cpu{}, kernels::DropoutParams<float>{x.data(), c.data(), n, 0.5, 2, 0});
  CHECK(a == b);
  int differ = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differ += (a[i] == 0.0f) != (c[i] == 0.0f);
  CHECK(differ > 400);  // independent masks at p = 0.5 disagree on about half the elements
}

TEMPLATE_TEST_CASE("dropout_backward accumulates dy / (1 - p) through the forward's mask",
                   "[kernels][dropout]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 33, 2050);
  const double p = GENERATE(0.2, 0.6);
  const std::uint64_t seed = 9, offset = 31;
  INFO(Precision<T>::name << " n " << n << " p " << p);
  auto x = random_nonzero<T>(n, 6), dy = random_nonzero<T>(n, 7), dx = random_nonzero<T>(n, 8);
  const auto dx0 = dx;
  std::vector<T> y(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<T>{x.data(), y.data(), n, p, seed, offset});
  kernels::dropout_backward(
      Cpu{}, kernels::DropoutBackwardParams<T>{dy.data(), dx.data(), n, p, seed, offset});
  std::string bad;
  for (std::size_t i = 0; i < x.size() && bad.empty(); ++i) {
    const bool kept = to_double(y[i]) != 0.0;
    const double want = to_double(dx0[i]) + (kept ? to_double(dy[i]) / (1.0 - p) : 0.0);
    if (!close<T>(to_double(dx[i]), want)) bad = describe(i, kept, want, to_double(dx[i]));
  }
  CHECK(bad == "");
}

TEST_CASE("dropout of a tensor in two pieces with offsets equals dropout of the whole",
          "[kernels][dropout]") {
  const std::int64_t n = 777, head = GENERATE(1, 300, 776);
  auto x = random_nonzero<double>(n, 10);
  std::vector<double> whole(x.size()), pieces(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<double>{x.data(), whole.data(), n, 0.4, 5, 1000});
  kernels::dropout(Cpu{},
                   kernels::DropoutParams<double>{x.data(), pieces.data(), head, 0.4, 5, 1000});
  kernels::dropout(
      Cpu{}, kernels::DropoutParams<double>{x.data() + head, pieces.data() + head, n - head, 0.4, 5,
                                            1000 + static_cast<std::uint64_t>(head)});
  CHECK(whole == pieces);
}
