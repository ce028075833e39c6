// Tests for matmul and linear (include/fathom/autograd/ops/gemm.hpp): forward values against naive
// loops, gradients by gradcheck in double over several shapes (batched, leading dimensions, with
// and without bias), accumulation over two backward passes, float and bf16 runs against double,
// and errors that name both shapes.
#include <fathom/autograd/ops/gemm.hpp>
#include <fathom/autograd/ops/activation.hpp>
#include <fathom/autograd/ops/elementwise.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "fathom/autograd/gradcheck.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

namespace {

using fathom::bf16;
using fathom::Shape;
using fathom::Tensor;
using fathom::autograd::gradcheck;
using fathom::autograd::linear;
using fathom::autograd::matmul;
using fathom::autograd::Var;
using fathom::test::contains;
using fathom::test::error_of;

Var<double> random_var(const Shape& shape, std::uint64_t seed, bool requires_grad = true) {
  return Var<double>(Tensor<double>::randn(shape, seed), requires_grad);
}

}  // namespace

TEST_CASE("matmul forward matches naive loops", "[autograd][ops][gemm]") {
  SECTION("a (2, 3, 4) times one b (4, 5)") {
    auto a = random_var({2, 3, 4}, 1, false), b = random_var({4, 5}, 2, false);
    auto y = matmul(a, b);
    REQUIRE(y.shape() == Shape{2, 3, 5});
    for (std::int64_t p = 0; p < 2; ++p)
      for (std::int64_t i = 0; i < 3; ++i)
        for (std::int64_t j = 0; j < 5; ++j) {
          double ref = 0.0;
          for (std::int64_t k = 0; k < 4; ++k)
            ref += a.value().at({p, i, k}) * b.value().at({k, j});
          CHECK_THAT(y.value().at({p, i, j}), WithinAbs(ref, 1e-12));
        }
  }
  SECTION("batched a (2, 3, 4) and b (2, 4, 5)") {
    auto a = random_var({2, 3, 4}, 3, false), b = random_var({2, 4, 5}, 4, false);
    auto y = matmul(a, b);
    REQUIRE(y.shape() == Shape{2, 3, 5});
    for (std::int64_t p = 0; p < 2; ++p)
      for (std::int64_t i = 0; i < 3; ++i)
        for (std::int64_t j = 0; j < 5; ++j) {
          double ref = 0.0;
          for (std::int64_t k = 0; k < 4; ++k)
            ref += a.value().at({p, i, k}) * b.value().at({p, k, j});
          CHECK_THAT(y.value().at({p, i, j}), WithinAbs(ref, 1e-12));
        }
  }
}

TEST_CASE("matmul gradients pass gradcheck", "[autograd][ops][gemm]") {
  using Pair = std::pair<Shape, Shape>;
  const Pair shapes = GENERATE(values<Pair>({{{1, 1}, {1, 1}},
                                             {{3, 4}, {4, 5}},
                                             {{2, 3, 4}, {4, 2}},
                                             {{2, 3, 4}, {2, 4, 5}},
                                             {{2, 2, 3, 1}, {2, 2, 1, 3}},
                                             {{7, 1}, {1, 6}}}));
  auto a = random_var(shapes.first, 10), b = random_var(shapes.second, 11);
  auto result =
      gradcheck([](const std::vector<Var<double>>& in) { return matmul(in[0], in[1]); }, {a, b});
  INFO("a " << shapes.first << ", b " << shapes.second << ": " << result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == a.numel() + b.numel());
}

TEST_CASE("matmul of a transposed view uses its elements, not its storage order",
          "[autograd][ops][gemm]") {
  auto base = random_var({4, 3}, 12, false);
  Var<double> at(base.value().transpose(0, 1), true);  // (3, 4), not contiguous
  auto b = random_var({4, 2}, 13, false);
  auto y = matmul(at, b);
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 2; ++j) {
      double ref = 0.0;
      for (std::int64_t k = 0; k < 4; ++k) ref += base.value().at({k, i}) * b.value().at({k, j});
      CHECK_THAT(y.value().at({i, j}), WithinAbs(ref, 1e-12));
    }
}

