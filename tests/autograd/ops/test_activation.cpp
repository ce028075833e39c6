// Tests for the differentiable activations (include/fathom/autograd/ops/activation.hpp): gradcheck
// of gelu, silu and swiglu in double at several shapes, swiglu as one node, swiglu(x, x), errors;
// swiglu_stacked (gate and up as the halves of one tensor) by gradcheck, with a gradient already
// there, and against swiglu on the split halves, bit for bit.
#include <fathom/autograd/ops/activation.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>

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

TEST_CASE("swiglu_stacked gradients match finite differences", "[autograd][activation]") {
  // Last dimension 2F with odd F: gate and up rows never start on a pack boundary.
  const Shape shape = GENERATE(Shape{2}, Shape{10}, Shape{3, 14}, Shape{2, 3, 10}, Shape{2, 16});
  INFO("shape " << shape);
  auto r = gradcheck([](const Inputs& in) { return ag::swiglu_stacked(in[0]); }, {leaf(shape, 12)});
  INFO(r.first_failure);
  CHECK(r.ok);
  CHECK(r.checked == shape.numel());
}

TEST_CASE("swiglu_stacked adds to a gradient already there", "[autograd][activation]") {
  // gu feeds a product recorded after swiglu_stacked: its backward runs first and leaves a
  // gradient in gu, which swiglu_stacked's backward must add to (write_target's accumulate), and
  // a second swiglu_stacked of the same gu adds again.
  auto r = gradcheck(
      [](const Inputs& in) {
        auto a = ag::swiglu_stacked(in[0]);
        auto b = ag::swiglu_stacked(in[0]) * in[1];
        return ag::reshape(ag::concat_rows<double, fathom::Cpu>(
                               {ag::reshape(a + b, {3 * 5}), ag::reshape(in[0] * in[0], {3 * 10})}),
                           {45});
      },
      {leaf(Shape{3, 10}, 13), leaf(Shape{3, 5}, 14)});
  INFO(r.first_failure);
  CHECK(r.ok);
}

TEST_CASE("swiglu_stacked equals swiglu on the split halves, values and gradients",
          "[autograd][activation]") {
  const auto size = GENERATE(table<std::int64_t, std::int64_t>({{1, 1}, {4, 5}, {3, 7}, {2, 16}}));
  const std::int64_t rows = std::get<0>(size), F = std::get<1>(size);
  CAPTURE(rows, F);
  auto run = [&](bool stacked, bool seeded) {
    ag::clear_tape();
    Var<double> gu = leaf(Shape{rows, 2 * F}, 15);
    Var<double> dy(Tensor<double>::randn(Shape{rows, F}, 16));
    if (seeded) {  // a gradient already in gu when the op's backward runs
      ag::backward(ag::sum(gu * Var<double>(Tensor<double>::randn(Shape{rows, 2 * F}, 17))));
    }
    Var<double> y;
    if (stacked) {
      y = ag::swiglu_stacked(gu);
      CHECK(ag::tape_size() == 1);
    } else {
      auto halves = ag::split_last(gu, 2);
      y = ag::swiglu(halves[0], halves[1]);
    }
    ag::backward(ag::sum(y * dy));
    return std::pair{y.value().to_vector(), gu.grad().to_vector()};
  };
  for (const bool seeded : {false, true}) {
    INFO("gradient already there: " << seeded);
    const auto [y, g] = run(true, seeded);
    const auto [want_y, want_g] = run(false, seeded);
    CHECK(y == want_y);
    CHECK(g == want_g);
  }
  ag::clear_tape();
}

TEST_CASE("swiglu_stacked of an odd last dimension names the shape", "[autograd][activation]") {
  Var<double> gu = leaf(Shape{2, 7}, 18);
  try {
    ag::swiglu_stacked(gu);
    FAIL("swiglu_stacked of an odd last dimension did not throw");
  } catch (const fathom::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("swiglu_stacked") != std::string::npos);
    CHECK(msg.find("(2, 7)") != std::string::npos);
  }
}
