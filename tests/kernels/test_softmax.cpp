// Tests for the CPU softmax and cross-entropy kernels (include/fathom/kernels/softmax.hpp): forward
// against the formulas in double (including logits large enough to overflow an unshifted exp),
// backward against the Jacobian, ignored rows, an all-ignored batch, the fused forward gradient,
// and the error for a target out of range.
#include <fathom/kernels/softmax.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/core/error.hpp>
#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::accum_t;
using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;

using namespace fathom::test;

namespace {

// Targets in [0, V) with about one row in four set to ignore_index (never all, unless rows == 1).
std::vector<std::int32_t> random_targets(std::int64_t rows, std::int64_t vocab, int ignore_index,
                                         std::uint64_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(rows));
  for (std::size_t r = 0; r < t.size(); ++r) {
    const double u = fathom::rng::uniform(seed, 2 * r), v = fathom::rng::uniform(seed, 2 * r + 1);
    t[r] = static_cast<std::int32_t>(v * static_cast<double>(vocab));
    if (u < 0.25 && r > 0) t[r] = ignore_index;
  }
  return t;
}

std::vector<double> reference_softmax(const std::vector<double>& x, std::int64_t rows,
                                      std::int64_t cols) {
  std::vector<double> y(x.size());
  const auto C = static_cast<std::size_t>(cols);
  for (std::size_t r = 0; r < static_cast<std::size_t>(rows); ++r) {
    double max = x[r * C];
    for (std::size_t c = 0; c < C; ++c) max = std::max(max, x[r * C + c]);
    double sum = 0.0;
    for (std::size_t c = 0; c < C; ++c) sum += std::exp(x[r * C + c] - max);
    for (std::size_t c = 0; c < C; ++c) y[r * C + c] = std::exp(x[r * C + c] - max) / sum;
  }
  return y;
}

struct CrossEntropyReference {
  double loss = 0.0;
  std::int32_t valid = 0;
  std::vector<double> lse, dlogits;
};

// loss = mean over valid rows of -log softmax(x)[target]; dlogits = dloss / valid * (p - onehot).
CrossEntropyReference reference_cross_entropy(const std::vector<double>& x,
                                              const std::vector<std::int32_t>& t, std::int64_t rows,
                                              std::int64_t vocab, int ignore_index, double dloss) {
  CrossEntropyReference r;
  const auto V = static_cast<std::size_t>(vocab);
  auto p = reference_softmax(x, rows, vocab);
  double total = 0.0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
    double max = x[i * V], sum = 0.0;
    for (std::size_t c = 0; c < V; ++c) max = std::max(max, x[i * V + c]);
    for (std::size_t c = 0; c < V; ++c) sum += std::exp(x[i * V + c] - max);
    r.lse.push_back(max + std::log(sum));
    if (t[i] != ignore_index) {
      total += -std::log(p[i * V + static_cast<std::size_t>(t[i])]);
      ++r.valid;
    }
  }
  r.loss = r.valid ? total / r.valid : 0.0;
  r.dlogits.assign(x.size(), 0.0);
  for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
    if (t[i] == ignore_index) continue;
    for (std::size_t c = 0; c < V; ++c) {
      const double onehot = static_cast<std::int32_t>(c) == t[i] ? 1.0 : 0.0;
      r.dlogits[i * V + c] = dloss / r.valid * (p[i * V + c] - onehot);
    }
  }
  return r;
}

}  // namespace

TEMPLATE_TEST_CASE("softmax forward matches the formula, also for logits that overflow exp",
                   "[kernels][softmax]", double, float, bf16) {
  using T = TestType;
  const std::int64_t rows = GENERATE(1, 3, 8);
  const std::int64_t cols = GENERATE(1, 2, 7, 100, 1031);
  const double offset =
      GENERATE(0.0, 100.0);  // exp(100) overflows float: the kernel must subtract the max
  CAPTURE(rows, cols, offset, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols);
  auto x = normal_values<T>(n, 71, 2.0, offset);
  std::vector<T> y(n);
  fathom::kernels::softmax(Cpu{},
                           fathom::kernels::SoftmaxParams<T>{x.data(), y.data(), rows, cols});
  auto want = reference_softmax(to_double(x), rows, cols);
  CHECK(first_mismatch("y", to_double(y), want, Precision<T>::rtol, Precision<T>::atol, cols) ==
        "");
}

