// Tests for autograd::linear_fp8 (include/fathom/autograd/ops/linear_fp8.hpp) on the CPU, where
// it runs the reference fp8 kernels: its value and gradients equal the products of the quantized
// operands (each with its own current scale, gradients in E5M2) to float accuracy, and stay
// within the fp8 formats' error of linear's; gradients accumulate; fresh buffers are written, never
// read (NaN-poisoned); an input quantized once for several layers changes nothing; and the model
// switch (DecoderLM::set_linear_precision) routes the blocks' linear layers, and only them,
// through it.
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/gemm.hpp>
#include <fathom/autograd/ops/linear_fp8.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/core/memory.hpp>
#include <fathom/nn/decoder_lm.hpp>
#include <fathom/nn/language_model.hpp>
#include <fathom/policy/pre_ln.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/ops/linear_fp8_cases.hpp"
#include "autograd/support.hpp"
#include "kernels/support.hpp"
#include "nn/small_model.hpp"
#include "support/catch.hpp"

namespace {

using fathom::bf16;
using fathom::Cpu;
using fathom::fp8_e4m3;
using fathom::fp8_e5m2;
using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace kernels = fathom::kernels;
namespace ag = fathom::autograd;

// x (rows, cols) quantized by the reference kernels with the current scaling: the decoded values
// times 1 / scale, in double (what the fp8 GEMM multiplies).
template <class F, class T>
std::vector<double> dequantized(const std::vector<T>& x, std::int64_t rows, std::int64_t cols) {
  float amax = 0, scale_inv = 0;
  kernels::amax(Cpu{}, kernels::AmaxParams<T>{x.data(), rows * cols, &amax});
  std::vector<F> q(x.size());
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<T, F>{.x = x.data(),
                                                                .out = q.data(),
                                                                .rows = rows,
                                                                .cols = cols,
                                                                .amax = &amax,
                                                                .scale_inv = &scale_inv});
  std::vector<double> v(x.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<double>(static_cast<float>(q[i])) * scale_inv;
  return v;
}

// C (m, n) = A (m, k) op(B), B (n, k) when b_rows_n else (k, n); and the sum of |products|.
void product(const std::vector<double>& a, const std::vector<double>& b, std::int64_t m,
             std::int64_t n, std::int64_t k, bool b_rows_n, std::vector<double>& c,
             std::vector<double>& mass) {
  c.assign(static_cast<std::size_t>(m * n), 0.0);
  mass.assign(c.size(), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t q = 0; q < k; ++q) {
        const double p = a[static_cast<std::size_t>(i * k + q)] *
                         b[static_cast<std::size_t>(b_rows_n ? j * k + q : q * n + j)];
        c[static_cast<std::size_t>(i * n + j)] += p;
        mass[static_cast<std::size_t>(i * n + j)] += std::abs(p);
      }
}

std::vector<double> transposed(const std::vector<double>& x, std::int64_t rows, std::int64_t cols) {
  std::vector<double> t(x.size());
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      t[static_cast<std::size_t>(j * rows + i)] = x[static_cast<std::size_t>(i * cols + j)];
  return t;
}

// "" when |got - want| <= rtol * mass + atol everywhere, else the first element that is not.
std::string mismatch(const std::string& name, const std::vector<double>& got,
                     const std::vector<double>& want, const std::vector<double>& mass, double rtol,
                     double atol) {
  for (std::size_t i = 0; i < want.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= rtol * mass[i] + atol))
      return name + "[" + std::to_string(i) + "]: got " + std::to_string(got[i]) + ", want " +
             std::to_string(want[i]) + " (mass " + std::to_string(mass[i]) + ")";
  return {};
}

// The two-block test model of Arch (GPT-2's tied and with biases), vocabulary 50, initialized.
template <class Arch>
std::unique_ptr<fathom::nn::DecoderModel<Arch, fathom::policy::PreLN, float, Cpu>> small_lm() {
  auto c = fathom::test::small_model(2, 32, 64, 16);
  c.arch = Arch::kind;
  if (Arch::kind == fathom::nn::ArchKind::gpt2) c.tied = c.bias = true;
  c.vocab = 50;
  auto model = std::make_unique<fathom::nn::DecoderModel<Arch, fathom::policy::PreLN, float, Cpu>>(
      c, fathom::policy::PreLN{});
  model->init(5);
  return model;
}

// Tokens (2, 16) for small_lm and the tokens that follow them.
std::pair<Tensor<std::int32_t, Cpu>, Tensor<std::int32_t, Cpu>> token_batch() {
  std::vector<std::int32_t> ids(2 * 16);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 50);
  std::vector<std::int32_t> next(ids.begin() + 1, ids.end());
  next.push_back(0);
  return {Tensor<std::int32_t, Cpu>::from_vector(Shape{2, 16}, ids),
          Tensor<std::int32_t, Cpu>::from_vector(Shape{2, 16}, next)};
}

