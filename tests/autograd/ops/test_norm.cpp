// Tests for the differentiable norm ops (include/fathom/autograd/ops/norm.hpp): gradcheck in double
// of rms_norm and layer_norm for x, weight and bias at several shapes and output scales, the output
// scale as an exact factor, no recording under NoGradGuard, and shape errors naming both shapes.
#include <fathom/autograd/ops/norm.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace ag = fathom::autograd;
using fathom::test::error_of;
using fathom::test::leaf;

TEST_CASE("rms_norm gradients (x and weight) pass gradcheck", "[autograd][norm]") {
  const auto dims = GENERATE(std::vector<std::int64_t>{1, 1}, std::vector<std::int64_t>{3, 5},
                             std::vector<std::int64_t>{2, 3, 7});
  const double scale = GENERATE(1.0, 1.0 / std::sqrt(6.0));
  const Shape shape(dims);
  CAPTURE(shape.str(), scale);
  auto x = leaf(shape, 1, 1.0, 0.3);
  auto w = leaf(Shape{shape[shape.rank() - 1]}, 2, 0.3, 1.0);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) { return ag::rms_norm(in[0], in[1], 1e-6, scale); },
      {x, w});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == x.numel() + w.numel());
}

TEST_CASE("layer_norm gradients (x, weight, bias) pass gradcheck", "[autograd][norm]") {
  const auto dims = GENERATE(std::vector<std::int64_t>{1, 2}, std::vector<std::int64_t>{4, 5},
                             std::vector<std::int64_t>{2, 2, 9});
  const double scale = GENERATE(1.0, 0.4);
  const Shape shape(dims);
  CAPTURE(shape.str(), scale);
  auto x = leaf(shape, 3, 1.5, -0.7);
  const Shape c{shape[shape.rank() - 1]};
  auto w = leaf(c, 4, 0.3, 1.0), b = leaf(c, 5, 0.5);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return ag::layer_norm(in[0], in[1], in[2], 1e-5, scale);
      },
      {x, w, b});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == x.numel() + w.numel() + b.numel());
}

TEST_CASE("norm output scale is an exact factor on the output", "[autograd][norm]") {
  auto x = leaf(Shape{4, 6}, 6, 1.0, 0.5), w = leaf(Shape{6}, 7, 0.2, 1.0), b = leaf(Shape{6}, 8);
  const double s = 1.0 / std::sqrt(5.0);
  ag::NoGradGuard no_grad;
  auto r1 = ag::rms_norm(x, w, 1e-6).value().to_vector(),
       rs = ag::rms_norm(x, w, 1e-6, s).value().to_vector();
  auto l1 = ag::layer_norm(x, w, b, 1e-5).value().to_vector(),
       ls = ag::layer_norm(x, w, b, 1e-5, s).value().to_vector();
  for (std::size_t i = 0; i < r1.size(); ++i) {
    CHECK_THAT(rs[i], WithinAbs(s * r1[i], 1e-14));
    CHECK_THAT(ls[i], WithinAbs(s * l1[i], 1e-14));
  }
}

TEST_CASE("rms_norm of a strided view normalizes its logical rows", "[autograd][norm]") {
  // x^T is not contiguous: the op must normalize the rows of the view, not of the storage.
  auto base = Tensor<double>::randn(Shape{5, 3}, 9, 1.0, 0.2);
  Var<double> xt(base.transpose(0, 1), false);
  Var<double> w(Tensor<double>::full(Shape{5}, 1.0), false);
  auto y = ag::rms_norm(xt, w, 0.0).value().to_vector();  // eps 0: every row has mean(y^2) = 1
  REQUIRE(y.size() == 15);
  for (int r = 0; r < 3; ++r) {
    double ms = 0.0;
    for (int c = 0; c < 5; ++c)
      ms += y[static_cast<std::size_t>(r * 5 + c)] * y[static_cast<std::size_t>(r * 5 + c)];
    CHECK_THAT(ms / 5.0, WithinAbs(1.0, 1e-12));
  }
}

TEST_CASE("norms record nothing under NoGradGuard", "[autograd][norm]") {
  ag::clear_tape();
  auto x = leaf(Shape{2, 4}, 10), w = leaf(Shape{4}, 11), b = leaf(Shape{4}, 12);
  {
    ag::NoGradGuard no_grad;
    auto y = ag::layer_norm(ag::rms_norm(x, w, 1e-6), w, b, 1e-5);
    CHECK_FALSE(y.requires_grad());
    CHECK(ag::tape_size() == 0);
  }
  auto y = ag::rms_norm(x, w, 1e-6);
  CHECK(y.requires_grad());
  CHECK(ag::tape_size() == 1);
  ag::clear_tape();
}

TEST_CASE("norm shape errors name both shapes", "[autograd][norm]") {
  auto x = leaf(Shape{4, 7}, 13), w = leaf(Shape{8}, 14), w7 = leaf(Shape{7}, 15),
       b = leaf(Shape{6}, 16);
  auto e1 = error_of([&] { ag::rms_norm(x, w, 1e-6); });
  CHECK(e1.find("rms_norm") != std::string::npos);
  CHECK(e1.find("(4, 7)") != std::string::npos);
  CHECK(e1.find("(8,)") != std::string::npos);
  auto e2 = error_of([&] { ag::layer_norm(x, w, w, 1e-5); });
  CHECK(e2.find("layer_norm") != std::string::npos);
  CHECK(e2.find("(4, 7)") != std::string::npos);
  auto e3 = error_of([&] { ag::layer_norm(x, w7, b, 1e-5); });
  CHECK(e3.find("(7,)") != std::string::npos);
  CHECK(e3.find("(6,)") != std::string::npos);
  auto empty = leaf(Shape{3, 0}, 17), w0 = leaf(Shape{0}, 18);
  CHECK(error_of([&] { ag::rms_norm(empty, w0, 1e-6); }).find("empty last dimension") !=
        std::string::npos);
}
