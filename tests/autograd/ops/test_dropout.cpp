// Tests for the differentiable dropout (include/fathom/autograd/ops/dropout.hpp): gradcheck in
// double (the mask is a fixed function of seed and offset), identity at p = 0, the gradient uses
// the forward's mask, and the range check on p.
#include <fathom/autograd/ops/dropout.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/reduce.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
using fathom::autograd::gradcheck;
namespace ag = fathom::autograd;
using fathom::test::leaf;

namespace {

using Inputs = std::vector<Var<double>>;

}  // namespace

TEST_CASE("dropout gradients match finite differences", "[autograd][dropout]") {
  const Shape shape = GENERATE(Shape{1}, Shape{17}, Shape{4, 6});
  const double p = GENERATE(0.25, 0.5);
  INFO("shape " << shape << " p " << p);
  auto r =
      gradcheck([p](const Inputs& in) { return ag::dropout(in[0], p, 42, 7); }, {leaf(shape, 1)});
  INFO(r.first_failure);
  CHECK(r.ok);
}

TEST_CASE("dropout's gradient is the forward's mask scaled by 1 / (1 - p)", "[autograd][dropout]") {
  const double p = 0.3;
  Var<double> x = leaf(Shape{50}, 2);
  Var<double> y = ag::dropout(x, p, 11, 1000);
  ag::backward(ag::sum(y));
  auto xv = x.value().to_vector(), yv = y.value().to_vector(), g = x.grad().to_vector();
  int dropped = 0;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] == 0.0) {
      ++dropped;
      CHECK(g[i] == 0.0);
    } else {
      CHECK(yv[i] == xv[i] * (1.0 / (1.0 - p)));
      CHECK(g[i] == 1.0 / (1.0 - p));
    }
  }
  CHECK(dropped > 0);
  CHECK(dropped < 50);
}

TEST_CASE("dropout with p = 0 returns its input", "[autograd][dropout]") {
  ag::clear_tape();
  Var<double> x = leaf(Shape{3, 3}, 3);
  Var<double> y = ag::dropout(x, 0.0, 1, 0);
  CHECK(y.slot() == x.slot());
  CHECK(ag::tape_size() == 0);
}

TEST_CASE("dropout rejects p outside [0, 1)", "[autograd][dropout]") {
  Var<double> x = leaf(Shape{4}, 4);
  for (double p : {-0.1, 1.0, 1.5}) {
    try {
      ag::dropout(x, p, 1, 0);
      FAIL("dropout accepted p = " << p);
    } catch (const fathom::Error& e) {
      CHECK(std::string(e.what()).find("0 <= p < 1") != std::string::npos);
    }
  }
}