// t * f, element by element.
Tensor<float, Cpu> scaled(const Tensor<float, Cpu>& t, float f) {
  auto v = t.to_vector();
  for (auto& e : v) e *= f;
  return Tensor<float, Cpu>::from_vector(t.shape(), v);
}

}  // namespace

TEMPLATE_TEST_CASE("linear_fp8 computes the products of its quantized operands",
                   "[autograd][ops][fp8]", float, bf16) {
  using T = TestType;
  fathom::test::FreshTape tape;
  const std::int64_t B = 3, S = 7, in = 24, out = 10, rows = B * S;
  const bool with_bias = GENERATE(false, true);
  INFO("bias " << with_bias);
  // Activations, weights and gradients of different magnitudes: each gets its own scale.
  const auto xs = fathom::test::normal_values<T>(static_cast<std::size_t>(rows * in), 1, 4.0);
  const auto ws = fathom::test::normal_values<T>(static_cast<std::size_t>(out * in), 2, 0.02);
  const auto gs = fathom::test::normal_values<T>(static_cast<std::size_t>(rows * out), 3, 1e-4);
  const auto bs = fathom::test::normal_values<T>(static_cast<std::size_t>(out), 4, 0.5);
  Var<T, Cpu> x(Tensor<T, Cpu>::from_vector(Shape{B, S, in}, xs), true);
  Var<T, Cpu> w(Tensor<T, Cpu>::from_vector(Shape{out, in}, ws), true);
  Var<T, Cpu> b(Tensor<T, Cpu>::from_vector(Shape{out}, bs), true);
  Var<T, Cpu> y = with_bias ? ag::linear_fp8(x, w, b) : ag::linear_fp8(x, w);
  REQUIRE(y.shape() == Shape{B, S, out});
  ag::backward(y, Tensor<T, Cpu>::from_vector(Shape{B, S, out}, gs));

  const auto xq = dequantized<fp8_e4m3>(xs, rows, in);
  const auto wq = dequantized<fp8_e4m3>(ws, out, in);
  const auto gq = dequantized<fp8_e5m2>(gs, rows, out);
  std::vector<double> want, mass;
  // Float sums of K terms, then one rounding to T.
  const double out_rtol = std::is_same_v<T, bf16> ? 1.0 / 128 : 1e-6;
  product(xq, wq, rows, out, in, true, want, mass);  // Y = Xq Wq^T
  if (with_bias)
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < out; ++j) {
        want[static_cast<std::size_t>(i * out + j)] += static_cast<double>(bs[j]);
        mass[static_cast<std::size_t>(i * out + j)] += std::abs(static_cast<double>(bs[j]));
      }
  std::string e = mismatch("Y", fathom::test::to_double(y.value().to_vector()), want, mass,
                           out_rtol + 1e-5, 1e-6);
  INFO(e);
  CHECK(e.empty());
  product(gq, wq, rows, in, out, false, want, mass);  // dX = dYq Wq
  e = mismatch("dX", fathom::test::to_double(x.grad().to_vector()), want, mass, out_rtol + 1e-5,
               1e-12);
  INFO(e);
  CHECK(e.empty());
  product(transposed(gq, rows, out), transposed(xq, rows, in), out, in, rows, true, want, mass);
  e = mismatch("dW", fathom::test::to_double(w.grad().to_vector()), want, mass, out_rtol + 1e-5,
               1e-12);  // dW = dYq^T Xq
  INFO(e);
  CHECK(e.empty());
  if (with_bias) {  // db: the column sums of dY itself (not quantized), as linear computes them
    std::vector<double> db(static_cast<std::size_t>(out), 0.0), ones(db.size(), 0.0);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < out; ++j) {
        db[static_cast<std::size_t>(j)] +=
            static_cast<double>(gs[static_cast<std::size_t>(i * out + j)]);
        ones[static_cast<std::size_t>(j)] +=
            std::abs(static_cast<double>(gs[static_cast<std::size_t>(i * out + j)]));
      }
    e = mismatch("db", fathom::test::to_double(b.grad().to_vector()), db, ones, out_rtol + 1e-5,
                 0.0);
    INFO(e);
    CHECK(e.empty());
  }
}

