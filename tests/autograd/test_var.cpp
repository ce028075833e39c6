// Tests for the autograd core (include/fathom/autograd/var.hpp), through the element-wise and
// reduction ops: fan-in, a Var used twice, the no-grad scope, backward twice (an error, as
// documented), retain_grad, gradient accumulation across backward calls, zero_grad and detach.
#include <fathom/autograd/var.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace ag = fathom::autograd;
using fathom::test::contains;
using fathom::test::error_of;
using fathom::test::FreshTape;
using fathom::test::leaf;

TEST_CASE("gradients of a Var that feeds several ops add up (fan-in)", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{6}, 1), w = leaf(Shape{6}, 2);
  // y = sum(x * w + x + 3 x): dy/dx = w + 4, dy/dw = x.
  ag::backward(ag::sum(x * w + x + 3.0 * x));
  auto xv = x.value().to_vector(), wv = w.value().to_vector();
  auto gx = x.grad().to_vector(), gw = w.grad().to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    CHECK_THAT(gx[i], WithinRel(wv[i] + 4.0, 1e-14));
    CHECK(gw[i] == xv[i]);
  }
}

TEST_CASE("a Var used twice in one op gets both contributions", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{2, 3}, 3);
  ag::backward(ag::sum(x + x));
  for (double g : x.grad().to_vector()) CHECK(g == 2.0);
  Var<double> y = leaf(Shape{2, 3}, 4);
  ag::backward(ag::sum(y * y));
  auto yv = y.value().to_vector(), gy = y.grad().to_vector();
  for (std::size_t i = 0; i < yv.size(); ++i) CHECK(gy[i] == 2.0 * yv[i]);
}

TEST_CASE("under NoGradGuard nothing is recorded and results need no gradient", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{5}, 5);
  CHECK(ag::grad_enabled());
  {
    ag::NoGradGuard no_grad;
    CHECK_FALSE(ag::grad_enabled());
    {
      ag::NoGradGuard nested;
      CHECK_FALSE(ag::grad_enabled());
    }
    CHECK_FALSE(ag::grad_enabled());  // the inner guard restores the outer state, not "enabled"
    Var<double> y = ag::sum(x * x);
    CHECK_FALSE(y.requires_grad());
    CHECK(ag::tape_size() == 0);
    CHECK(contains(error_of([&] { ag::backward(y); }), "does not require a gradient"));
  }
  CHECK(ag::grad_enabled());
  Var<double> z = ag::sum(x * x);
  CHECK(z.requires_grad());
  CHECK(ag::tape_size() == 2);
}

TEST_CASE("a second backward of the same graph throws", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{3}, 6);
  Var<double> loss = ag::sum(x * x);
  ag::backward(loss);
  CHECK(ag::tape_size() == 0);  // backward consumes the tape
  const std::string msg = error_of([&] { ag::backward(loss); });
  INFO(msg);
  CHECK(contains(msg, "already consumed"));
  // Running the forward again makes a new graph that can be differentiated.
  const auto first = x.grad().to_vector();
  ag::backward(ag::sum(x * x));
  auto second = x.grad().to_vector();
  for (std::size_t i = 0; i < first.size(); ++i) CHECK(second[i] == 2.0 * first[i]);
}

TEST_CASE("leaf gradients accumulate across backward calls until zero_grad", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{4}, 7), w = leaf(Shape{4}, 8);
  auto step = [&] { ag::backward(ag::sum(x * w)); };
  step();
  const auto once = x.grad().to_vector();
  CHECK(once == w.value().to_vector());
  step();
  auto twice = x.grad().to_vector();
  for (std::size_t i = 0; i < once.size(); ++i) CHECK(twice[i] == 2.0 * once[i]);

  const double* buffer = x.grad().data();
  x.zero_grad();
  CHECK(x.has_grad());
  CHECK(x.grad().data() == buffer);  // zeroed in place, buffer kept
  for (double g : x.grad().to_vector()) CHECK(g == 0.0);
  step();
  CHECK(x.grad().to_vector() == once);

  x.zero_grad(true);
  CHECK_FALSE(x.has_grad());
}

