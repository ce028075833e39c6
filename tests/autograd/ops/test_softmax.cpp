// Tests for the differentiable softmax and cross_entropy (include/fathom/autograd/ops/softmax.hpp):
// gradcheck in double, ignored rows, the all-ignored batch (loss 0, zero gradient, no NaN),
// gradient accumulation over two backward passes, bf16 logits giving an fp32 loss, and error
// messages.
#include <fathom/autograd/ops/softmax.hpp>
#include <fathom/autograd/ops/elementwise.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::bf16;
using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace ag = fathom::autograd;
using fathom::test::error_of;
using fathom::test::leaf;

TEST_CASE("softmax gradient passes gradcheck", "[autograd][softmax]") {
  const auto dims = GENERATE(std::vector<std::int64_t>{1}, std::vector<std::int64_t>{3, 5},
                             std::vector<std::int64_t>{2, 3, 4});
  const Shape shape(dims);
  CAPTURE(shape.str());
  auto x = leaf(shape, 1, 2.0);
  auto result =
      ag::gradcheck([](const std::vector<Var<double>>& in) { return ag::softmax(in[0]); }, {x});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == x.numel());
}

TEST_CASE("softmax rows sum to one", "[autograd][softmax]") {
  ag::NoGradGuard no_grad;
  auto y = ag::softmax(leaf(Shape{4, 9}, 2, 3.0, 50.0)).value().to_vector();
  for (int r = 0; r < 4; ++r) {
    double s = 0.0;
    for (int c = 0; c < 9; ++c) s += y[static_cast<std::size_t>(r * 9 + c)];
    CHECK_THAT(s, WithinAbs(1.0, 1e-14));
  }
}

TEST_CASE("cross_entropy gradient passes gradcheck, with ignored rows", "[autograd][softmax]") {
  const int ignore = -100;
  const auto targets =
      GENERATE(std::vector<std::int32_t>{2}, std::vector<std::int32_t>{0, -100, 4, 1},
               std::vector<std::int32_t>{-100, 3, 3, -100, 0, 4});
  const auto rows = static_cast<std::int64_t>(targets.size());
  CAPTURE(rows);
  auto t = Tensor<std::int32_t>::from_vector(Shape{rows}, targets);
  auto logits = leaf(Shape{rows, 5}, 3, 2.0);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) { return ag::cross_entropy(in[0], t, ignore); },
      {logits});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == logits.numel());
}

TEST_CASE("cross_entropy loss is the mean over rows not ignored", "[autograd][softmax]") {
  // Two rows of uniform logits over 4 classes (loss log 4 each) and one ignored row.
  auto logits = Var<double>(
      Tensor<double>::from_vector(Shape{3, 4}, {1, 1, 1, 1, 9, -3, 2, 0, 2, 2, 2, 2}), true);
  auto t = Tensor<std::int32_t>::from_vector(Shape{3}, {3, 7, 0});
  auto loss = ag::cross_entropy(logits, t, 7);
  CHECK(loss.shape() == Shape{});
  CHECK_THAT(loss.value().item(), WithinAbs(std::log(4.0), 1e-14));
  ag::backward(loss);
  auto g = logits.grad().to_vector();
  // Rows 0 and 2: (1/4 - onehot) / 2; row 1 ignored: 0.
  const std::vector<double> want{0.125, 0.125, 0.125,  -0.375, 0,     0,
                                 0,     0,     -0.375, 0.125,  0.125, 0.125};
  for (std::size_t i = 0; i < want.size(); ++i) CHECK_THAT(g[i], WithinAbs(want[i], 1e-14));
}

TEST_CASE("cross_entropy of an all-ignored batch is 0 with a zero gradient, not NaN",
          "[autograd][softmax]") {
  auto logits = leaf(Shape{3, 6}, 4, 2.0);
  auto t = Tensor<std::int32_t>::from_vector(Shape{3}, {-100, -100, -100});
  auto loss = ag::cross_entropy(logits, t);
  CHECK(loss.value().item() == 0.0);
  ag::backward(loss);
  REQUIRE(logits.has_grad());
  for (double v : logits.grad().to_vector()) CHECK(v == 0.0);
}

TEST_CASE("cross_entropy gradients accumulate over two backward passes", "[autograd][softmax]") {
  // The first backward writes the logits' fresh gradient buffer, the second adds to it.
  auto logits = leaf(Shape{4, 7}, 5);
  auto t = Tensor<std::int32_t>::from_vector(Shape{4}, {6, 0, -100, 2});
  ag::backward(ag::cross_entropy(logits, t));
  const auto once = logits.grad().to_vector();
  ag::backward(ag::cross_entropy(logits, t));
  const auto twice = logits.grad().to_vector();
  double norm = 0.0;
  for (std::size_t i = 0; i < once.size(); ++i) {
    CHECK_THAT(twice[i], WithinAbs(2.0 * once[i], 1e-14));
    norm += std::abs(once[i]);
  }
  CHECK(norm > 0.1);
}