TEST_CASE("linear_fp8 stays within the fp8 formats' error of linear", "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  const std::int64_t rows = 33, in = 48, out = 17;
  const auto xs = fathom::test::normal_values<float>(static_cast<std::size_t>(rows * in), 11);
  const auto ws = fathom::test::normal_values<float>(static_cast<std::size_t>(out * in), 12, 0.1);
  const auto gs = fathom::test::normal_values<float>(static_cast<std::size_t>(rows * out), 13);
  auto run = [&](bool fp8) {
    Var<float, Cpu> x(Tensor<float, Cpu>::from_vector(Shape{rows, in}, xs), true);
    Var<float, Cpu> w(Tensor<float, Cpu>::from_vector(Shape{out, in}, ws), true);
    auto y = fp8 ? ag::linear_fp8(x, w) : ag::linear(x, w);
    ag::backward(y, Tensor<float, Cpu>::from_vector(Shape{rows, out}, gs));
    return std::vector<std::vector<double>>{fathom::test::to_double(y.value().to_vector()),
                                            fathom::test::to_double(x.grad().to_vector()),
                                            fathom::test::to_double(w.grad().to_vector())};
  };
  const auto exact = run(false), fp8 = run(true);
  // Relative error per product at most (1 + 2^-4)^2 - 1 (E4M3 x E4M3) or (1 + 2^-3)(1 + 2^-4) - 1
  // (E5M2 x E4M3), measured against the sum of |products| (plus subnormal slack).
  std::vector<double> want, mass;
  std::vector<double> xd(xs.begin(), xs.end()), wd(ws.begin(), ws.end()), gd(gs.begin(), gs.end());
  product(xd, wd, rows, out, in, true, want, mass);
  std::string e = mismatch("Y", fp8[0], exact[0], mass, 0.13, 1e-3);
  INFO(e);
  CHECK(e.empty());
  product(gd, wd, rows, in, out, false, want, mass);
  e = mismatch("dX", fp8[1], exact[1], mass, 0.2, 1e-3);
  INFO(e);
  CHECK(e.empty());
  product(transposed(gd, rows, out), transposed(xd, rows, in), out, in, rows, true, want, mass);
  e = mismatch("dW", fp8[2], exact[2], mass, 0.2, 1e-3);
  INFO(e);
  CHECK(e.empty());
  // ...and it is not linear itself: quantization changed the values.
  CHECK(fp8[0] != exact[0]);
}

TEST_CASE("linear_fp8 gradients accumulate and skip inputs without grad", "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{5, 16}, 21), true);
  Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{8, 16}, 22), true);
  Var<float, Cpu> frozen(Tensor<float, Cpu>::randn(Shape{8, 16}, 23), false);
  const auto seed = Tensor<float, Cpu>::randn(Shape{5, 8}, 24);
  ag::backward(ag::linear_fp8(x, w), seed);
  const auto gx1 = x.grad().to_vector(), gw1 = w.grad().to_vector();
  ag::backward(ag::linear_fp8(x, w), seed);
  const auto gx2 = x.grad().to_vector(), gw2 = w.grad().to_vector();
  for (std::size_t i = 0; i < gx1.size(); ++i) CHECK(gx2[i] == 2.0f * gx1[i]);
  for (std::size_t i = 0; i < gw1.size(); ++i) CHECK(gw2[i] == 2.0f * gw1[i]);
  x.zero_grad();
  ag::backward(ag::linear_fp8(x, frozen), seed);
  CHECK(x.grad().to_vector() != std::vector<float>(gx1.size(), 0.0f));
}

TEST_CASE("linear_fp8 names mismatched shapes", "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{5, 16}, 1), true);
  Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{8, 15}, 2), true);
  CHECK_THROWS_WITH(ag::linear_fp8(x, w), HasSubstring("disagree on in_features (16 vs 15)"));
}

TEMPLATE_TEST_CASE("DecoderLM::set_linear_precision(fp8) routes the blocks' linear layers",
                   "[nn][fp8]", fathom::nn::Llama, fathom::nn::Gpt2) {
  using Arch = TestType;
  fathom::test::FreshTape tape;
  auto owned = small_lm<Arch>();
  auto& model = *owned;
  const auto [x, y] = token_batch();

  auto loss_and_head_grad = [&] {
    model.zero_grad();
    auto loss = model.loss(x, y);
    ag::backward(loss);
    const auto* head = model.model().find(
        Arch::kind == fathom::nn::ArchKind::gpt2 ? "transformer.wte.weight" : "lm_head.weight");
    REQUIRE(head != nullptr);
    return std::make_pair(static_cast<double>(loss.value().item()), head->var.grad().to_vector());
  };
  CHECK(model.linear_precision() == fathom::nn::LinearPrecision::native);
  const auto [native_loss, native_grad] = loss_and_head_grad();
  model.set_linear_precision(fathom::nn::LinearPrecision::fp8);
  CHECK(model.linear_precision() == fathom::nn::LinearPrecision::fp8);
  const auto [fp8_loss, fp8_grad] = loss_and_head_grad();
  INFO("loss native " << native_loss << " fp8 " << fp8_loss);
  CHECK(std::isfinite(fp8_loss));
  CHECK(fp8_loss != native_loss);                                 // the fp8 route ran
  CHECK(std::abs(fp8_loss - native_loss) <= 0.02 * native_loss);  // and is close
  CHECK(fp8_grad != native_grad);
  // Back to native: the same loss as before, bit for bit.
  model.set_linear_precision(fathom::nn::LinearPrecision::native);
  CHECK(loss_and_head_grad().first == native_loss);
}

