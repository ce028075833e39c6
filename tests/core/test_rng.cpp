// Tests for the counter-based RNG (include/fathom/core/rng.hpp): Philox4x32-10 against the
// published known answer, determinism, and the moments of the uniform and normal streams.
#include <fathom/core/rng.hpp>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "support/catch.hpp"

namespace rng = fathom::rng;

namespace {

constexpr int kSamples = 100000;

struct Moments {
  double mean = 0, var = 0, skew = 0, kurt = 0;
};

Moments moments(const std::vector<double>& x) {
  Moments m;
  for (double v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  double m2 = 0, m3 = 0, m4 = 0;
  for (double v : x) {
    const double d = v - m.mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  const double n = static_cast<double>(x.size());
  m2 /= n;
  m3 /= n;
  m4 /= n;
  m.var = m2;
  m.skew = m3 / std::pow(m2, 1.5);
  m.kurt = m4 / (m2 * m2);
  return m;
}

}  // namespace

TEST_CASE("Philox4x32-10 matches the Random123 known answer", "[core][rng]") {
  // Counter (0, 0, 0, 0), key (0, 0): the first of Random123's kat_vectors for philox4x32_10.
  const rng::Philox4x32 r = rng::philox(0, 0);
  CHECK(r.v[0] == 0x6627e8d5u);
  CHECK(r.v[1] == 0xe169c58du);
  CHECK(r.v[2] == 0xbc57ac4cu);
  CHECK(r.v[3] == 0x9b00dbd8u);
}

TEST_CASE("Philox streams are pure functions of (seed, index)", "[core][rng]") {
  const std::uint64_t seed = GENERATE(1ull, 42ull, 0x9e3779b97f4a7c15ull);
  std::vector<double> forward(1000), backward(1000);
  for (int i = 0; i < 1000; ++i) forward[i] = rng::normal(seed, 5000 + i);
  for (int i = 999; i >= 0; --i) backward[i] = rng::normal(seed, 5000 + i);
  REQUIRE(forward == backward);

  // A different seed or a different index gives different values.
  int equal = 0;
  for (int i = 0; i < 1000; ++i) equal += rng::uniform(seed, i) == rng::uniform(seed + 1, i);
  CHECK(equal == 0);
  std::set<double> distinct;
  for (int i = 0; i < 1000; ++i) distinct.insert(rng::uniform(seed, i));
  CHECK(distinct.size() == 1000);
}

TEST_CASE("derive_seed gives each stream its own seed", "[core][rng]") {
  std::set<std::uint64_t> seeds;
  for (std::uint64_t s = 0; s < 1000; ++s) seeds.insert(rng::derive_seed(7, s));
  CHECK(seeds.size() == 1000);
  CHECK(rng::derive_seed(7, 3) == rng::derive_seed(7, 3));
  CHECK(rng::derive_seed(7, 3) != rng::derive_seed(8, 3));
}

TEST_CASE("uniform stream has the moments of U[0, 1)", "[core][rng]") {
  const std::uint64_t seed = GENERATE(3ull, 2024ull);
  std::vector<double> x(kSamples);
  for (int i = 0; i < kSamples; ++i) {
    x[i] = rng::uniform(seed, i);
    REQUIRE(x[i] >= 0.0);
    REQUIRE(x[i] < 1.0);
  }
  const Moments m = moments(x);
  // Tolerances are 5 standard errors at n = 1e5: sd(mean) = 0.00091, sd(var) = 0.00024.
  CHECK_THAT(m.mean, WithinAbs(0.5, 0.0046));
  CHECK_THAT(m.var, WithinAbs(1.0 / 12.0, 0.0012));
  CHECK_THAT(m.skew, WithinAbs(0.0, 0.04));
  CHECK_THAT(m.kurt, WithinAbs(1.8, 0.02));  // uniform kurtosis 9/5; sd(kurt) ~ 0.0036

  // Each tenth of [0, 1) holds a tenth of the samples (sd of a bin's share: 0.00095).
  std::vector<int> bins(10, 0);
  for (double v : x) ++bins[static_cast<int>(v * 10)];
  for (int b : bins) CHECK_THAT(b / double(kSamples), WithinAbs(0.1, 0.005));
}

TEST_CASE("normal stream has the moments of N(0, 1)", "[core][rng]") {
  const std::uint64_t seed = GENERATE(3ull, 2024ull);
  std::vector<double> x(kSamples);
  for (int i = 0; i < kSamples; ++i) {
    x[i] = rng::normal(seed, i);
    REQUIRE(std::isfinite(x[i]));
  }
  const Moments m = moments(x);
  // 5 standard errors at n = 1e5: sd(mean) = 0.0032, sd(var) = 0.0045, sd(skew) = 0.0077,
  // sd(kurt) = 0.0155.
  CHECK_THAT(m.mean, WithinAbs(0.0, 0.016));
  CHECK_THAT(m.var, WithinAbs(1.0, 0.023));
  CHECK_THAT(m.skew, WithinAbs(0.0, 0.04));
  CHECK_THAT(m.kurt, WithinAbs(3.0, 0.08));

  int within_one = 0;
  for (double v : x) within_one += std::abs(v) < 1.0;
  CHECK_THAT(within_one / double(kSamples), WithinAbs(0.682689, 0.0075));

  // Successive elements are uncorrelated.
  double cov = 0;
  for (int i = 0; i + 1 < kSamples; ++i) cov += (x[i] - m.mean) * (x[i + 1] - m.mean);
  CHECK_THAT(cov / (kSamples - 1) / m.var, WithinAbs(0.0, 0.016));
}
