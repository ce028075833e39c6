// Optimizer rules against updates computed by hand over several steps, mixed-precision master
// weights, parameter groups, and learning-rate schedules.
#include <cmath>
#include <vector>

#include "fathom/optim/optimizer.hpp"
#include "fathom/optim/schedule.hpp"
#include "support/catch.hpp"

using namespace fathom;
using fathom::optim::NamedParameter;

namespace {

template <class T>
Var<T> param_of(std::vector<double> values, const std::string& = "w") {
  std::vector<T> v;
  for (double x : values) v.push_back(scalar_cast<T>(x));
  return Var<T>(Tensor<T>::from_vector({static_cast<std::int64_t>(v.size())}, v), true);
}

template <class T>
void set_grad(Var<T>& p, const std::vector<double>& g) {
  auto& acc = p.grad_accumulator();
  for (std::size_t i = 0; i < g.size(); ++i) acc.data()[i] = scalar_cast<T>(g[i]);
}

// The gradient sequence the tests feed: three steps, signs and sizes varied.
const std::vector<std::vector<double>> kGrads = {
    {0.5, -1.0, 2.0}, {-0.25, 0.75, 1.5}, {1.0, 0.1, -3.0}};
const std::vector<double> kInit = {0.3, -0.7, 1.1};

}  // namespace

TEST_CASE("sgd: plain, momentum and nesterov match hand-computed updates", "[optim]") {
  for (int variant = 0; variant < 3; ++variant) {
    const double lr = 0.1, mu = 0.9;
    optim::Sgd rule;
    rule.momentum = variant == 0 ? 0.0 : mu;
    rule.nesterov = variant == 2;
    auto w = param_of<double>(kInit);
    optim::Optimizer<optim::Sgd, double, Cpu> opt(rule, {{"layer.weight", w}});
    std::vector<double> ref = kInit, buf(3, 0.0);
    for (std::size_t s = 0; s < kGrads.size(); ++s) {
      set_grad(w, kGrads[s]);
      opt.step(lr);
      w.zero_grad();
      for (int i = 0; i < 3; ++i) {
        double g = kGrads[s][static_cast<std::size_t>(i)];
        double& b = buf[static_cast<std::size_t>(i)];
        if (variant == 0) {
          ref[static_cast<std::size_t>(i)] -= lr * g;
        } else {
          b = s == 0 ? g : mu * b + g;
          ref[static_cast<std::size_t>(i)] -= lr * (variant == 2 ? g + mu * b : b);
        }
      }
      auto got = w.value().to_vector();
      for (int i = 0; i < 3; ++i)
        CHECK_THAT(got[static_cast<std::size_t>(i)],
                   WithinAbs(ref[static_cast<std::size_t>(i)], 1e-12));
    }
  }
}