TEST_CASE("linear forward matches x W^T + b", "[autograd][ops][gemm]") {
  auto x = random_var({2, 3, 4}, 20, false), w = random_var({5, 4}, 21, false),
       b = random_var({5}, 22, false);
  auto y = linear(x, w, b);
  auto y0 = linear(x, w);
  REQUIRE(y.shape() == Shape{2, 3, 5});
  for (std::int64_t p = 0; p < 2; ++p)
    for (std::int64_t i = 0; i < 3; ++i)
      for (std::int64_t o = 0; o < 5; ++o) {
        double ref = 0.0;
        for (std::int64_t k = 0; k < 4; ++k) ref += x.value().at({p, i, k}) * w.value().at({o, k});
        CHECK_THAT(y0.value().at({p, i, o}), WithinAbs(ref, 1e-12));
        CHECK_THAT(y.value().at({p, i, o}), WithinAbs(ref + b.value().at({o}), 1e-12));
      }
}

TEST_CASE("linear gradients pass gradcheck, with and without bias", "[autograd][ops][gemm]") {
  const Shape x_shape = GENERATE(Shape{4}, Shape{1, 1}, Shape{5, 4}, Shape{2, 3, 4});
  const std::int64_t in = x_shape[x_shape.rank() - 1];
  const std::int64_t out = in == 1 ? 1 : 3;
  auto x = random_var(x_shape, 30), w = random_var({out, in}, 31), b = random_var({out}, 32);
  auto with_bias = gradcheck(
      [](const std::vector<Var<double>>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b});
  INFO("x " << x_shape << ", weight " << w.shape() << ": " << with_bias.first_failure);
  CHECK(with_bias.ok);
  CHECK(with_bias.checked == x.numel() + w.numel() + b.numel());
  auto without_bias = gradcheck(
      [](const std::vector<Var<double>>& v) { return linear(v[0], v[1], nullptr); }, {x, w});
  INFO(without_bias.first_failure);
  CHECK(without_bias.ok);
}

TEST_CASE("linear gradients accumulate over backward passes and skip inputs without grad",
          "[autograd][ops][gemm]") {
  auto x = random_var({6, 4}, 40, false), w = random_var({3, 4}, 41), b = random_var({3}, 42);
  auto seed = Tensor<double>::randn({6, 3}, 43);
  fathom::autograd::backward(linear(x, w, b), seed);
  const auto gw1 = w.grad().to_vector(), gb1 = b.grad().to_vector();
  fathom::autograd::backward(linear(x, w, b), seed);
  const auto gw2 = w.grad().to_vector(), gb2 = b.grad().to_vector();
  for (std::size_t i = 0; i < gw1.size(); ++i) CHECK_THAT(gw2[i], WithinAbs(2.0 * gw1[i], 1e-12));
  for (std::size_t i = 0; i < gb1.size(); ++i) CHECK_THAT(gb2[i], WithinAbs(2.0 * gb1[i], 1e-12));
  CHECK_FALSE(x.has_grad());
  // db is the column sum of the seed.
  for (std::int64_t o = 0; o < 3; ++o) {
    double s = 0.0;
    for (std::int64_t r = 0; r < 6; ++r) s += seed.at({r, o});
    CHECK_THAT(gb1[static_cast<std::size_t>(o)], WithinAbs(s, 1e-12));
  }
}