TEST_CASE("intermediate gradients are freed unless retain_grad was called", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{3}, 9), w = leaf(Shape{3}, 10);
  Var<double> kept = x * w, dropped = x + w;
  kept.retain_grad();
  ag::backward(ag::sum(kept * 2.0 + dropped * 3.0));
  REQUIRE(kept.has_grad());
  for (double g : kept.grad().to_vector()) CHECK(g == 2.0);
  CHECK_FALSE(dropped.has_grad());
  CHECK_FALSE(kept.is_leaf());
  CHECK(x.is_leaf());
}

TEST_CASE("detach cuts the graph but shares the value", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{4}, 11), w = leaf(Shape{4}, 12);
  Var<double> d = (x * 2.0).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  ag::backward(ag::sum(d * w + x));
  // Through x * 2.0 -> detach nothing flows: x only gets the direct term.
  for (double g : x.grad().to_vector()) CHECK(g == 1.0);
  auto xv = x.value().to_vector(), gw = w.grad().to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) CHECK(gw[i] == 2.0 * xv[i]);

  Var<double> same = x.detach();
  CHECK(same.value().shares_storage_with(x.value()));
}

TEST_CASE("backward with an explicit seed and its errors", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{2, 3}, 13);
  Var<double> y = x * 3.0;
  auto seed = Tensor<double>::randn(Shape{2, 3}, 14);
  CHECK(contains(error_of([&] { ag::backward(y); }), "(2, 3)"));  // non-scalar root needs a seed
  CHECK(contains(error_of([&] { ag::backward(y, Tensor<double>::zeros(Shape{3, 2})); }), "(3, 2)"));
  ag::backward(y, seed);
  auto sv = seed.to_vector(), g = x.grad().to_vector();
  for (std::size_t i = 0; i < sv.size(); ++i) CHECK(g[i] == 3.0 * sv[i]);
}

TEST_CASE("a leaf that the root does not depend on gets no gradient", "[autograd][var]") {
  FreshTape fresh;
  Var<double> x = leaf(Shape{3}, 15), unused = leaf(Shape{3}, 16);
  Var<double> other = unused * 2.0;  // recorded, but not on the path to the root
  ag::backward(ag::sum(x));
  CHECK(x.has_grad());
  CHECK_FALSE(unused.has_grad());
  CHECK_FALSE(other.has_grad());
}

TEST_CASE("on_final runs once per backward, when the leaf's gradient is final", "[autograd][var]") {
  // a is used first and last (its gradient is complete only at the end), b in the middle, c never.
  Var<double> a(Tensor<double>::randn(Shape{3}, 1), true),
      b(Tensor<double>::randn(Shape{3}, 2), true);
  Var<double> c(Tensor<double>::randn(Shape{3}, 3), true);
  std::vector<std::string> order;
  std::vector<double> a_seen, b_seen;
  a.set_on_final([&] {
    order.push_back("a");
    a_seen = a.grad().to_vector();
  });
  b.set_on_final([&] {
    order.push_back("b");
    b_seen = b.grad().to_vector();
  });
  c.set_on_final([&] { order.push_back("c"); });
  for (int pass = 0; pass < 2; ++pass) {
    order.clear();
    a.zero_grad(true);
    b.zero_grad(true);
    auto h = ag::mul(a, a);           // node 0: first use of a
    auto y = ag::mul(h, b);           // node 1: b
    auto z = ag::sum(ag::mul(y, a));  // nodes 2, 3: a again
    ag::backward(z);
    CHECK(order == std::vector<std::string>{"b", "a"});
    CHECK(a_seen == a.grad().to_vector());
    CHECK(b_seen == b.grad().to_vector());
  }
  // Under NoGradGuard nothing is recorded and nothing is called back.
  order.clear();
  {
    ag::NoGradGuard guard;
    (void)ag::mul(a, b);
  }
  ag::clear_tape();
  CHECK(order.empty());
}
