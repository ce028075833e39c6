// Tests for the differentiable rope (include/fathom/autograd/ops/rope.hpp): gradcheck in double at
// several shapes, heads and start positions, rotation preserving each pair's norm, and errors.
#include <fathom/autograd/ops/rope.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>

#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace ag = fathom::autograd;
using fathom::test::error_of;

namespace {

struct Case {
  std::int64_t B, T, C;
  int heads;
  std::int64_t pos0;
};

}  // namespace

TEST_CASE("rope gradient passes gradcheck", "[autograd][rope]") {
  const auto c = GENERATE(Case{1, 1, 2, 1, 0}, Case{2, 3, 8, 2, 0}, Case{1, 5, 12, 3, 7},
                          Case{2, 4, 16, 1, 100});
  CAPTURE(c.B, c.T, c.C, c.heads, c.pos0);
  Var<double> x(Tensor<double>::randn(Shape{c.B, c.T, c.C}, 1), true);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) { return ag::rope(in[0], c.heads, 10000.0, c.pos0); },
      {x});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == x.numel());
}

TEST_CASE("rope keeps the norm of every rotated pair and moves it", "[autograd][rope]") {
  const std::int64_t B = 2, T = 6, H = 2, hd = 8, C = H * hd;
  auto x = Tensor<double>::randn(Shape{B, T, C}, 2);
  ag::NoGradGuard no_grad;
  auto y = ag::rope(Var<double>(x), static_cast<int>(H), 10000.0, 3).value().to_vector();
  auto xv = x.to_vector();
  double moved = 0.0;
  for (std::int64_t row = 0; row < B * T; ++row)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < hd / 2; ++i) {
        const auto k1 = static_cast<std::size_t>(row * C + h * hd + i),
                   k2 = k1 + static_cast<std::size_t>(hd / 2);
        CHECK_THAT(std::hypot(y[k1], y[k2]), WithinAbs(std::hypot(xv[k1], xv[k2]), 1e-12));
        moved = std::max(moved, std::abs(y[k1] - xv[k1]));
      }
  CHECK(moved > 0.1);
}

TEST_CASE("rope errors say what shape was expected", "[autograd][rope]") {
  Var<double> x3(Tensor<double>::randn(Shape{2, 3, 12}, 3), true);
  Var<double> x2(Tensor<double>::randn(Shape{3, 12}, 4), true);
  CHECK(error_of([&] { ag::rope(x2, 2); }).find("(B, T, C), got (3, 12)") != std::string::npos);
  auto e1 = error_of([&] { ag::rope(x3, 5); });
  CHECK(e1.find("multiple of n_heads = 5") != std::string::npos);
  auto e2 = error_of([&] { ag::rope(x3, 4); });  // head size 3
  CHECK(e2.find("head size 3") != std::string::npos);
  CHECK(e2.find("even") != std::string::npos);
  CHECK(error_of([&] { ag::rope(x3, 0); }).find("n_heads = 0") != std::string::npos);
}
