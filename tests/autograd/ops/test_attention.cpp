// Tests for the differentiable attention op (include/fathom/autograd/ops/attention.hpp): gradcheck
// in double for q, k and v at several shapes, strided views of a fused projection, one Var used
// as q, k and v, and the shape errors.
#include <fathom/autograd/ops/attention.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/autograd/ops/rope.hpp>

#include "autograd/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
using fathom::autograd::attention;
using fathom::autograd::gradcheck;
using fathom::test::error_of;
using fathom::test::leaf;

TEST_CASE("attention gradients match finite differences", "[autograd][attention]") {
  auto [B, T, H, hd] = GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
      {{1, 1, 1, 3}, {2, 5, 2, 3}, {1, 7, 3, 2}, {2, 4, 1, 4}, {1, 9, 2, 1}}));
  const bool causal = GENERATE(true, false);
  INFO("B " << B << " T " << T << " H " << H << " hd " << hd << " causal " << causal);
  const Shape shape{B, T, H * hd};
  auto result = gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return attention(in[0], in[1], in[2], static_cast<int>(H), causal);
      },
      {leaf(shape, 1), leaf(shape, 2), leaf(shape, 3)});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == 3 * shape.numel());
}

TEST_CASE("attention with one Var as q, k and v accumulates all three gradients",
          "[autograd][attention]") {
  const Shape shape{2, 6, 4};
  auto result = gradcheck(
      [](const std::vector<Var<double>>& in) { return attention(in[0], in[0], in[0], 2); },
      {leaf(shape, 7)});
  INFO(result.first_failure);
  CHECK(result.ok);
}

TEST_CASE("attention reads slices of a fused projection in place and routes their gradients",
          "[autograd][attention]") {
  const std::int64_t B = 2, T = 5, C = 6;
  const int H = 2;
  auto fused = Tensor<double>::randn(Shape{B, T, 3 * C}, 9);
  // Leaves whose values are views into the fused tensor (row stride 3C) ...
  Var<double> qs(fused.slice(2, 0, C), true), ks(fused.slice(2, C, 2 * C), true),
      vs(fused.slice(2, 2 * C, 3 * C), true);
  REQUIRE_FALSE(qs.value().is_contiguous());
  // ... and contiguous copies of the same values.
  Var<double> qc(qs.value().clone(), true), kc(ks.value().clone(), true),
      vc(vs.value().clone(), true);

  auto seed = Tensor<double>::randn(Shape{B, T, C}, 10);
  auto ys = attention(qs, ks, vs, H);
  fathom::autograd::backward(ys, seed);
  auto yc = attention(qc, kc, vc, H);
  fathom::autograd::backward(yc, seed);

  CHECK(ys.value().to_vector() == yc.value().to_vector());
  CHECK(qs.grad().to_vector() == qc.grad().to_vector());
  CHECK(ks.grad().to_vector() == kc.grad().to_vector());
  CHECK(vs.grad().to_vector() == vc.grad().to_vector());
  CHECK(qs.grad().shape() == Shape{B, T, C});
}

TEST_CASE("attention records nothing without gradients", "[autograd][attention]") {
  fathom::autograd::clear_tape();
  Var<float> q(Tensor<float>::randn(Shape{1, 3, 4}, 1)), k(Tensor<float>::randn(Shape{1, 3, 4}, 2)),
      v(Tensor<float>::randn(Shape{1, 3, 4}, 3));
  auto y = attention(q, k, v, 2);
  CHECK_FALSE(y.requires_grad());
  CHECK(fathom::autograd::tape_size() == 0);
  Var<float> qg(q.value(), true);
  {
    fathom::autograd::NoGradGuard guard;
    auto z = attention(qg, k, v, 2);
    CHECK_FALSE(z.requires_grad());
    CHECK(fathom::autograd::tape_size() == 0);
  }
  auto w = attention(qg, k, v, 2);
  CHECK(w.requires_grad());
  CHECK(fathom::autograd::tape_size() == 1);
  fathom::autograd::clear_tape();
}

TEST_CASE("attention rejects inconsistent shapes with both shapes in the message",
          "[autograd][attention]") {
  auto q = leaf(Shape{2, 5, 8}, 1);
  auto check_error = [](const std::string& msg, std::vector<std::string> parts) {
    INFO(msg);
    for (const auto& part : parts) CHECK(msg.find(part) != std::string::npos);
  };
  check_error(error_of([&] {
                attention(q, leaf(Shape{2, 6, 8}, 2), q, 2);
              }),
              {"attention", "(2, 5, 8)", "(2, 6, 8)"});
  check_error(error_of([&] {
                attention(q, q, leaf(Shape{2, 5, 4}, 2), 2);
              }),
              {"attention", "(2, 5, 8)", "(2, 5, 4)"});
  check_error(error_of([&] { attention(q, q, q, 3); }), {"C = 8", "n_heads = 3"});
  check_error(error_of([&] { attention(q, q, q, 0); }), {"n_heads > 0", "got 0"});
  auto flat = leaf(Shape{5, 8}, 3);
  check_error(error_of([&] { attention(flat, flat, flat, 2); }), {"(B, T, C)", "(5, 8)"});
}

