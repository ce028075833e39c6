// Tests for the differentiable element-wise ops (include/fathom/autograd/ops/elementwise.hpp):
// gradcheck in double of add, sub, mul, add_scaled, scale, the operators, reshape, split_last and
// concat_rows at several shapes; a Var used twice; strided inputs; values; and the shape errors.
#include <fathom/autograd/ops/elementwise.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/reduce.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
using fathom::autograd::gradcheck;
namespace ag = fathom::autograd;
using fathom::test::contains;
using fathom::test::error_of;
using fathom::test::leaf;

namespace {

using Inputs = std::vector<Var<double>>;

}  // namespace

TEST_CASE("binary element-wise gradients match finite differences", "[autograd][elementwise]") {
  const Shape shape = GENERATE(Shape{1}, Shape{7}, Shape{3, 4}, Shape{2, 3, 5});
  INFO("shape " << shape);
  auto check = [&](const char* what, auto f) {
    INFO(what);
    auto r = gradcheck(f, {leaf(shape, 1), leaf(shape, 2)});
    INFO(r.first_failure);
    CHECK(r.ok);
    CHECK(r.checked == 2 * shape.numel());
  };
  check("add", [](const Inputs& in) { return ag::add(in[0], in[1]); });
  check("sub", [](const Inputs& in) { return ag::sub(in[0], in[1]); });
  check("mul", [](const Inputs& in) { return ag::mul(in[0], in[1]); });
  check("add_scaled", [](const Inputs& in) { return ag::add_scaled(in[0], 0.3, in[1], -1.7); });
  check("a + b", [](const Inputs& in) { return in[0] + in[1]; });
  check("a - b", [](const Inputs& in) { return in[0] - in[1]; });
  check("a * b", [](const Inputs& in) { return in[0] * in[1]; });
  check("(a - b) * (a + 2.5 * b)",
        [](const Inputs& in) { return (in[0] - in[1]) * (in[0] + 2.5 * in[1]); });
}

TEST_CASE("scale gradients match finite differences", "[autograd][elementwise]") {
  const Shape shape = GENERATE(Shape{1}, Shape{4, 3});
  const double s = GENERATE(-2.0, 0.5);
  INFO("shape " << shape << " s " << s);
  auto r = gradcheck([s](const Inputs& in) { return ag::scale(in[0], s); }, {leaf(shape, 3)});
  INFO(r.first_failure);
  CHECK(r.ok);
  auto r2 = gradcheck([s](const Inputs& in) { return s * in[0] * s; }, {leaf(shape, 4)});
  INFO(r2.first_failure);
  CHECK(r2.ok);
}

TEST_CASE("a Var used as both operands gets both gradients", "[autograd][elementwise]") {
  const Shape shape{3, 5};
  auto r = gradcheck([](const Inputs& in) { return ag::mul(in[0], in[0]); }, {leaf(shape, 5)});
  INFO(r.first_failure);
  CHECK(r.ok);
  auto r2 = gradcheck([](const Inputs& in) { return ag::add_scaled(in[0], 2.0, in[0], -0.5); },
                      {leaf(shape, 6)});
  INFO(r2.first_failure);
  CHECK(r2.ok);

  // d sum(x * x) / dx = 2 x, exactly.
  Var<double> x = leaf(shape, 7);
  ag::backward(ag::sum(x * x));
  auto g = x.grad().to_vector(), v = x.value().to_vector();
  for (std::size_t i = 0; i < v.size(); ++i) CHECK(g[i] == 2.0 * v[i]);
}

TEST_CASE("element-wise values match the formulas", "[autograd][elementwise]") {
  auto a = Tensor<double>::randn(Shape{4, 6}, 8), b = Tensor<double>::randn(Shape{4, 6}, 9);
  Var<double> va(a), vb(b);
  auto av = a.to_vector(), bv = b.to_vector();
  auto sum = (va + vb).value().to_vector(), diff = (va - vb).value().to_vector();
  auto prod = (va * vb).value().to_vector(),
       comb = ag::add_scaled(va, 2.0, vb, -3.0).value().to_vector();
  auto sc = (va * 0.25).value().to_vector();
  for (std::size_t i = 0; i < av.size(); ++i) {
    CHECK(sum[i] == av[i] + bv[i]);
    CHECK(diff[i] == av[i] - bv[i]);
    CHECK(prod[i] == av[i] * bv[i]);
    CHECK(comb[i] == 2.0 * av[i] - 3.0 * bv[i]);
    CHECK(sc[i] == 0.25 * av[i]);
  }
}