TEMPLATE_TEST_CASE("linear in float and bf16 tracks the double computation",
                   "[autograd][ops][gemm]", float, bf16) {
  using T = TestType;
  const std::int64_t rows = 33, in = 40, out = 7;
  auto xd = Tensor<double>::uniform({rows, in}, 50, -1.0, 1.0),
       wd = Tensor<double>::uniform({out, in}, 51, -1.0, 1.0);
  auto bd = Tensor<double>::uniform({out}, 52, -1.0, 1.0),
       gd = Tensor<double>::uniform({rows, out}, 53, -1.0, 1.0);
  // Round the double inputs to T first so that both runs see the same values.
  Var<T> x(xd.cast<T>(), true), w(wd.cast<T>(), true), b(bd.cast<T>(), true);
  Var<double> x2(x.value().template cast<double>(), true),
      w2(w.value().template cast<double>(), true), b2(b.value().template cast<double>(), true);
  // One graph at a time: backward() consumes the whole tape.
  auto y = linear(x, w, b);
  fathom::autograd::backward(y, gd.cast<T>());
  auto y2 = linear(x2, w2, b2);
  fathom::autograd::backward(y2, gd.cast<T>().template cast<double>());
  // Each output sums `in` (forward, dX) or `rows` (dW, db) terms of size up to 1.
  const double rtol = fathom::Precision<T>::rtol;
  auto compare = [&](const Tensor<T>& got, const Tensor<double>& ref, double terms,
                     const char* what) {
    auto g = got.to_vector();
    auto r = ref.to_vector();
    REQUIRE(g.size() == r.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      INFO(fathom::Precision<T>::name << " " << what << " element " << i);
      CHECK(std::abs(fathom::scalar_cast<double>(g[i]) - r[i]) <=
            rtol * (std::abs(r[i]) + std::sqrt(terms)));
    }
  };
  compare(y.value(), y2.value(), in, "y");
  compare(x.grad(), x2.grad(), out, "dX");
  compare(w.grad(), w2.grad(), rows, "dW");
  compare(b.grad(), b2.grad(), rows, "db");
}

TEST_CASE("matmul and linear errors name both shapes", "[autograd][ops][gemm]") {
  auto x = random_var({4, 7}, 60), w = random_var({3, 8}, 61);
  std::string msg = error_of([&] { linear(x, w); });
  INFO(msg);
  CHECK(contains(msg, "x (4, 7)"));
  CHECK(contains(msg, "weight (3, 8)"));
  CHECK(contains(msg, "in_features (7 vs 8)"));

  auto w2 = random_var({3, 7}, 62), bias = random_var({4}, 63);
  msg = error_of([&] { linear(x, w2, bias); });
  CHECK(contains(msg, "bias (4,)"));
  CHECK(contains(msg, "weight (3, 7)"));

  auto b = random_var({8, 2}, 64);
  msg = error_of([&] { matmul(x, b); });
  CHECK(contains(msg, "a (4, 7)"));
  CHECK(contains(msg, "b (8, 2)"));
  CHECK(contains(msg, "(7 vs 8)"));

  auto a3 = random_var({2, 4, 7}, 65), b3 = random_var({3, 7, 2}, 66);
  msg = error_of([&] { matmul(a3, b3); });
  CHECK(contains(msg, "a (2, 4, 7)"));
  CHECK(contains(msg, "b (3, 7, 2)"));

  auto v = random_var({7}, 67);
  msg = error_of([&] { matmul(v, b); });
  CHECK(contains(msg, "a (7,)"));
}

TEST_CASE("gelu_mlp equals linear, gelu, linear composed: values and gradients",
          "[autograd][ops][gemm]") {
  const bool bias = GENERATE(true, false);
  INFO("bias " << bias);
  auto xv = Tensor<double>::randn({2, 3, 4}, 50), w1v = Tensor<double>::randn({6, 4}, 51),
       b1v = Tensor<double>::randn({6}, 52), w2v = Tensor<double>::randn({5, 6}, 53),
       b2v = Tensor<double>::randn({5}, 54);
  auto seed = Tensor<double>::randn({2, 3, 5}, 55);
  auto run = [&](bool fused) {
    Var<double> x(xv.clone(), true), w1(w1v.clone(), true), b1(b1v.clone(), true),
        w2(w2v.clone(), true), b2(b2v.clone(), true);
    Var<double> y =
        fused ? fathom::autograd::gelu_mlp(x, w1, bias ? &b1 : nullptr, w2, bias ? &b2 : nullptr)
              : linear(fathom::autograd::gelu(linear(x, w1, bias ? &b1 : nullptr)), w2,
                       bias ? &b2 : nullptr);
    fathom::autograd::backward(y, seed);
    std::vector<std::vector<double>> out{y.value().to_vector(), x.grad().to_vector(),
                                         w1.grad().to_vector(), w2.grad().to_vector()};
    if (bias) {
      out.push_back(b1.grad().to_vector());
      out.push_back(b2.grad().to_vector());
    }
    return out;
  };
  const auto fused = run(true), plain = run(false);
  REQUIRE(fused.size() == plain.size());
  for (std::size_t t = 0; t < fused.size(); ++t) {
    INFO("tensor " << t << " (value, dx, dw1, dw2, db1, db2)");
    REQUIRE(fused[t].size() == plain[t].size());
    for (std::size_t i = 0; i < fused[t].size(); ++i)
      CHECK_THAT(fused[t][i], WithinAbs(plain[t][i], 1e-12));
  }
}