namespace {

// rope_attention_qkv(x) and attention_qkv(rope_qkv(x)) with x = leaf * 1.0 (a buffer nothing
// else holds, turned in place) or the leaf itself (turned on a copy), seen through
// sum(out * w) + sum(x * u): the u term puts a gradient into x before the attention backward
// adds its own, so the accumulate route runs. Returns the output, then the leaf's gradient.
std::vector<double> rope_attention_run(bool fused, const Tensor<double>& x0,
                                       const Tensor<double>& w, const Tensor<double>& u, int heads,
                                       double theta, std::int64_t pos0, bool causal, bool in_place,
                                       bool accumulate) {
  namespace ag = fathom::autograd;
  ag::clear_tape();
  Var<double> x(x0.clone(), true);
  Var<double> in = in_place ? x * 1.0 : x;
  Var<double> extra = accumulate ? ag::sum(in * Var<double>(u)) : Var<double>();
  Var<double> out =
      fused ? ag::rope_attention_qkv(std::move(in), heads, theta, pos0, causal)
            : ag::attention_qkv(ag::rope_qkv(std::move(in), heads, theta, pos0), heads, causal);
  Var<double> loss = ag::sum(out * Var<double>(w));
  ag::backward(accumulate ? loss + extra : loss);
  auto result = out.value().to_vector();
  const auto g = x.grad().to_vector();
  result.insert(result.end(), g.begin(), g.end());
  return result;
}

}  // namespace

TEST_CASE("rope_attention_qkv equals attention_qkv after rope_qkv, values and gradients",
          "[autograd][attention][rope]") {
  auto [B, T, H, hd, pos0] =
      GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
          {{1, 1, 1, 2, 0}, {2, 5, 2, 4, 0}, {1, 7, 3, 6, 9}, {2, 9, 1, 8, 1000}}));
  const bool causal = GENERATE(true, false);
  const bool in_place = GENERATE(true, false);
  const bool accumulate = GENERATE(false, true);
  const double theta = 500.0;
  INFO("B " << B << " T " << T << " H " << H << " hd " << hd << " pos0 " << pos0 << " causal "
            << causal << " in_place " << in_place << " accumulate " << accumulate);
  const std::int64_t C = H * hd;
  const auto x0 = Tensor<double>::randn(Shape{B, T, 3 * C}, 21);
  const auto w = Tensor<double>::randn(Shape{B, T, C}, 22);
  const auto u = Tensor<double>::randn(Shape{B, T, 3 * C}, 23);
  const auto heads = static_cast<int>(H);
  const auto want =
      rope_attention_run(false, x0, w, u, heads, theta, pos0, causal, in_place, accumulate);
  const auto got =
      rope_attention_run(true, x0, w, u, heads, theta, pos0, causal, in_place, accumulate);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-12));
}

TEST_CASE("rope_attention_qkv gradients match finite differences", "[autograd][attention][rope]") {
  auto [B, T, H, hd, pos0] =
      GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
          {{1, 1, 1, 2, 0}, {2, 4, 2, 4, 3}, {1, 6, 1, 6, 50}}));
  INFO("B " << B << " T " << T << " H " << H << " hd " << hd << " pos0 " << pos0);
  auto result = gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return fathom::autograd::rope_attention_qkv(in[0] * 1.0, static_cast<int>(H), 10000.0,
                                                    pos0);
      },
      {leaf(Shape{B, T, 3 * H * hd}, 31)});
  INFO(result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == B * T * 3 * H * hd);
}

TEST_CASE("rope_attention_qkv leaves a qkv that is still held as it was",
          "[autograd][attention][rope]") {
  const auto x = leaf(Shape{2, 3, 12}, 41);
  const auto before = x.value().to_vector();
  fathom::autograd::rope_attention_qkv(x, 2);
  CHECK(x.value().to_vector() == before);
}

TEST_CASE("rope_attention_qkv names a bad shape or theta", "[autograd][attention][rope]") {
  using fathom::autograd::rope_attention_qkv;
  auto check_error = [](const std::string& msg, std::vector<std::string> parts) {
    INFO(msg);
    for (const auto& part : parts) CHECK(msg.find(part) != std::string::npos);
  };
  check_error(error_of([] {
                rope_attention_qkv(leaf(Shape{2, 3, 8}, 1), 2);
              }),
              {"rope_attention_qkv", "(B, T, 3C)", "(2, 3, 8)"});
  check_error(error_of([] {
                rope_attention_qkv(leaf(Shape{2, 3, 18}, 1), 2);
              }),
              {"rope_attention_qkv", "2 heads", "even head size"});
  check_error(error_of([] {
                rope_attention_qkv(leaf(Shape{2, 3, 12}, 1), 2, 0.0);
              }),
              {"rope_attention_qkv", "theta > 0", "got 0"});
  check_error(error_of([] { rope_attention_qkv(Var<double>(), 2); }),
              {"rope_attention_qkv", "undefined"});
}