TEST_CASE("cross_entropy accepts (B, T, V) logits with (B, T) targets", "[autograd][softmax]") {
  auto logits3 = leaf(Shape{2, 3, 5}, 6);
  auto t2 = Tensor<std::int32_t>::from_vector(Shape{2, 3}, {0, 1, 2, 3, 4, -100});
  Var<double> logits2(logits3.value().reshape({6, 5}), false);
  auto t1 = t2.reshape({6});
  ag::NoGradGuard no_grad;
  CHECK_THAT(ag::cross_entropy(logits3, t2).value().item(),
             WithinAbs(ag::cross_entropy(logits2, t1).value().item(), 1e-15));
}

TEST_CASE("cross_entropy of bf16 logits is an fp32 loss close to the double one",
          "[autograd][softmax]") {
  auto ld = Tensor<double>::randn(Shape{8, 50}, 7, 2.0);
  auto lb = ld.cast<bf16>();
  auto t = Tensor<std::int32_t>::from_vector(Shape{8}, {0, 49, 3, -100, 17, 17, 25, 8});
  Var<bf16> logits(lb, true);
  Var<float> loss = ag::cross_entropy(logits, t);
  ag::NoGradGuard no_grad;
  const double want = ag::cross_entropy(Var<double>(lb.cast<double>()), t).value().item();
  CHECK_THAT(static_cast<double>(loss.value().item()), WithinRel(want, 1e-5));
}

TEST_CASE("cross_entropy errors name the shapes, and the row, target and V",
          "[autograd][softmax]") {
  auto logits = leaf(Shape{4, 10}, 8);
  auto t3 = Tensor<std::int32_t>::from_vector(Shape{3}, {1, 2, 3});
  auto e1 = error_of([&] { ag::cross_entropy(logits, t3); });
  CHECK(e1.find("(4, 10)") != std::string::npos);
  CHECK(e1.find("(3,)") != std::string::npos);
  auto bad = Tensor<std::int32_t>::from_vector(Shape{4}, {1, 2, 10, 3});
  auto e2 = error_of([&] { ag::cross_entropy(logits, bad); });
  CHECK(e2.find("row 2") != std::string::npos);
  CHECK(e2.find("target 10") != std::string::npos);
  CHECK(e2.find("[0, 10)") != std::string::npos);
  auto scalar = leaf(Shape{}, 9);
  CHECK(error_of([&] { ag::cross_entropy(scalar, t3); }).find("at least one dimension") !=
        std::string::npos);
}

TEST_CASE("cross_entropy writes the logits' gradient over logits nothing else holds",
          "[autograd][softmax]") {
  // logits = x * 2 (an op, so they are an intermediate); the gradient of x is the check.
  auto xv = Tensor<double>::randn(Shape{6, 9}, 70);
  std::vector<std::int32_t> t{0, 3, 8, 2, -100, 5};
  auto targets = Tensor<std::int32_t>::from_vector(Shape{6}, t);
  auto run = [&](bool hold_logits, const double** logits_data, const double** grad_data) {
    fathom::autograd::clear_tape();
    Var<double> x(xv.clone(), true);
    Var<double> logits = fathom::autograd::scale(x, 2.0);
    logits.retain_grad();
    auto slot = logits.slot();
    *logits_data = logits.value().data();
    auto loss = fathom::autograd::cross_entropy(logits, targets);
    Var<double> held = hold_logits ? logits : Var<double>();
    logits = Var<double>();  // only the graph (and `held`) still refer to the logits' values
    fathom::autograd::backward(loss);
    *grad_data = slot->grad.data();
    return x.grad().to_vector();
  };
  const double *in_place_logits = nullptr, *in_place_grad = nullptr, *kept_logits = nullptr,
               *kept_grad = nullptr;
  const auto in_place = run(false, &in_place_logits, &in_place_grad);
  const auto kept = run(true, &kept_logits, &kept_grad);
  CHECK(in_place_grad == in_place_logits);  // reused the logits' buffer
  CHECK(kept_grad != kept_logits);          // someone still held the logits: a new buffer
  CHECK(in_place == kept);
}