TEMPLATE_TEST_CASE("softmax backward matches the Jacobian and accumulates", "[kernels][softmax]",
                   double, float, bf16) {
  using T = TestType;
  const std::int64_t rows = GENERATE(1, 4);
  const std::int64_t cols = GENERATE(1, 3, 65);
  const bool accumulate = GENERATE(true, false);
  CAPTURE(rows, cols, accumulate, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols), C = static_cast<std::size_t>(cols);
  auto x = normal_values<T>(n, 81, 1.5);
  auto dy = normal_values<T>(n, 82);
  std::vector<T> y(n);
  fathom::kernels::softmax(Cpu{},
                           fathom::kernels::SoftmaxParams<T>{x.data(), y.data(), rows, cols});
  const auto dx0 = normal_values<T>(n, 83);
  auto dx = dx0;
  fathom::kernels::softmax_backward(
      Cpu{}, fathom::kernels::SoftmaxBackwardParams<T>{y.data(), dy.data(), dx.data(), rows, cols,
                                                       accumulate});
  // dx_j = sum_i dy_i p_i (delta_ij - p_j), with p from the rounded y the backward receives.
  const auto p = to_double(y), g = to_double(dy);
  std::vector<double> want(n);
  for (std::size_t r = 0; r < static_cast<std::size_t>(rows); ++r) {
    for (std::size_t j = 0; j < C; ++j) {
      double sum = accumulate ? scalar_cast<double>(dx0[r * C + j]) : 0.0;
      for (std::size_t i = 0; i < C; ++i)
        sum += g[r * C + i] * p[r * C + i] * ((i == j ? 1.0 : 0.0) - p[r * C + j]);
      want[r * C + j] = sum;
    }
  }
  CHECK(first_mismatch("dx", to_double(dx), want, Precision<T>::rtol, Precision<T>::atol, cols) ==
        "");
}

TEMPLATE_TEST_CASE("cross_entropy forward: mean over rows not ignored, saved logsumexp",
                   "[kernels][softmax]", double, float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::int64_t rows = GENERATE(1, 5, 16);
  const std::int64_t vocab = GENERATE(1, 2, 7, 1000, 2053);
  const int ignore_index = GENERATE(-100, 3);  // an index inside [0, V) may be the ignored one too
  CAPTURE(rows, vocab, ignore_index, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * vocab);
  auto x = normal_values<T>(n, 91, 3.0, 20.0);
  auto t = random_targets(rows, vocab, ignore_index, 92);
  A loss = -1;
  std::int32_t valid = -1;
  std::vector<A> lse(static_cast<std::size_t>(rows));
  fathom::kernels::CrossEntropyParams<T> p;
  p.logits = x.data();
  p.targets = t.data();
  p.loss = &loss;
  p.lse = lse.data();
  p.valid_rows = &valid;
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  fathom::kernels::cross_entropy(Cpu{}, p);
  auto ref = reference_cross_entropy(to_double(x), t, rows, vocab, ignore_index, 1.0);
  CHECK(valid == ref.valid);
  CHECK_THAT(static_cast<double>(loss),
             WithinAbs(ref.loss, Precision<T>::atol + Precision<T>::rtol * ref.loss));
  // logsumexp is computed in accum precision (fp32 for bf16): hold it to fp32's tolerance.
  CHECK(first_mismatch("lse", to_double(lse), ref.lse, Precision<A>::rtol, Precision<A>::atol, 1) ==
        "");
}

TEMPLATE_TEST_CASE(
    "cross_entropy backward and the fused forward gradient match (p - onehot) dloss / valid",
    "[kernels][softmax]", double, float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::int64_t rows = GENERATE(1, 6);
  const std::int64_t vocab = GENERATE(1, 5, 257);
  const bool accumulate = GENERATE(true, false);
  CAPTURE(rows, vocab, accumulate, Precision<T>::name);
  const int ignore_index = -100;
  const auto n = static_cast<std::size_t>(rows * vocab);
  auto x = normal_values<T>(n, 101, 2.0);
  auto t = random_targets(rows, vocab, ignore_index, 102);
  const A dloss = static_cast<A>(0.7);
  const auto d0 = normal_values<T>(n, 103);
  auto ref = reference_cross_entropy(to_double(x), t, rows, vocab, ignore_index,
                                     static_cast<double>(dloss));
  for (std::size_t i = 0; i < n; ++i)
    ref.dlogits[i] += accumulate ? scalar_cast<double>(d0[i]) : 0.0;

  // Forward with the gradient fused in (the caller knows dloss up front).
  A loss = 0;
  std::int32_t valid = 0;
  std::vector<A> lse(static_cast<std::size_t>(rows));
  auto fused = d0;
  fathom::kernels::CrossEntropyParams<T> p;
  p.logits = x.data();
  p.targets = t.data();
  p.loss = &loss;
  p.lse = lse.data();
  p.valid_rows = &valid;
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  p.dlogits = fused.data();
  p.grad_scale = static_cast<double>(dloss);
  p.accumulate = accumulate;
  fathom::kernels::cross_entropy(Cpu{}, p);
  CHECK(first_mismatch("fused dlogits", to_double(fused), ref.dlogits, Precision<T>::rtol,
                       Precision<T>::atol, vocab) == "");

  // Backward from the saved logsumexp.
  auto dlogits = d0;
  fathom::kernels::CrossEntropyBackwardParams<T> b;
  b.logits = x.data();
  b.targets = t.data();
  b.lse = lse.data();
  b.valid_rows = &valid;
  b.dloss = &dloss;
  b.dlogits = dlogits.data();
  b.rows = rows;
  b.vocab = vocab;
  b.ignore_index = ignore_index;
  b.accumulate = accumulate;
  fathom::kernels::cross_entropy_backward(Cpu{}, b);
  CHECK(first_mismatch("dlogits", to_double(dlogits), ref.dlogits, Precision<T>::rtol,
                       Precision<T>::atol, vocab) == "");

  // The fused gradient written over the logits themselves: the loss and the gradient of the
  // separate buffer, bit for bit.
  if (!accumulate) {
    auto in_place = x;
    A loss_in_place = 0;
    p.logits = in_place.data();
    p.dlogits = in_place.data();
    p.loss = &loss_in_place;
    fathom::kernels::cross_entropy(Cpu{}, p);
    CHECK(loss_in_place == loss);
    CHECK(in_place == fused);
  }
}

