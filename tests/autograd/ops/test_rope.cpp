// Tests for the differentiable rope and rope_qkv (include/fathom/autograd/ops/rope.hpp): gradcheck
// in double at several shapes, heads and start positions, rotation preserving each pair's norm,
// rope_qkv against rope on the q and k slices (in place and on a copy, values and gradients), and
// errors.
#include <fathom/autograd/ops/rope.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>

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

namespace {

// x (B, T, 3C) -> its q, k and v thirds, each (B, T, C), contiguous.
std::vector<Tensor<double>> thirds(const Tensor<double>& x) {
  const std::int64_t C = x.size(2) / 3;
  return {x.slice(2, 0, C).clone(), x.slice(2, C, 2 * C).clone(), x.slice(2, 2 * C, 3 * C).clone()};
}

// d/dx of sum(rope_qkv(x) * w) when x is made by `make` from a leaf: the leaf's gradient.
std::vector<double> rope_qkv_gradient(const Tensor<double>& x0, const Tensor<double>& w, int heads,
                                      double theta, std::int64_t pos0, bool in_place) {
  ag::clear_tape();
  Var<double> leaf(x0.clone(), true);
  // leaf * 1.0 is a new buffer that nothing else holds: rope_qkv turns it in place. Passing the
  // leaf itself leaves it as it is (the caller still holds it).
  Var<double> y = in_place ? ag::rope_qkv(leaf * 1.0, heads, theta, pos0)
                           : ag::rope_qkv(leaf, heads, theta, pos0);
  ag::backward(ag::sum(y * Var<double>(w)));
  return leaf.grad().to_vector();
}

}  // namespace

TEST_CASE("rope_qkv gradient passes gradcheck, in place and on a copy", "[autograd][rope]") {
  const auto c = GENERATE(Case{1, 1, 2, 1, 0}, Case{2, 3, 8, 2, 0}, Case{1, 5, 12, 3, 7},
                          Case{3, 7, 30, 5, 11}, Case{2, 4, 16, 1, 100});
  const bool in_place = GENERATE(true, false);
  CAPTURE(c.B, c.T, c.C, c.heads, c.pos0, in_place);
  Var<double> x(Tensor<double>::randn(Shape{c.B, c.T, 3 * c.C}, 5), true);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return in_place ? ag::rope_qkv(in[0] * 1.0, c.heads, 10000.0, c.pos0)
                        : ag::rope_qkv(in[0], c.heads, 10000.0, c.pos0);
      },
      {x});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == x.numel());
}

TEST_CASE("rope_qkv equals rope on the q and k slices and leaves v alone", "[autograd][rope]") {
  const auto c = GENERATE(Case{1, 1, 2, 1, 0}, Case{2, 5, 12, 3, 0}, Case{3, 7, 30, 5, 9},
                          Case{1, 9, 64, 4, 1000});
  const double theta = GENERATE(10000.0, 500000.0);
  CAPTURE(c.B, c.T, c.C, c.heads, c.pos0, theta);
  const auto x0 = Tensor<double>::randn(Shape{c.B, c.T, 3 * c.C}, 6);
  const auto w = Tensor<double>::randn(Shape{c.B, c.T, 3 * c.C}, 7);
  const auto parts = thirds(x0), wparts = thirds(w);

  // Today's composition: rope on q and on k, v as it is; gradients by the rope op.
  std::vector<double> want_y, want_g;
  {
    ag::clear_tape();
    Var<double> q(parts[0], true), k(parts[1], true), v(parts[2], true);
    auto rq = ag::rope(q, c.heads, theta, c.pos0), rk = ag::rope(k, c.heads, theta, c.pos0);
    ag::backward(ag::sum(rq * Var<double>(wparts[0])) + ag::sum(rk * Var<double>(wparts[1])) +
                 ag::sum(v * Var<double>(wparts[2])));
    const std::int64_t rows = c.B * c.T;
    const auto yq = rq.value().to_vector(), yk = rk.value().to_vector(), yv = parts[2].to_vector();
    const auto gq = q.grad().to_vector(), gk = k.grad().to_vector(), gv = v.grad().to_vector();
    for (std::int64_t r = 0; r < rows; ++r)
      for (const auto* src : {&yq, &yk, &yv})
        want_y.insert(want_y.end(), src->begin() + r * c.C, src->begin() + (r + 1) * c.C);
    for (std::int64_t r = 0; r < rows; ++r)
      for (const auto* src : {&gq, &gk, &gv})
        want_g.insert(want_g.end(), src->begin() + r * c.C, src->begin() + (r + 1) * c.C);
  }

  SECTION("in place: the result is the input's buffer, turned") {
    ag::NoGradGuard no_grad;
    Var<double> x(x0.clone());
    const double* before = x.value().data();
    auto y = ag::rope_qkv(std::move(x), c.heads, theta, c.pos0);
    CHECK(y.value().data() == before);
    CHECK(y.value().to_vector() == want_y);
    CHECK_FALSE(x.defined());  // moved from
  }
  SECTION("on a copy: an input still held elsewhere is not touched") {
    ag::NoGradGuard no_grad;
    Var<double> x(x0.clone());
    auto y = ag::rope_qkv(x, c.heads, theta, c.pos0);
    CHECK(y.value().data() != x.value().data());
    CHECK(x.value().to_vector() == x0.to_vector());
    CHECK(y.value().to_vector() == want_y);
  }
  SECTION("gradients, in place and on a copy") {
    CHECK(rope_qkv_gradient(x0, w, c.heads, theta, c.pos0, true) == want_g);
    CHECK(rope_qkv_gradient(x0, w, c.heads, theta, c.pos0, false) == want_g);
  }
}