namespace {

// x -> logits = 2 x (an op, so the logits are an intermediate the loss may consume) -> mean
// cross-entropy, fused or not; backward seeded with `seed`. Returns the loss and x's gradient.
template <class T>
std::pair<double, std::vector<T>> scaled_logits_loss(const Tensor<T>& xv,
                                                     const Tensor<std::int32_t>& targets,
                                                     bool fused, double assumed_seed, double seed) {
  using A = fathom::accum_t<T>;
  ag::clear_tape();
  Var<T> x(xv.clone(), true);
  Var<T> logits = ag::scale(x, 2.0);
  auto loss = fused ? ag::cross_entropy_fused(std::move(logits), targets, assumed_seed)
                    : ag::cross_entropy(logits, targets);
  ag::backward(loss, Tensor<A>::full(Shape{}, static_cast<A>(seed)));
  return {static_cast<double>(loss.value().item()), x.grad().to_vector()};
}

}  // namespace

TEMPLATE_TEST_CASE("cross_entropy_fused gives cross_entropy's loss and gradient, bit for bit",
                   "[autograd][softmax]", double, float, bf16) {
  using T = TestType;
  auto xv = Tensor<double>::randn(Shape{7, 11}, 90, 1.5).cast<T>();
  auto targets = Tensor<std::int32_t>::from_vector(Shape{7}, {0, 10, -100, 3, 3, 7, 1});
  const auto runs = ag::detail::fused_cross_entropy_runs();
  const auto plain = scaled_logits_loss(xv, targets, false, 0.25, 0.25);
  const auto fused = scaled_logits_loss(xv, targets, true, 0.25, 0.25);
  CHECK(ag::detail::fused_cross_entropy_runs() == runs + 1);
  CHECK(fused.first == plain.first);
  CHECK(fused.second == plain.second);
  // A backward seeded with another d loss than the forward assumed gets that d loss's gradient.
  const auto plain3 = scaled_logits_loss(xv, targets, false, 1.0, 0.75);
  const auto fused3 = scaled_logits_loss(xv, targets, true, 0.25, 0.75);
  double norm = 0;
  for (std::size_t i = 0; i < plain3.second.size(); ++i) {
    const double want = fathom::scalar_cast<double>(plain3.second[i]);
    CHECK_THAT(fathom::scalar_cast<double>(fused3.second[i]),
               WithinAbs(want, 1e-6 + 2 * fathom::Precision<T>::rtol * std::abs(want)));
    norm += std::abs(want);
  }
  CHECK(norm > 0.1);
}

TEST_CASE("cross_entropy_fused leaves logits something else holds as they were",
          "[autograd][softmax]") {
  auto xv = Tensor<double>::randn(Shape{5, 6}, 91);
  auto targets = Tensor<std::int32_t>::from_vector(Shape{5}, {0, 5, 2, -100, 1});
  const auto plain = scaled_logits_loss(xv, targets, false, 1.0, 1.0);
  const auto runs = ag::detail::fused_cross_entropy_runs();
  ag::clear_tape();
  Var<double> x(xv.clone(), true);
  Var<double> logits = ag::scale(x, 2.0);
  Var<double> held = logits;  // a second holder of the values
  const auto before = held.value().to_vector();
  auto loss = ag::cross_entropy_fused(std::move(logits), targets, 1.0);
  CHECK(held.value().to_vector() == before);
  ag::backward(loss);
  CHECK(ag::detail::fused_cross_entropy_runs() == runs);  // the plain path ran
  CHECK(loss.value().item() == plain.first);
  CHECK(x.grad().to_vector() == plain.second);
  // Nor is anything fused without a gradient to compute.
  ag::NoGradGuard no_grad;
  auto again = ag::cross_entropy_fused(ag::scale(Var<double>(xv.clone(), true), 2.0), targets, 1.0);
  CHECK(again.value().item() == plain.first);
  CHECK(ag::detail::fused_cross_entropy_runs() == runs);
}

TEST_CASE("cross_entropy_fused gradient passes gradcheck, and a zero seed is refused",
          "[autograd][softmax]") {
  auto t = Tensor<std::int32_t>::from_vector(Shape{4}, {1, -100, 4, 0});
  auto logits = leaf(Shape{4, 5}, 92, 2.0);
  const auto runs = ag::detail::fused_cross_entropy_runs();
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return ag::cross_entropy_fused(ag::scale(in[0], 1.0), t, 1.0);
      },
      {logits});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == logits.numel());
  CHECK(ag::detail::fused_cross_entropy_runs() > runs);
  for (const double bad : {0.0, std::nan("")}) {
    const auto e = error_of([&] { ag::cross_entropy_fused(ag::scale(logits, 1.0), t, bad); });
    CHECK(e.find("gradient_seed must be finite and nonzero") != std::string::npos);
  }
}