TEST_CASE("fp8 linear layers are refused for double models", "[nn][fp8]") {
  auto c = fathom::test::small_model(1, 16, 32, 8);
  fathom::nn::DecoderModel<fathom::nn::Llama, fathom::policy::PreLN, double, Cpu> model(c, {});
  CHECK_THROWS_WITH(model.set_linear_precision(fathom::nn::LinearPrecision::fp8),
                    HasSubstring("fp8 GEMMs need bf16 or float weights, not fp64"));
}

TEST_CASE("linear_fp8 never reads the fresh buffers it fills (NaN-poisoned)",
          "[autograd][ops][fp8]") {
  const bool delayed = GENERATE(false, true);
  INFO((delayed ? "delayed" : "current") << " scaling");
  auto run = [delayed] {
    fathom::test::FreshTape tape;
    Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{2, 9, 16}, 31), true);
    Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{12, 16}, 32, 0.1), true);
    Var<float, Cpu> b(Tensor<float, Cpu>::randn(Shape{12}, 33), true);
    ag::Fp8LinearScaling<Cpu> scaling;
    if (delayed)
      scaling = {std::make_shared<ag::Fp8History<Cpu>>(), std::make_shared<ag::Fp8History<Cpu>>()};
    std::vector<float> all;
    for (int step = 0; step < (delayed ? 3 : 1); ++step) {  // delayed: the first, then the history
      auto y = ag::linear_fp8(x, w, &b, &scaling);
      ag::backward(y, Tensor<float, Cpu>::randn(Shape{2, 9, 12}, 34 + step));
      all = y.value().to_vector();
    }
    for (const auto* v : {&x, &w, &b}) {
      const auto g = v->grad().to_vector();
      all.insert(all.end(), g.begin(), g.end());
    }
    return all;
  };
  const auto plain = run();
  std::vector<float> poisoned;
  {
    fathom::memory::PoisonNewBuffers poison;
    poisoned = run();
  }
  for (float v : plain) REQUIRE(std::isfinite(v));
  CHECK(poisoned == plain);
}

TEST_CASE("linear_fp8 on an input quantized once equals separate quantizations",
          "[autograd][ops][fp8]") {
  // q, k and v (or gate and up) read one input: quantizing it once must change nothing.
  auto run = [](bool shared) {
    return fathom::test::linear_fp8_two_layers<float, Cpu>(shared, 3, 5, 16, 8, 6, 41);
  };
  const auto separate = run(false), shared = run(true);
  for (float v : separate) REQUIRE(std::isfinite(v));
  CHECK(shared == separate);
}

TEST_CASE("linear_fp8 with a residual equals linear_fp8 plus scale * r: values and gradients",
          "[autograd][ops][fp8]") {
  const double scale = GENERATE(1.0, 0.5);
  INFO("scale " << scale);
  auto run = [&](bool fused) {
    fathom::test::FreshTape tape;
    Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{6, 16}, 51), true);
    Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{8, 16}, 52), true);
    Var<float, Cpu> b(Tensor<float, Cpu>::randn(Shape{8}, 53), true);
    Var<float, Cpu> r(Tensor<float, Cpu>::randn(Shape{6, 8}, 54), true);
    Var<float, Cpu> y =
        fused ? ag::linear_fp8(x, w, &b, static_cast<const ag::Fp8LinearScaling<Cpu>*>(nullptr),
                               ag::Residual<float, Cpu>{&r, scale})
              : r * scale + ag::linear_fp8(x, w, &b);
    fathom::autograd::backward(y, Tensor<float, Cpu>::randn(Shape{6, 8}, 55));
    return std::vector<std::vector<float>>{y.value().to_vector(), x.grad().to_vector(),
                                           w.grad().to_vector(), b.grad().to_vector(),
                                           r.grad().to_vector()};
  };
  const auto fused = run(true), plain = run(false);
  for (std::size_t t = 0; t < fused.size(); ++t) {
    INFO("tensor " << t << " (value, dx, dw, db, dr)");
    REQUIRE(fused[t].size() == plain[t].size());
    for (std::size_t i = 0; i < fused[t].size(); ++i) {
      REQUIRE(std::isfinite(fused[t][i]));
      // One rounding of the sum against two (the value); the gradients are the same products.
      CHECK_THAT(fused[t][i], WithinAbs(plain[t][i], 1e-5 * (1 + std::abs(plain[t][i]))));
    }
  }
}