TEST_CASE("gelu_mlp gradients pass gradcheck", "[autograd][ops][gemm]") {
  auto x = random_var({3, 4}, 60), w1 = random_var({5, 4}, 61), b1 = random_var({5}, 62),
       w2 = random_var({2, 5}, 63), b2 = random_var({2}, 64);
  auto r = gradcheck(
      [](const std::vector<Var<double>>& v) {
        return fathom::autograd::gelu_mlp(v[0], v[1], &v[2], v[3], &v[4]);
      },
      {x, w1, b1, w2, b2});
  INFO(r.first_failure);
  CHECK(r.ok);
  CHECK(r.checked == x.numel() + w1.numel() + b1.numel() + w2.numel() + b2.numel());
}

TEST_CASE("gelu_mlp names mismatched shapes", "[autograd][ops][gemm]") {
  auto x = random_var({3, 4}, 65), w1 = random_var({5, 4}, 66), w2 = random_var({2, 6}, 67);
  const auto msg = error_of([&] { fathom::autograd::gelu_mlp(x, w1, nullptr, w2, nullptr); });
  CHECK(contains(msg, "w2 (2, 6)"));
  CHECK(contains(msg, "(C', 5)"));
}

TEST_CASE("linear_swiglu equals swiglu_stacked of linear: values and gradients, bit for bit",
          "[autograd][ops][gemm]") {
  auto xv = Tensor<double>::randn({2, 3, 4}, 70), wv = Tensor<double>::randn({10, 4}, 71);
  auto seed = Tensor<double>::randn({2, 3, 5}, 72);
  auto run = [&](bool fused) {
    Var<double> x(xv.clone(), true), w(wv.clone(), true);
    Var<double> y = fused ? fathom::autograd::linear_swiglu(x, w)
                          : fathom::autograd::swiglu_stacked(linear(x, w));
    fathom::autograd::backward(y, seed);
    return std::vector<std::vector<double>>{y.value().to_vector(), x.grad().to_vector(),
                                            w.grad().to_vector()};
  };
  const auto fused = run(true), plain = run(false);
  for (std::size_t t = 0; t < fused.size(); ++t) {
    INFO("tensor " << t << " (value, dx, dw)");
    REQUIRE(fused[t].size() == plain[t].size());
    for (std::size_t i = 0; i < fused[t].size(); ++i) CHECK(fused[t][i] == plain[t][i]);
  }
}

TEST_CASE("linear_swiglu gradients pass gradcheck", "[autograd][ops][gemm]") {
  auto x = random_var({3, 4}, 73), w = random_var({6, 4}, 74);
  auto r = gradcheck(
      [](const std::vector<Var<double>>& v) { return fathom::autograd::linear_swiglu(v[0], v[1]); },
      {x, w});
  INFO(r.first_failure);
  CHECK(r.ok);
  CHECK(r.checked == x.numel() + w.numel());
}

TEST_CASE("linear_swiglu names its shape errors", "[autograd][ops][gemm]") {
  auto x = random_var({3, 4}, 75), odd = random_var({5, 4}, 76), wide = random_var({6, 3}, 77);
  const auto rows = error_of([&] { fathom::autograd::linear_swiglu(x, odd); });
  CHECK(contains(rows, "gate_up (5, 4)"));
  CHECK(contains(rows, "even count"));
  const auto in = error_of([&] { fathom::autograd::linear_swiglu(x, wide); });
  CHECK(contains(in, "linear_swiglu"));
  CHECK(contains(in, "in_features"));
}