TEST_CASE("adam and adamw match the update rule written out by hand", "[optim]") {
  for (bool decoupled : {false, true}) {
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    optim::AdamW rule;
    rule.weight_decay = wd;
    rule.decoupled = decoupled;
    auto w = param_of<double>(kInit);
    optim::Optimizer<optim::AdamW, double, Cpu> opt(rule, {{"layer.weight", w}},
                                                    [](const std::string&, int) { return true; });
    std::vector<double> ref = kInit, m(3, 0.0), v(3, 0.0);
    for (std::size_t s = 0; s < kGrads.size(); ++s) {
      set_grad(w, kGrads[s]);
      opt.step(lr);
      w.zero_grad();
      const double t = static_cast<double>(s + 1);
      for (std::size_t i = 0; i < 3; ++i) {
        double g = kGrads[s][i];
        if (!decoupled) g += wd * ref[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
        if (decoupled) ref[i] -= lr * wd * ref[i];
        ref[i] -= lr * mhat / (std::sqrt(vhat) + eps);
      }
      auto got = w.value().to_vector();
      for (std::size_t i = 0; i < 3; ++i) CHECK_THAT(got[i], WithinAbs(ref[i], 1e-12));
    }
  }
}

TEST_CASE("grad_scale multiplies gradients before the update", "[optim]") {
  auto a = param_of<double>(kInit), b = param_of<double>(kInit);
  optim::Optimizer<optim::Sgd, double, Cpu> oa(optim::Sgd{}, {{"a", a}}),
      ob(optim::Sgd{}, {{"b", b}});
  set_grad(a, kGrads[0]);
  std::vector<double> half;
  for (double g : kGrads[0]) half.push_back(0.5 * g);
  set_grad(b, half);
  oa.step(0.1, 0.5);
  ob.step(0.1);
  auto va = a.value().to_vector(), vb = b.value().to_vector();
  for (std::size_t i = 0; i < 3; ++i) CHECK_THAT(va[i], WithinAbs(vb[i], 1e-15));
}

TEST_CASE("bf16 parameters keep fp32 master weights so small updates are not lost", "[optim]") {
  // 1.0 in bf16 has spacing 2^-7; updates of 1e-4 vanish when applied to bf16 directly.
  auto w = param_of<bf16>({1.0, 1.0, 1.0});
  optim::Optimizer<optim::Sgd, bf16, Cpu> opt(optim::Sgd{}, {{"w", w}});
  for (int s = 0; s < 100; ++s) {
    set_grad(w, {1.0, 1.0, 1.0});
    opt.step(1e-4);
    w.zero_grad();
  }
  auto state = opt.named_state();
  const Tensor<float>* master = nullptr;
  for (auto& [name, t] : state)
    if (name == "w.master") master = t;
  REQUIRE(master != nullptr);
  CHECK_THAT(static_cast<double>(master->to_vector()[0]), WithinAbs(1.0 - 100 * 1e-4, 1e-5));
  // The bf16 copy is the master rounded to nearest.
  CHECK(static_cast<float>(w.value().to_vector()[0]) ==
        static_cast<float>(bf16(master->to_vector()[0])));
  CHECK(static_cast<float>(w.value().to_vector()[0]) < 1.0f);
}

TEST_CASE("parameter groups: no decay on norms, biases and embeddings by default", "[optim]") {
  CHECK(optim::decays_by_default("model.layers.0.self_attn.q_proj.weight", 2));
  CHECK(optim::decays_by_default("lm_head.weight", 2));
  CHECK_FALSE(optim::decays_by_default("model.layers.0.input_layernorm.weight", 1));
  CHECK_FALSE(optim::decays_by_default("transformer.h.0.attn.c_attn.bias", 1));
  CHECK_FALSE(optim::decays_by_default("model.embed_tokens.weight", 2));
  CHECK_FALSE(optim::decays_by_default("transformer.wpe.weight", 2));

  // And the optimizer applies it: with zero gradients only decayed tensors move.
  optim::AdamW rule;
  rule.weight_decay = 0.5;
  Var<double> mat(Tensor<double>::full({2, 2}, 1.0), true),
      norm(Tensor<double>::full({2}, 1.0), true);
  optim::Optimizer<optim::AdamW, double, Cpu> opt(
      rule, {{"block.proj.weight", mat}, {"block.norm.weight", norm}});
  mat.grad_accumulator();
  norm.grad_accumulator();
  opt.step(0.1);
  CHECK_THAT(mat.value().to_vector()[0], WithinAbs(1.0 - 0.1 * 0.5, 1e-12));
  CHECK(norm.value().to_vector()[0] == 1.0);
}

TEST_CASE("optimizer skips parameters that received no gradient", "[optim]") {
  auto a = param_of<double>(kInit), b = param_of<double>(kInit);
  optim::Optimizer<optim::Sgd, double, Cpu> opt(optim::Sgd{}, {{"a", a}, {"b", b}});
  set_grad(a, kGrads[0]);
  opt.step(0.1);
  CHECK(b.value().to_vector() == kInit);
  CHECK(a.value().to_vector() != kInit);
}

TEST_CASE("schedules: warmup-cosine and warmup-stable-decay", "[optim]") {
  optim::WarmupCosine cos{10, 110, 0.1};
  CHECK_THAT(cos.factor(0), WithinAbs(0.1, 1e-12));
  CHECK_THAT(cos.factor(9), WithinAbs(1.0, 1e-12));
  CHECK_THAT(cos.factor(10), WithinAbs(1.0, 1e-12));
  CHECK_THAT(cos.factor(60), WithinAbs(0.1 + 0.9 * 0.5, 1e-12));  // half way: cos(pi/2) = 0
  CHECK_THAT(cos.factor(110), WithinAbs(0.1, 1e-12));
  CHECK_THAT(cos.factor(500), WithinAbs(0.1, 1e-12));
  for (std::int64_t s = 10; s < 110; ++s) CHECK(cos.factor(s + 1) <= cos.factor(s) + 1e-15);

  optim::WarmupStableDecay wsd{5, 50, 100, 0.0};
  CHECK_THAT(wsd.factor(4), WithinAbs(1.0, 1e-12));
  CHECK_THAT(wsd.factor(30), WithinAbs(1.0, 1e-12));
  CHECK_THAT(wsd.factor(75), WithinAbs(0.5, 1e-12));
  CHECK_THAT(wsd.factor(100), WithinAbs(0.0, 1e-12));
  CHECK_THROWS_AS((optim::WarmupCosine{20, 10, 0.1}.factor(0)), Error);
  CHECK(optim::ConstantSchedule{}.factor(123) == 1.0);
}