TEST_CASE("swiglu_mlp_fp8 gives the bits of linear_fp8, swiglu_stacked, linear_fp8 in float",
          "[autograd][ops][fp8]") {
  // In float nothing is rounded between SwiGLU and the quantize passes in the composition either,
  // so fusing them changes no bit: values, every gradient, and the four amax histories.
  const bool delayed = GENERATE(false, true);
  const double residual = GENERATE(0.0, 1.0, 0.5);
  const int steps = delayed ? 3 : 1;
  INFO((delayed ? "delayed" : "current") << " scaling, residual scale " << residual);
  const auto fused = fathom::test::swiglu_mlp_fp8_case<float, Cpu>(true, delayed, steps, residual,
                                                                   2, 5, 16, 24, 61);
  const auto plain = fathom::test::swiglu_mlp_fp8_case<float, Cpu>(false, delayed, steps, residual,
                                                                   2, 5, 16, 24, 61);
  REQUIRE(fused.size() == plain.size());
  for (float v : fused) REQUIRE(std::isfinite(v));
  CHECK(fused == plain);
}

TEST_CASE("swiglu_mlp_fp8 in bf16 stays within fp8's noise of the composition",
          "[autograd][ops][fp8]") {
  // bf16: the composition rounds silu(gate) * up and its gradient to bf16 before quantizing them;
  // the fused op quantizes the float values, so some codes move by a step (an E5M2 step is 12.5
  // to 25% of a gradient element). Both are fp8 roundings of the same values: their results differ
  // by fp8's noise (4.2% relative, in norm, with delayed scaling over these two steps), not by a
  // wrong element (a swapped gate and up, or a misplaced column, gives ~100%).
  const bool delayed = GENERATE(false, true);
  INFO((delayed ? "delayed" : "current") << " scaling");
  const auto fused =
      fathom::test::swiglu_mlp_fp8_case<bf16, Cpu>(true, delayed, 2, 1.0, 2, 8, 16, 32, 71);
  const auto plain =
      fathom::test::swiglu_mlp_fp8_case<bf16, Cpu>(false, delayed, 2, 1.0, 2, 8, 16, 32, 71);
  REQUIRE(fused.size() == plain.size());
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < fused.size(); ++i) {
    REQUIRE(std::isfinite(fused[i]));
    err += std::pow(static_cast<double>(fused[i]) - plain[i], 2);
    norm += std::pow(static_cast<double>(plain[i]), 2);
  }
  CHECK(fused != plain);  // the roundings really differ
  INFO("relative difference " << std::sqrt(err / norm));
  CHECK(std::sqrt(err / norm) < 0.1);
}

TEST_CASE("swiglu_mlp_fp8 names mismatched shapes", "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{3, 16}, 1), true);
  Var<float, Cpu> gate_up(Tensor<float, Cpu>::randn(Shape{48, 16}, 2), true);
  Var<float, Cpu> down(Tensor<float, Cpu>::randn(Shape{16, 20}, 3), true);
  CHECK_THROWS_WITH(ag::swiglu_mlp_fp8(x, gate_up, down),
                    HasSubstring("do not fit x (..., C), gate_up (2F, C), down (C, F)"));
}

TEST_CASE("Llama's MLP under fp8 is swiglu_mlp_fp8: the composition's bits in float", "[nn][fp8]") {
  auto model = small_lm<fathom::nn::Llama>();
  model->set_linear_precision(fathom::nn::LinearPrecision::fp8);
  const auto& mlp = model->model().blocks().front().mlp();
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{2, 16, 32}, 81), true);
  Var<float, Cpu> r(Tensor<float, Cpu>::randn(Shape{2, 16, 32}, 82), true);
  const auto fused = mlp.forward(x, ag::Residual<float, Cpu>{&r, 1.0}).value().to_vector();
  const Var<float, Cpu> gu = ag::linear_fp8(
      x, ag::concat_rows<float, Cpu>({mlp.gate_proj().weight(), mlp.up_proj().weight()}));
  const auto plain = ag::linear_fp8(ag::swiglu_stacked(gu), mlp.down_proj().weight(), nullptr,
                                    static_cast<const ag::Fp8LinearScaling<Cpu>*>(nullptr),
                                    ag::Residual<float, Cpu>{&r, 1.0});
  for (float v : fused) REQUIRE(std::isfinite(v));
  CHECK(fused == plain.value().to_vector());
}

