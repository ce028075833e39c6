// Tests for the differentiable activations (include/fathom/autograd/ops/activation.hpp): gradcheck
// of gelu, silu and swiglu in double at several shapes, swiglu as one node, swiglu(x, x), errors.
#include <fathom/autograd/ops/activation.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>

#include "support/catch.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
using fathom::autograd::gradcheck;
namespace ag = fathom::autograd;

namespace {

// Spread over [-4, 4] so both tails and the bend of each activation are exercised.
Var<double> leaf(const Shape& shape, std::uint64_t seed) {
  return Var<double>(Tensor<double>::randn(shape, seed, 2.0), true);
}

using Inputs = std::vector<Var<double>>;

}  // namespace

TEST_CASE("gelu, silu and swiglu gradients match finite differences", "[autograd][activation]") {
  const Shape shape = GENERATE(Shape{1}, Shape{13}, Shape{3, 7}, Shape{2, 2, 5});
  INFO("shape " << shape);
  auto rg = gradcheck([](const Inputs& in) { return ag::gelu(in[0]); }, {leaf(shape, 1)});
  INFO("gelu: " << rg.first_failure);
  CHECK(rg.ok);
  auto rs = gradcheck([](const Inputs& in) { return ag::silu(in[0]); }, {leaf(shape, 2)});
  INFO("silu: " << rs.first_failure);
  CHECK(rs.ok);
  auto rw = gradcheck([](const Inputs& in) { return ag::swiglu(in[0], in[1]); },
                      {leaf(shape, 3), leaf(shape, 4)});
  INFO("swiglu: " << rw.first_failure);
  CHECK(rw.ok);
  CHECK(rw.checked == 2 * shape.numel());
}

TEST_CASE("swiglu(x, x) accumulates both gradients into x", "[autograd][activation]") {
  auto r =
      gradcheck([](const Inputs& in) { return ag::swiglu(in[0], in[0]); }, {leaf(Shape{4, 6}, 5)});
  INFO(r.first_failure);
  CHECK(r.ok);
}

TEST_CASE("swiglu is one node and equals silu(gate) * up", "[autograd][activation]") {
  ag::clear_tape();
  Var<double> g = leaf(Shape{3, 5}, 6), u = leaf(Shape{3, 5}, 7);
  Var<double> y = ag::swiglu(g, u);
  CHECK(ag::tape_size() == 1);
  auto gv = g.value().to_vector(), uv = u.value().to_vector(), yv = y.value().to_vector();
  for (std::size_t i = 0; i < gv.size(); ++i)
    CHECK_THAT(yv[i], WithinRel(gv[i] / (1.0 + std::exp(-gv[i])) * uv[i], 1e-14));
  ag::clear_tape();
}

TEST_CASE("only the inputs that require gradients receive them", "[autograd][activation]") {
  Var<double> g = leaf(Shape{8}, 8);
  Var<double> u(Tensor<double>::randn(Shape{8}, 9));  // a constant
  auto r = gradcheck([&u](const Inputs& in) { return ag::swiglu(in[0], u); }, {g});
  INFO(r.first_failure);
  CHECK(r.ok);
  CHECK_FALSE(u.has_grad());
}

TEST_CASE("swiglu shape mismatch names both shapes", "[autograd][activation]") {
  Var<double> g = leaf(Shape{2, 4}, 10), u = leaf(Shape{2, 5}, 11);
  try {
    ag::swiglu(g, u);
    FAIL("swiglu of mismatched shapes did not throw");
  } catch (const fathom::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("(2, 4)") != std::string::npos);
    CHECK(msg.find("(2, 5)") != std::string::npos);
  }
}