TEST_CASE("rope_qkv backward leaves gradients it does not own as they were", "[autograd][rope]") {
  const std::int64_t B = 2, T = 3, C = 8;
  const int H = 2;
  const auto x0 = Tensor<double>::randn(Shape{B, T, 3 * C}, 8);
  const auto w = Tensor<double>::randn(Shape{B, T, 3 * C}, 9);
  const auto want = rope_qkv_gradient(x0, w, H, 10000.0, 0, true);

  SECTION("a retained output gradient stays the output's") {
    ag::clear_tape();
    Var<double> leaf(x0.clone(), true);
    auto y = ag::rope_qkv(leaf * 1.0, H);
    y.retain_grad();
    ag::backward(ag::sum(y * Var<double>(w)));
    CHECK(y.grad().to_vector() == w.to_vector());
    CHECK(leaf.grad().to_vector() == want);
  }
  SECTION("a lent output gradient (through reshape) is not written") {
    ag::clear_tape();
    Var<double> leaf(x0.clone(), true);
    Var<double> flat = ag::reshape(ag::rope_qkv(leaf * 1.0, H), {B * T, 3 * C});
    flat.retain_grad();
    ag::backward(ag::sum(flat * Var<double>(w.reshape({B * T, 3 * C}))));
    CHECK(flat.grad().to_vector() == w.to_vector());
    CHECK(leaf.grad().to_vector() == want);
  }
  SECTION("an input that already has a gradient gets this one added") {
    ag::clear_tape();
    Var<double> leaf(x0.clone(), true);
    Var<double> h = leaf * 1.0;  // h feeds rope_qkv (on a copy: h is still held) and a sum
    auto y = ag::rope_qkv(h, H);
    ag::backward(ag::sum(y * Var<double>(w)) + 2.0 * ag::sum(h));
    const auto got = leaf.grad().to_vector();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      CHECK_THAT(got[i], WithinAbs(want[i] + 2.0, 1e-12));
  }
}

TEST_CASE("rope_qkv errors say what shape was expected", "[autograd][rope]") {
  Var<double> x(Tensor<double>::randn(Shape{2, 3, 12}, 3), true);  // C = 4
  CHECK(error_of([&] {
          ag::rope_qkv(Var<double>(Tensor<double>::randn(Shape{2, 3, 10}, 4)), 1);
        }).find("(B, T, 3C), got (2, 3, 10)") != std::string::npos);
  CHECK(error_of([&] {
          ag::rope_qkv(Var<double>(Tensor<double>::randn(Shape{6, 12}, 4)), 1);
        }).find("(B, T, 3C), got (6, 12)") != std::string::npos);
  CHECK(error_of([&] { ag::rope_qkv(x, 3); }).find("multiple of n_heads = 3") != std::string::npos);
  CHECK(error_of([&] { ag::rope_qkv(x, 4); }).find("head size 1") != std::string::npos);
  Var<double> gone(Tensor<double>::randn(Shape{2, 3, 12}, 5));
  ag::NoGradGuard no_grad;
  CHECK(ag::rope_qkv(std::move(gone), 1).defined());
  CHECK(error_of([&] { ag::rope_qkv(gone, 1); }).find("undefined") != std::string::npos);
}