TEST_CASE("Llama's MLP under fp8 with biases keeps linear_fp8, swiglu_stacked, linear_fp8",
          "[nn][fp8]") {
  // swiglu_mlp_fp8 takes no biases: a Llama configured with them runs the composition.
  auto c = fathom::test::small_model(2, 32, 64, 16);
  c.arch = fathom::nn::ArchKind::llama;
  c.bias = true;
  c.vocab = 50;
  fathom::nn::DecoderModel<fathom::nn::Llama, fathom::policy::PreLN, float, Cpu> model(
      c, fathom::policy::PreLN{});
  model.init(5);
  model.set_linear_precision(fathom::nn::LinearPrecision::fp8);
  const auto& mlp = model.model().blocks().front().mlp();
  REQUIRE(mlp.up_proj().has_bias());
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{2, 16, 32}, 83), true);
  const auto got = mlp.forward(x).value().to_vector();
  const Var<float, Cpu> w =
      ag::concat_rows<float, Cpu>({mlp.gate_proj().weight(), mlp.up_proj().weight()});
  const Var<float, Cpu> b =
      ag::concat_rows<float, Cpu>({mlp.gate_proj().bias(), mlp.up_proj().bias()});
  const Var<float, Cpu> h = ag::swiglu_stacked(ag::linear_fp8(x, w, &b));
  const auto want = ag::linear_fp8(h, mlp.down_proj().weight(), &mlp.down_proj().bias());
  for (float v : got) REQUIRE(std::isfinite(v));
  CHECK(got == want.value().to_vector());
}

TEST_CASE("linear_fp8 refuses an input quantized without the copy its weight gradient needs",
          "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{4, 16}, 1), true);
  Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{8, 16}, 2), true);
  const auto xq = ag::quantize_fp8_input(x, /*transposed=*/false);
  CHECK_THROWS_WITH(ag::linear_fp8(xq, w), HasSubstring("quantized without its transposed copy"));
}

TEST_CASE("linear_fp8 with delayed scaling: the first step is current scaling, then the history",
          "[autograd][ops][fp8]") {
  fathom::test::FreshTape tape;
  const auto xv = Tensor<float, Cpu>::randn(Shape{6, 16}, 41);
  Var<float, Cpu> w(Tensor<float, Cpu>::randn(Shape{8, 16}, 42), true);
  const auto seed = Tensor<float, Cpu>::randn(Shape{6, 8}, 43);
  auto max_abs = [](const Tensor<float, Cpu>& t) {
    float m = 0;
    for (float v : t.to_vector()) m = std::max(m, std::abs(v));
    return m;
  };
  auto run = [&](const Tensor<float, Cpu>& input, const ag::Fp8LinearScaling<Cpu>* scaling) {
    Var<float, Cpu> x(input, true);
    w.zero_grad();
    auto y = ag::linear_fp8(x, w, nullptr, scaling);
    ag::backward(y, seed);
    return std::make_tuple(y.value().to_vector(), x.grad().to_vector(), w.grad().to_vector());
  };
  ag::Fp8LinearScaling<Cpu> delayed{std::make_shared<ag::Fp8History<Cpu>>(4),
                                    std::make_shared<ag::Fp8History<Cpu>>(4)};
  const auto current = run(xv, nullptr);
  // Step 1: no history yet, so each tensor is scaled by its own amax, as current scaling does.
  CHECK(run(xv, &delayed) == current);
  CHECK(delayed.input->uses() == 1);
  CHECK(delayed.grad_output->uses() == 1);
  CHECK(delayed.input->amax().to_vector() == std::vector<float>{max_abs(xv), 0, 0, 0});
  CHECK(delayed.grad_output->amax().to_vector() == std::vector<float>{max_abs(seed), 0, 0, 0});
  // Step 2, the same tensors: the history's amax is their own, so again the same results.
  CHECK(run(xv, &delayed) == current);
  CHECK(delayed.input->amax().to_vector() == std::vector<float>{max_abs(xv), max_abs(xv), 0, 0});
  // Step 3, x doubled: scaled by the history (x's old amax), its larger half saturates, unlike
  // current scaling by its own amax; the new amax is recorded.
  const auto doubled = scaled(xv, 2.0f);
  const auto y_delayed = std::get<0>(run(doubled, &delayed));
  const auto y_current = std::get<0>(run(doubled, nullptr));
  CHECK(y_delayed != y_current);
  CHECK(delayed.input->uses() == 3);
  CHECK(delayed.input->amax().to_vector()[2] == 2 * max_abs(xv));
  CHECK(delayed.input->amax().to_vector()[3] == 0.0f);  // cleared for step 4
  // Without gradients (evaluation) the history is read, not written.
  {
    fathom::autograd::NoGradGuard no_grad;
    Var<float, Cpu> x(doubled, false);
    const auto before = delayed.input->amax().to_vector();
    (void)ag::linear_fp8(x, w, nullptr, &delayed);
    CHECK(delayed.input->uses() == 3);
    CHECK(delayed.input->amax().to_vector() == before);
  }
  // Step 4 writes slot 3 and clears slot 0 (the ring wraps).
  run(xv, &delayed);
  CHECK(delayed.input->amax().to_vector() ==
        std::vector<float>{0, max_abs(xv), 2 * max_abs(xv), max_abs(xv)});
}