TEMPLATE_TEST_CASE("cross_entropy_rescale brings a fused gradient to the backward's d loss",
                   "[kernels][softmax]", double, float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::size_t n = GENERATE(1, 13, 1000);
  CAPTURE(n, Precision<T>::name);
  const auto g = normal_values<T>(n, 111);
  const auto d0 = normal_values<T>(n, 112);
  const A seed = static_cast<A>(0.25);
  fathom::kernels::CrossEntropyRescaleParams<T> r;
  r.seed = seed;
  r.n = static_cast<std::int64_t>(n);
  SECTION("in place at the seed the forward assumed: unchanged") {
    auto x = g;
    const A dloss = seed;
    r.g = r.dst = x.data();
    r.dloss = &dloss;
    fathom::kernels::cross_entropy_rescale(Cpu{}, r);
    CHECK(x == g);
  }
  for (const bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    auto dst = d0;
    const A dloss = static_cast<A>(0.75);
    r.g = g.data();
    r.dst = dst.data();
    r.dloss = &dloss;
    r.accumulate = accumulate;
    fathom::kernels::cross_entropy_rescale(Cpu{}, r);
    std::vector<double> want(n);
    for (std::size_t i = 0; i < n; ++i)
      want[i] = (accumulate ? scalar_cast<double>(d0[i]) : 0.0) + 3.0 * scalar_cast<double>(g[i]);
    CHECK(first_mismatch("rescaled", to_double(dst), want, Precision<T>::rtol, Precision<T>::atol,
                         1) == "");
  }
}

TEMPLATE_TEST_CASE("cross_entropy of an all-ignored batch is 0 with a zero gradient, not NaN",
                   "[kernels][softmax]", double, float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::int64_t rows = 4, vocab = 9;
  auto x = normal_values<T>(36, 111, 2.0);
  std::vector<std::int32_t> t(4, -1);
  A loss = 123;
  std::int32_t valid = 5;
  std::vector<A> lse(4);
  std::vector<T> fused = normal_values<T>(36, 112);  // overwritten with zeros (accumulate = false)
  fathom::kernels::CrossEntropyParams<T> p;
  p.logits = x.data();
  p.targets = t.data();
  p.loss = &loss;
  p.lse = lse.data();
  p.valid_rows = &valid;
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = -1;
  p.dlogits = fused.data();
  fathom::kernels::cross_entropy(Cpu{}, p);
  CHECK(loss == A(0));
  CHECK(valid == 0);
  for (auto v : fused) CHECK(scalar_cast<double>(v) == 0.0);

  const A dloss = 1;
  std::vector<T> dlogits = normal_values<T>(36, 113);
  fathom::kernels::CrossEntropyBackwardParams<T> b;
  b.logits = x.data();
  b.targets = t.data();
  b.lse = lse.data();
  b.valid_rows = &valid;
  b.dloss = &dloss;
  b.dlogits = dlogits.data();
  b.rows = rows;
  b.vocab = vocab;
  b.ignore_index = -1;
  b.accumulate = false;
  fathom::kernels::cross_entropy_backward(Cpu{}, b);
  for (auto v : dlogits) CHECK(scalar_cast<double>(v) == 0.0);
}

TEST_CASE("cross_entropy rejects a target outside [0, V), naming the row, the target and V",
          "[kernels][softmax]") {
  const std::int64_t rows = 3, vocab = 10;
  auto x = normal_values<float>(30, 121);
  const std::int32_t bad = GENERATE(10, -1, 5000);
  std::vector<std::int32_t> t{1, 2, bad};
  float loss = 0;
  fathom::kernels::CrossEntropyParams<float> p;
  p.logits = x.data();
  p.targets = t.data();
  p.loss = &loss;
  p.rows = rows;
  p.vocab = vocab;
  std::string message;
  try {
    fathom::kernels::cross_entropy(Cpu{}, p);
  } catch (const fathom::Error& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("row 2") != std::string::npos);
  CHECK(message.find("target " + std::to_string(bad)) != std::string::npos);
  CHECK(message.find("[0, 10)") != std::string::npos);
}
