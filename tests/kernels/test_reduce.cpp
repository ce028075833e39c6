// Tests for the CPU reductions (include/fathom/kernels/reduce.hpp): sum and mean against a double
// loop at several lengths, sum_backward, and sum_squares over a list of tensors, in fp64, fp32,
// bf16.
#include <fathom/kernels/reduce.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::accum_t;
using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;
namespace kernels = fathom::kernels;

using namespace fathom::test;

namespace {

// Tolerance of a sum of n terms of total magnitude `mass` computed in accum_t<T> and stored as T:
// the rounding of the stored result (Precision<T>) plus the accumulation error, which for
// sequential addition is at most (n - 1) eps(accum) of the sum of magnitudes.
template <class T>
double sum_tolerance(double want, double mass, std::int64_t n) {
  const double eps = std::numeric_limits<accum_t<T>>::epsilon();
  return Precision<T>::atol + Precision<T>::rtol * std::abs(want) +
         static_cast<double>(n) * eps * mass;
}

}  // namespace

TEMPLATE_TEST_CASE("sum and mean match a double loop", "[kernels][reduce]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 2, 255, 4096, 100003);
  const double mean_shift = GENERATE(0.0, 3.0);  // 3.0: a sum far from zero
  INFO(Precision<T>::name << " n " << n << " values N(" << mean_shift << ", 1)");
  auto x = normal_values<T>(n, 21, 1.0, mean_shift);
  double want = 0, mass = 0;
  for (T v : x) {
    want += to_double(v);
    mass += std::abs(to_double(v));
  }
  T out = scalar_cast<T>(-123.0);
  kernels::sum(Cpu{}, kernels::SumParams<T>{x.data(), &out, n, 1.0});
  CHECK(std::abs(to_double(out) - want) <= sum_tolerance<T>(want, mass, n));

  const double inv = 1.0 / static_cast<double>(n);
  kernels::sum(Cpu{}, kernels::SumParams<T>{x.data(), &out, n, inv});
  CHECK(std::abs(to_double(out) - want * inv) <= sum_tolerance<T>(want * inv, mass * inv, n));
}

TEST_CASE("sum of an empty array is zero", "[kernels][reduce]") {
  float out = 7.0f;
  kernels::sum(Cpu{}, kernels::SumParams<float>{nullptr, &out, 0, 1.0});
  CHECK(out == 0.0f);
}

TEMPLATE_TEST_CASE("sum_backward adds scale * dy to every element", "[kernels][reduce]", double,
                   float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 33, 1000);
  const double scale = GENERATE(1.0, 0.01);
  INFO(Precision<T>::name << " n " << n << " scale " << scale);
  auto dx = normal_values<T>(n, 22);
  const T dy = scalar_cast<T>(1.75);
  std::vector<double> want(dx.size());
  for (std::size_t i = 0; i < dx.size(); ++i) want[i] = to_double(dx[i]) + scale * 1.75;
  kernels::sum_backward(Cpu{}, kernels::SumBackwardParams<T>{&dy, dx.data(), n, scale});
  std::size_t bad = dx.size();
  for (std::size_t i = 0; i < dx.size() && bad == dx.size(); ++i)
    if (!(std::abs(to_double(dx[i]) - want[i]) <=
          Precision<T>::atol + Precision<T>::rtol * std::abs(want[i])))
      bad = i;
  INFO("first wrong element: " << bad << " of " << dx.size());
  CHECK(bad == dx.size());
}

TEMPLATE_TEST_CASE("sum_squares adds the squares of every tensor of a list", "[kernels][reduce]",
                   double, float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::vector<std::int64_t> sizes =
      GENERATE(std::vector<std::int64_t>{1}, std::vector<std::int64_t>{768, 0, 3, 50000},
               std::vector<std::int64_t>{5461, 7, 7, 129});
  std::vector<std::vector<T>> tensors;
  kernels::SumSquaresParams<T> p;
  double want = 0;
  std::int64_t total_n = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    tensors.push_back(normal_values<T>(sizes[k], 30 + k));
    p.tensors.push_back({tensors.back().data(), sizes[k]});
    for (T v : tensors.back()) want += to_double(v) * to_double(v);
    total_n += sizes[k];
  }
  INFO(Precision<T>::name << " " << sizes.size() << " tensors, " << total_n << " elements");
  const A got = kernels::sum_squares(Cpu{}, p);
  // Every term is positive: the mass is the sum itself; accum_t<T> is what is returned.
  const double eps = std::numeric_limits<A>::epsilon();
  CHECK(std::abs(static_cast<double>(got) - want) <=
        static_cast<double>(total_n) * eps * want + 1e-300);
  A written = -1;
  kernels::sum_squares(Cpu{}, p, &written);
  CHECK(written == got);
}

TEST_CASE("sum_squares of an empty list is zero", "[kernels][reduce]") {
  CHECK(kernels::sum_squares(Cpu{}, kernels::SumSquaresParams<float>{}) == 0.0f);
}