TEST_CASE("Fp8History state round trip; bad lengths and states are refused", "[autograd][fp8]") {
  ag::Fp8History<Cpu> h(5);
  CHECK(h.state().to_vector() == std::vector<float>{0, 0, 0, 0, 0, -1});
  const auto x = Tensor<float, Cpu>::randn(Shape{3, 4}, 7);
  for (int i = 0; i < 7; ++i)
    (void)h.quantize<fp8_e4m3>(scaled(x, float(i + 1)), 3, 4, true, false, true);
  const auto s = h.state();
  CHECK(s.to_vector().back() == 2.0f);  // 7 uses: slot 7 % 5 is next
  ag::Fp8History<Cpu> g(5);
  g.load_state(s, "test");
  CHECK(g.amax().to_vector() == h.amax().to_vector());
  CHECK(g.uses() % 5 == 2);
  // The next quantization gives the same codes, scale and history in both.
  const auto a = h.quantize<fp8_e4m3>(x, 3, 4, true, true, true);
  const auto b = g.quantize<fp8_e4m3>(x, 3, 4, true, true, true);
  CHECK(a.scale.to_vector()[0] == b.scale.to_vector()[0]);
  for (std::int64_t i = 0; i < 12; ++i) CHECK(a.codes.data()[i].bits == b.codes.data()[i].bits);
  CHECK(g.amax().to_vector() == h.amax().to_vector());

  CHECK_THROWS_WITH(ag::Fp8History<Cpu>(2), HasSubstring("3 to 256 entries, got 2"));
  CHECK_THROWS_WITH(g.load_state(Tensor<float, Cpu>::zeros(Shape{4}), "ckpt"),
                    HasSubstring("ckpt: an fp8 amax history of 5 entries is stored as 6 floats"));
  auto bad = s.to_vector();
  bad.back() = 5.0f;
  CHECK_THROWS_WITH(g.load_state(Tensor<float, Cpu>::from_vector(Shape{6}, bad), "ckpt"),
                    HasSubstring("position 5 is neither -1 nor a slot in [0, 5)"));
}

TEST_CASE("Fp8History::move_into keeps the ring in a slice of a shared buffer", "[autograd][fp8]") {
  const auto x = Tensor<float, Cpu>::randn(Shape{3, 4}, 5);
  ag::Fp8History<Cpu> moved(4), alone(4);
  (void)moved.quantize<fp8_e4m3>(x, 3, 4, true, false, true);
  (void)alone.quantize<fp8_e4m3>(x, 3, 4, true, false, true);
  auto buffer = Tensor<float, Cpu>::full(Shape{10}, -7.0f);
  moved.move_into(buffer.slice(0, 3, 7));  // the ring so far is copied there
  CHECK(buffer.to_vector() ==
        std::vector<float>{-7, -7, -7, moved.amax().to_vector()[0], 0, 0, 0, -7, -7, -7});
  // Later quantizations record into the buffer, and scale as the history that was not moved.
  const auto doubled = scaled(x, 2.0f);
  const auto a = moved.quantize<fp8_e4m3>(doubled, 3, 4, true, false, true);
  const auto b = alone.quantize<fp8_e4m3>(doubled, 3, 4, true, false, true);
  CHECK(a.scale.to_vector()[0] == b.scale.to_vector()[0]);
  CHECK(buffer.slice(0, 3, 7).to_vector() == alone.amax().to_vector());
  // A value written into the buffer (a reduction over ranks) is what the next pass scales by.
  buffer.data()[3] = 64.0f;
  const auto c = moved.quantize<fp8_e4m3>(x, 3, 4, true, false, true);
  CHECK(c.scale.to_vector()[0] == 64.0f / 448.0f);
  // load_state restores into the buffer, not into a new tensor.
  moved.load_state(alone.state(), "test");
  CHECK(buffer.slice(0, 3, 7).to_vector() == alone.amax().to_vector());
  CHECK(buffer.to_vector()[0] == -7.0f);
  CHECK_THROWS_WITH(moved.move_into(Tensor<float, Cpu>::zeros(Shape{5})),
                    HasSubstring("expected 4 contiguous floats, got shape"));
}