TEST_CASE("element-wise ops read strided (transposed) inputs", "[autograd][elementwise]") {
  auto base = Tensor<double>::randn(Shape{3, 5}, 10);
  auto other = Tensor<double>::randn(Shape{5, 3}, 11);
  Var<double> t(base.transpose(0, 1), true), o(other, true);
  REQUIRE_FALSE(t.value().is_contiguous());
  Var<double> y = t * o;
  for (std::int64_t i = 0; i < 5; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      CHECK(y.value().at({i, j}) == base.at({j, i}) * other.at({i, j}));
  ag::backward(ag::sum(y));
  // t's gradient is kept in t's own (5, 3) shape: d/dt = o.
  REQUIRE(t.grad().shape() == (Shape{5, 3}));
  CHECK(t.grad().to_vector() == other.to_vector());
}

TEST_CASE("ops on inputs that need no gradient record nothing", "[autograd][elementwise]") {
  ag::clear_tape();
  Var<double> a(Tensor<double>::randn(Shape{4}, 12)), b(Tensor<double>::randn(Shape{4}, 13));
  Var<double> y = a * b + a;
  CHECK_FALSE(y.requires_grad());
  CHECK(ag::tape_size() == 0);
  Var<double> w = leaf(Shape{4}, 14);
  Var<double> z = a * w;
  CHECK(z.requires_grad());
  CHECK(ag::tape_size() == 1);
  ag::clear_tape();
}

TEST_CASE("reshape is a view with the gradient reshaped back", "[autograd][elementwise]") {
  auto [from, to] = GENERATE(table<Shape, std::vector<std::int64_t>>(
      {{Shape{2, 6}, {3, 4}}, {Shape{2, 3, 4}, {6, -1}}, {Shape{5}, {1, 5, 1}}, {Shape{1}, {}}}));
  INFO("from " << from);
  auto r =
      gradcheck([to = to](const Inputs& in) { return ag::reshape(in[0], to); }, {leaf(from, 15)});
  INFO(r.first_failure);
  CHECK(r.ok);
  Var<double> x = leaf(from, 16);
  Var<double> y = ag::reshape(x, to);
  CHECK(y.numel() == x.numel());
  CHECK(y.value().shares_storage_with(x.value()));
  CHECK(y.value().to_vector() == x.value().to_vector());
}

TEST_CASE("split_last gives contiguous slices whose gradients land in their columns",
          "[autograd][elementwise]") {
  auto [shape, n] = GENERATE(table<Shape, int>({{Shape{6}, 3},
                                                {Shape{2, 8}, 2},
                                                {Shape{2, 3, 9}, 3},
                                                {Shape{3, 4}, 1},
                                                {Shape{2, 2, 4}, 4}}));
  INFO("shape " << shape << " n " << n);
  Var<double> x = leaf(shape, 17);
  auto parts = ag::split_last(x, n);
  REQUIRE(parts.size() == static_cast<std::size_t>(n));
  const std::int64_t c = shape[shape.rank() - 1], w = c / n;
  for (int k = 0; k < n; ++k) {
    CHECK(parts[static_cast<std::size_t>(k)].value().is_contiguous());
    CHECK(parts[static_cast<std::size_t>(k)].value().to_vector() ==
          x.value().slice(-1, k * w, (k + 1) * w).to_vector());
  }
  // Each slice weighted differently, so a gradient in the wrong columns shows.
  auto r = gradcheck(
      [n](const Inputs& in) {
        auto p = ag::split_last(in[0], n);
        Var<double> acc = p[0];
        for (int k = 1; k < n; ++k)
          acc = ag::add_scaled(acc, 1.0, p[static_cast<std::size_t>(k)], 1.0 + k);
        return acc * p[0];
      },
      {leaf(shape, 18)});
  INFO(r.first_failure);
  CHECK(r.ok);
}

TEST_CASE("split_last with only some slices used leaves the other columns' gradient zero",
          "[autograd][elementwise]") {
  Var<double> x = leaf(Shape{2, 6}, 19);
  auto parts = ag::split_last(x, 3);
  ag::backward(ag::sum(parts[1]));
  for (std::int64_t r = 0; r < 2; ++r)
    for (std::int64_t c = 0; c < 6; ++c)
      CHECK(x.grad().at({r, c}) == ((c >= 2 && c < 4) ? 1.0 : 0.0));
}

TEST_CASE("concat_rows stacks its parts and splits the gradient back into each",
          "[autograd][elementwise]") {
  auto [a, b, c] =
      GENERATE(table<Shape, Shape, Shape>({{Shape{2, 3}, Shape{1, 3}, Shape{4, 3}},
                                           {Shape{3}, Shape{5}, Shape{1}},
                                           {Shape{1, 2, 2}, Shape{2, 2, 2}, Shape{1, 2, 2}}}));
  INFO("shapes " << a << " " << b << " " << c);
  Var<double> x = leaf(a, 31), y = leaf(b, 32), z = leaf(c, 33);
  auto stacked = ag::concat_rows<double, fathom::Cpu>({x, y, z});
  CHECK(stacked.size(0) == a[0] + b[0] + c[0]);
  std::vector<double> want = x.value().to_vector();
  for (const auto* v : {&y, &z}) {
    const auto part = v->value().to_vector();
    want.insert(want.end(), part.begin(), part.end());
  }
  CHECK(stacked.value().to_vector() == want);
  // The same part twice and the result squared: each row's gradient must land in its own part.
  auto r = gradcheck(
      [](const Inputs& in) {
        auto s = ag::concat_rows<double, fathom::Cpu>({in[0], in[1], in[2], in[0]});
        return s * s;
      },
      {x, y, z});
  INFO(r.first_failure);
  CHECK(r.ok);
}

TEST_CASE("concat_rows lends each part its rows of the gradient, and adds into them later",
          "[autograd][elementwise]") {
  Var<double> x = leaf(Shape{2, 3}, 41), y = leaf(Shape{1, 3}, 42);
  auto run = [&] {
    auto s = ag::concat_rows<double, fathom::Cpu>({x, y});
    ag::backward(ag::sum(s * s));  // d/dv sum(v^2) = 2 v, row by row
  };
  auto times = [](const Var<double>& v, double k) {
    auto out = v.value().to_vector();
    for (auto& e : out) e *= k;
    return out;
  };
  run();
  CHECK(x.grad().to_vector() == times(x, 2.0));
  CHECK(y.grad().to_vector() == times(y, 2.0));
  CHECK(x.grad().storage_use_count() == 2);  // both are views of the one stacked gradient
  run();  // a second backward adds into them: each copies its rows first
  CHECK(x.grad().to_vector() == times(x, 4.0));
  CHECK(y.grad().to_vector() == times(y, 4.0));
  CHECK(x.grad().storage_use_count() == 1);
}

TEST_CASE("concat_rows names parts that do not stack", "[autograd][elementwise]") {
  Var<double> a = leaf(Shape{2, 3}, 34), b = leaf(Shape{2, 4}, 35), c = leaf(Shape{6}, 36);
  const auto msg = error_of([&] { ag::concat_rows<double, fathom::Cpu>({a, b}); });
  CHECK(contains(msg, "(2, 4)"));
  CHECK(contains(msg, "(2, 3)"));
  CHECK(contains(error_of([&] { ag::concat_rows<double, fathom::Cpu>({a, c}); }), "(6,)"));
  CHECK(contains(error_of([&] { ag::concat_rows<double, fathom::Cpu>({}); }), "at least one"));
}

TEST_CASE("element-wise shape errors name both shapes", "[autograd][elementwise]") {
  Var<double> a = leaf(Shape{2, 3}, 20), b = leaf(Shape{3, 2}, 21);
  for (const std::string& msg :
       {error_of([&] { ag::add(a, b); }), error_of([&] { ag::sub(a, b); }),
        error_of([&] { ag::mul(a, b); }), error_of([&] { ag::add_scaled(a, 1.0, b, 2.0); })}) {
    INFO(msg);
    CHECK(contains(msg, "(2, 3)"));
    CHECK(contains(msg, "(3, 2)"));
  }
  CHECK(error_of([&] { ag::mul(a, b); }).rfind("mul:", 0) == 0);
  const std::string reshape_msg = error_of([&] { ag::reshape(a, {4, 2}); });
  INFO(reshape_msg);
  CHECK(contains(reshape_msg, "(2, 3)"));
  CHECK(contains(reshape_msg, "(4, 2)"));
  const std::string split_msg = error_of([&] { ag::split_last(a, 2); });
  INFO(split_msg);
  CHECK(contains(split_msg, "(2, 3)"));
  CHECK(contains(split_msg, "2 equal parts"));
  CHECK(contains(error_of([&] { ag::split_last(a, 0); }), "split_last"));
}
