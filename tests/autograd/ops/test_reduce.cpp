// Tests for the differentiable reductions (include/fathom/autograd/ops/reduce.hpp): gradcheck of
// sum and mean in double at several shapes, the rank-0 result, values in every precision, errors.
#include <fathom/autograd/ops/reduce.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/elementwise.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
using fathom::autograd::gradcheck;
namespace ag = fathom::autograd;
using fathom::test::leaf;

namespace {

using Inputs = std::vector<Var<double>>;

}  // namespace

TEST_CASE("sum and mean gradients match finite differences", "[autograd][reduce]") {
  const Shape shape = GENERATE(Shape{}, Shape{1}, Shape{9}, Shape{3, 4}, Shape{2, 3, 5});
  INFO("shape " << shape);
  auto rs = gradcheck([](const Inputs& in) { return ag::sum(in[0]); }, {leaf(shape, 1)});
  INFO(rs.first_failure);
  CHECK(rs.ok);
  CHECK(rs.checked == shape.numel());
  auto rm = gradcheck([](const Inputs& in) { return ag::mean(in[0]); }, {leaf(shape, 2)});
  INFO(rm.first_failure);
  CHECK(rm.ok);
  // Composed: mean of a product (gradient flows through the broadcast of the scalar).
  auto rc = gradcheck([](const Inputs& in) { return ag::mean(in[0] * in[1]); },
                      {leaf(shape, 3), leaf(shape, 4)});
  INFO(rc.first_failure);
  CHECK(rc.ok);
}

TEST_CASE("sum and mean give one element of shape ()", "[autograd][reduce]") {
  Var<double> x = leaf(Shape{4, 5}, 5);
  Var<double> s = ag::sum(x), m = ag::mean(x);
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(m.shape() == Shape{});
  double want = 0;
  for (double v : x.value().to_vector()) want += v;
  CHECK_THAT(s.value().item(), WithinRel(want, 1e-14));
  CHECK_THAT(m.value().item(), WithinRel(want / 20.0, 1e-14));
  ag::backward(m);
  for (double g : x.grad().to_vector()) CHECK(g == 1.0 / 20.0);
}

TEST_CASE("sum of bf16 accumulates in float", "[autograd][reduce]") {
  // 4096 ones: a bf16 running sum stalls at 256 (256 + 1 rounds back to 256 with 8 significant
  // bits); accumulated in float the total is exact, and 4096 is a bf16 number.
  Var<bf16> x(Tensor<bf16>::full(Shape{4096}, bf16(1.0f)));
  CHECK(static_cast<float>(ag::sum(x).value().item()) == 4096.0f);
  CHECK(static_cast<float>(ag::mean(x).value().item()) == 1.0f);
}

TEST_CASE("sum of an empty tensor is 0; mean of one throws", "[autograd][reduce]") {
  Var<double> e(Tensor<double>(Shape{0, 3}), true);
  CHECK(ag::sum(e).value().item() == 0.0);
  try {
    ag::mean(e);
    FAIL("mean of an empty tensor did not throw");
  } catch (const fathom::Error& err) {
    CHECK(std::string(err.what()).find("(0, 3)") != std::string::npos);
  }
}