TEST_CASE("linear and gelu_mlp with a residual equal the op plus scale * r: values and gradients",
          "[autograd][ops][gemm]") {
  using fathom::autograd::Residual;
  const bool bias = GENERATE(true, false);
  const double scale = GENERATE(1.0, 0.5, -2.0);
  const bool mlp = GENERATE(false, true);
  INFO("bias " << bias << ", scale " << scale << ", gelu_mlp " << mlp);
  // linear: x (2, 3, 4) W2^T with W2 (5, 4); gelu_mlp: x -> (2, 3, 6) -> (2, 3, 5).
  auto xv = Tensor<double>::randn({2, 3, 4}, 70), w1v = Tensor<double>::randn({6, 4}, 71),
       b1v = Tensor<double>::randn({6}, 72), w2v = Tensor<double>::randn({5, mlp ? 6 : 4}, 73),
       b2v = Tensor<double>::randn({5}, 74), rv = Tensor<double>::randn({2, 3, 5}, 75);
  auto seed = Tensor<double>::randn({2, 3, 5}, 76);
  auto run = [&](bool fused) {
    Var<double> x(xv.clone(), true), w1(w1v.clone(), true), b1(b1v.clone(), true),
        w2(w2v.clone(), true), b2(b2v.clone(), true), r(rv.clone(), true);
    const Residual<double, fathom::Cpu> add{&r, scale};
    const Var<double>* b1p = bias ? &b1 : nullptr;
    const Var<double>* b2p = bias ? &b2 : nullptr;
    Var<double> y;
    if (mlp)
      y = fused ? fathom::autograd::gelu_mlp(x, w1, b1p, w2, b2p, add)
                : r * scale + fathom::autograd::gelu_mlp(x, w1, b1p, w2, b2p);
    else
      y = fused ? linear(x, w2, b2p, add) : r * scale + linear(x, w2, b2p);
    fathom::autograd::backward(y, seed);
    std::vector<std::vector<double>> out{y.value().to_vector(), x.grad().to_vector(),
                                         r.grad().to_vector(), w2.grad().to_vector()};
    if (bias) out.push_back(b2.grad().to_vector());
    if (mlp) out.push_back(w1.grad().to_vector());
    return out;
  };
  const auto fused = run(true), plain = run(false);
  REQUIRE(fused.size() == plain.size());
  for (std::size_t t = 0; t < fused.size(); ++t) {
    INFO("tensor " << t << " (value, dx, dr, dw2, [db2], [dw1])");
    REQUIRE(fused[t].size() == plain[t].size());
    for (std::size_t i = 0; i < fused[t].size(); ++i)
      CHECK_THAT(fused[t][i], WithinAbs(plain[t][i], 1e-12));
  }
  // The residual's gradient is scale * seed, and its value took part in y.
  const auto seed_v = seed.to_vector();
  for (std::size_t i = 0; i < seed_v.size(); ++i)
    CHECK_THAT(fused[2][i], WithinAbs(scale * seed_v[i], 1e-12));
}

TEST_CASE("linear with a residual passes gradcheck, and names a residual of the wrong shape",
          "[autograd][ops][gemm]") {
  using fathom::autograd::Residual;
  auto x = random_var({3, 4}, 80), w = random_var({5, 4}, 81), b = random_var({5}, 82),
       r = random_var({3, 5}, 83);
  auto res = gradcheck(
      [](const std::vector<Var<double>>& v) {
        return linear(v[0], v[1], &v[2], Residual<double, fathom::Cpu>{&v[3], 0.75});
      },
      {x, w, b, r});
  INFO(res.first_failure);
  CHECK(res.ok);
  CHECK(res.checked == x.numel() + w.numel() + b.numel() + r.numel());
  auto wrong = random_var({3, 4}, 84);
  const auto msg = error_of([&] { linear(x, w, &b, Residual<double, fathom::Cpu>{&wrong, 1.0}); });
  CHECK(contains(msg, "residual (3, 4)"));
  CHECK(contains(msg, "output's shape (3, 5)"));
}