TEST_CASE("Fp8History margin: the scale is 2^margin below the history's, so a doubled tensor fits",
          "[autograd][fp8]") {
  const auto x = Tensor<float, Cpu>::randn(Shape{5, 8}, 11);
  const auto doubled = scaled(x, 2.0f);
  ag::Fp8History<Cpu> plain(4), margin1(4, 1), margin2(4, 2);
  CHECK(margin1.margin() == 1);
  // The first quantization scales by x's own amax (with the margin), and starts the histories.
  for (ag::Fp8History<Cpu>* h : {&plain, &margin1, &margin2})
    (void)h->quantize<fp8_e4m3>(x, 5, 8, true, false, true);
  // The next, of 2x: every history holds x's amax, so plain scaling saturates the larger half.
  const auto a = plain.quantize<fp8_e4m3>(doubled, 5, 8, true, false, true);
  const auto b = margin1.quantize<fp8_e4m3>(doubled, 5, 8, true, false, true);
  const auto c = margin2.quantize<fp8_e4m3>(doubled, 5, 8, true, false, true);
  const float inv_a = a.scale.to_vector()[0], inv_b = b.scale.to_vector()[0];
  CHECK(inv_b == 2 * inv_a);  // scale_inv: dequantization factor, 2^margin larger
  CHECK(c.scale.to_vector()[0] == 4 * inv_a);
  // Within E4M3's relative error (3 mantissa bits: 2^-4) or, among its subnormals, half their
  // spacing (2^-10 before scaling back); a saturated element is far outside it.
  auto represented = [](float code, float inv, float v) {
    return std::abs(code * inv - v) <= 0.0625f * std::abs(v) + 0.001f * inv;
  };
  int saturated_plain = 0, saturated_margin = 0;
  const auto dv = doubled.to_vector();
  for (std::size_t i = 0; i < dv.size(); ++i) {
    saturated_plain += !represented(static_cast<float>(a.codes.data()[i]), inv_a, dv[i]);
    saturated_margin += !represented(static_cast<float>(b.codes.data()[i]), inv_b, dv[i]);
  }
  CHECK(saturated_plain > 0);
  CHECK(saturated_margin == 0);
  CHECK_THROWS_WITH(ag::Fp8History<Cpu>(4, 9), HasSubstring("margin is 0 to 8 binades, got 9"));
  CHECK_THROWS_WITH(ag::Fp8History<Cpu>(4, -1), HasSubstring("got -1"));
}

TEMPLATE_TEST_CASE("DecoderLM with delayed fp8 scaling names its histories and fills them",
                   "[nn][fp8]", fathom::nn::Llama, fathom::nn::Gpt2) {
  using Arch = TestType;
  fathom::test::FreshTape tape;
  const bool gpt2 = Arch::kind == fathom::nn::ArchKind::gpt2;
  auto owned = small_lm<Arch>();
  auto& model = *owned;
  const auto [x, y] = token_batch();

  model.set_linear_precision(fathom::nn::LinearPrecision::fp8);
  CHECK(model.fp8_histories().empty());  // current scaling keeps none
  model.set_linear_precision(fathom::nn::LinearPrecision::fp8,
                             {.scaling = fathom::nn::Fp8Scaling::delayed, .history = 8});
  CHECK(model.fp8_recipe().scaling == fathom::nn::Fp8Scaling::delayed);
  const auto histories = model.fp8_histories();
  // Two blocks of four GEMMs (q/k/v, output, gate/up or c_fc, down or c_proj), two each.
  REQUIRE(histories.size() == 16);
  const std::string first =
      gpt2 ? "transformer.h.0.attn.c_attn" : "model.layers.0.self_attn.q_proj";
  CHECK(histories[0].first == first + ".fp8_input");
  CHECK(histories[1].first == first + ".fp8_grad_output");
  for (const auto& [name, h] : histories) {
    INFO(name);
    CHECK(h->length() == 8);
    CHECK(h->uses() == 0);
  }
  ag::backward(model.loss(x, y));
  for (const auto& [name, h] : histories) {
    INFO(name);
    CHECK(h->uses() == 1);
    CHECK(h->amax().to_vector()[0] > 0.0f);
  }
  model.set_linear_precision(fathom::nn::LinearPrecision::native);
  CHECK(model.fp8_histories().empty());
}
