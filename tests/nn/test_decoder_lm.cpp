// DecoderLM: shapes, loss, reproducible init and logits, the parameter count of an instantiated
// model against count_parameters for every policy, observer sites, the skip mask, and its errors.
#include "fathom/nn/decoder_lm.hpp"

#include <cmath>
#include <string>
#include <tuple>

#include "fathom/nn/presets.hpp"
#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "nn/model_testing.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace fathom;
using fathom::test::error_of;

using Policies = std::tuple<policy::PreLN, policy::PostLN, policy::LNS, policy::DeepNorm,
                            policy::MixLN<>, policy::SandwichLN>;

TEMPLATE_LIST_TEST_CASE("DecoderLM: instantiated parameter count equals count_parameters", "[nn]",
                        Policies) {
  using Traits = policy::PolicyTraits<TestType>;
  for (auto name : {"tiny", "gpt2-tiny"}) {
    auto c = nn::preset(name);
    INFO(name);
    const auto want =
        nn::count_parameters(c, Traits::norms_per_sublayer, Traits::has_final_norm(TestType{}));
    if (c.arch == nn::ArchKind::llama)
      CHECK(nn::DecoderLM<nn::Llama, TestType>(c).num_parameters() == want);
    else
      CHECK(nn::DecoderLM<nn::Gpt2, TestType>(c).num_parameters() == want);
  }
  // Untied Llama with biases, tied GPT-2 without: the formula follows the switches.
  auto c = testing::tiny_config(nn::ArchKind::llama, 3);
  c.bias = true;
  c.tied = true;
  CHECK(nn::DecoderLM<nn::Llama, TestType>(c).num_parameters() ==
        nn::count_parameters(c, Traits::norms_per_sublayer, Traits::has_final_norm(TestType{})));
  auto g = testing::tiny_config(nn::ArchKind::gpt2, 3);
  g.bias = false;
  g.tied = false;
  CHECK(nn::DecoderLM<nn::Gpt2, TestType>(g).num_parameters() ==
        nn::count_parameters(g, Traits::norms_per_sublayer, Traits::has_final_norm(TestType{})));
}

TEMPLATE_TEST_CASE("DecoderLM: shapes, and a loss near log(V) at init", "[nn]", float, double,
                   bf16) {
  for (auto name : {"tiny", "gpt2-tiny"}) {
    INFO(name);
    auto c = nn::preset(name);
    auto tokens = testing::random_tokens(2, 16, c.vocab, 40);
    auto targets = testing::random_tokens(2, 16, c.vocab, 41);
    auto check = [&](auto model) {
      model.init(42);
      auto logits = model.forward(tokens);
      CHECK(logits.shape() == Shape{32, c.vocab});
      auto loss = model.loss(tokens, targets);
      STATIC_REQUIRE(std::is_same_v<typename decltype(loss)::value_type, accum_t<TestType>>);
      CHECK(loss.shape().numel() == 1);
      // Weights of std 0.02 give near-uniform predictions (GPT-2's tied head favours the input
      // token a little: its logit is about |wte row| * sqrt(C) = 1.3).
      CHECK_THAT(static_cast<double>(loss.value().item()),
                 WithinAbs(std::log(static_cast<double>(c.vocab)), 0.1));
    };
    if (c.arch == nn::ArchKind::llama)
      check(nn::DecoderLM<nn::Llama, policy::LNS, TestType>(c));
    else
      check(nn::DecoderLM<nn::Gpt2, policy::LNS, TestType>(c));
  }
}

TEST_CASE("DecoderLM: backward reaches every parameter", "[nn]") {
  auto c = nn::preset("gpt2-tiny");
  nn::DecoderLM<nn::Gpt2, policy::SandwichLN, float> m(c);
  m.init(43);
  auto tokens = testing::random_tokens(2, 8, c.vocab, 44);
  autograd::backward(m.loss(tokens, testing::random_tokens(2, 8, c.vocab, 45)));
  for (const auto& p : m.parameters()) {
    INFO(p.name);
    REQUIRE(p.var.has_grad());
    double s = 0.0;
    for (float g : p.var.grad().to_vector()) s += std::abs(g);
    CHECK(s > 0.0);
  }
  m.zero_grad();
  for (const auto& p : m.parameters()) {
    INFO(p.name);
    CHECK(testing::identical(p.var.grad(), Tensor<float>::zeros(p.var.shape())));
  }
}

TEST_CASE("DecoderLM: the same seed gives identical weights and logits, run after run", "[nn]") {
  auto c = nn::preset("tiny");
  auto tokens = testing::random_tokens(3, 12, c.vocab, 46);
  nn::DecoderLM<nn::Llama, policy::LNS, float> a(c), b(c), other(c);
  a.init(2024);
  b.init(2024);
  other.init(2025);
  for (std::size_t i = 0; i < a.parameters().size(); ++i) {
    INFO(a.parameters()[i].name);
    CHECK(testing::identical(a.parameters()[i].var.value(), b.parameters()[i].var.value()));
  }
  auto la = a.forward(tokens), lb = b.forward(tokens);
  CHECK(testing::identical(la.value(), lb.value()));
  CHECK(testing::identical(la.value(), a.forward(tokens).value()));  // the same model, again
  CHECK(testing::max_abs_diff(la.value(), other.forward(tokens).value()) > 1e-4);
  // Re-initializing with the first seed restores the first weights.
  other.init(2024);
  CHECK(testing::identical(la.value(), other.forward(tokens).value()));
}

TEST_CASE("DecoderLM: observer sites, in order", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, policy::PreLN, double> m(c);
  m.init(47);
  testing::Recorder<double> rec;
  m.forward(testing::random_tokens(2, 4, c.vocab, 48), rec.options());
  std::vector<std::pair<int, nn::Site>> want;
  using S = nn::Site;
  for (int i = 0; i < 2; ++i)
    for (S site : {S::block_input, S::attn_input, S::attn_branch, S::mlp_input, S::mlp_branch,
                   S::block_output})
      want.emplace_back(i, site);
  want.emplace_back(2, S::final_norm);
  CHECK(rec.order == want);
  CHECK(testing::identical(rec.at(1, nn::Site::block_input).value(),
                           rec.at(0, nn::Site::block_output).value()));
  CHECK(rec.at(0, nn::Site::attn_branch).shape() == Shape{2, 4, c.d_model});
}

TEMPLATE_TEST_CASE("DecoderLM: a skipped block passes its input through", "[nn]", nn::Llama,
                   nn::Gpt2) {
  auto c = testing::tiny_config(TestType::kind, 3);
  nn::DecoderLM<TestType, policy::PreLN, double> m(c), zeroed(c);
  m.init(49);
  zeroed.init(49);
  testing::randomize(m, 50);
  testing::randomize(zeroed, 50);
  auto tokens = testing::random_tokens(2, 4, c.vocab, 51);

  nn::ForwardOptions<double, Cpu> skip_middle;
  skip_middle.skip = {false, true};  // shorter than L: block 2 runs
  testing::Recorder<double> rec;
  auto observed = rec.options();
  skip_middle.observer = observed.observer;
  auto logits = m.forward(tokens, skip_middle);
  CHECK(testing::identical(rec.at(1, nn::Site::block_output).value(),
                           rec.at(1, nn::Site::block_input).value()));
  CHECK(rec.values.count({1, nn::Site::attn_branch}) == 0);
  CHECK_FALSE(testing::identical(rec.at(2, nn::Site::block_output).value(),
                                 rec.at(2, nn::Site::block_input).value()));

  // Under Pre-LN, skipping a block is the same as zeroing its branches' outputs.
  for (const auto* lin :
       {&zeroed.blocks()[1].attention().out_proj(), &zeroed.blocks()[1].mlp().down_proj()}) {
    auto w = lin->weight();
    w.mutable_value().zero_();
    if (lin->has_bias()) {
      auto b = lin->bias();
      b.mutable_value().zero_();
    }
  }
  CHECK(testing::max_abs_diff(logits.value(), zeroed.forward(tokens).value()) <= 1e-14);
  CHECK(testing::max_abs_diff(logits.value(), m.forward(tokens).value()) > 1e-6);
}

TEST_CASE("DecoderLM: errors name what was expected", "[nn]") {
  auto g = nn::preset("gpt2-tiny");
  auto msg = error_of([&] { nn::DecoderLM<nn::Llama, policy::PreLN> m(g); });
  CHECK(msg.find("llama") != std::string::npos);
  CHECK(msg.find("gpt2") != std::string::npos);

  auto c = testing::tiny_config(nn::ArchKind::gpt2, 1);
  nn::DecoderLM<nn::Gpt2, policy::PreLN> m(c);
  m.init(52);
  msg = error_of([&] { m.forward(testing::random_tokens(1, 5, c.vocab, 53)); });
  CHECK(msg.find("max_seq 4") != std::string::npos);
  msg = error_of([&] { m.forward(Tensor<std::int32_t>::zeros(Shape{8})); });
  CHECK(msg.find("(B, T)") != std::string::npos);
  msg = error_of([&] {
    m.loss(testing::random_tokens(2, 4, c.vocab, 54), testing::random_tokens(2, 3, c.vocab, 55));
  });
  CHECK(msg.find("same shape") != std::string::npos);
}

namespace {
// Asks for a norm slot it did not declare.
struct GreedyPolicy {
  template <class S>
  auto apply(S& s) const {
    return s.x + s.f(s.norm(1, s.x));
  }
};
}  // namespace

TEST_CASE("DecoderLM: a policy using an undeclared norm slot fails with the slot named", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 1);
  nn::DecoderLM<nn::Llama, GreedyPolicy> m(c);
  m.init(56);
  auto msg = error_of([&] { m.forward(testing::random_tokens(1, 4, c.vocab, 57)); });
  CHECK(msg.find("norm slot 1") != std::string::npos);
  CHECK(msg.find("norms_per_sublayer = 1") != std::string::npos);
}

namespace {
// Runs the branch twice: twice the cost, and not what the policy's author meant.
struct BranchTwice {
  template <class S>
  auto apply(S& s) const {
    return s.x + s.f(s.norm(0, s.x)) + s.f(s.x);
  }
};
struct ResidualThenBranch {
  template <class S>
  auto apply(S& s) const {
    auto first = s.residual(s.norm(0, s.x));
    return first + s.f(s.x);
  }
};
// Calls s.f once, which a policy may do in every sub-layer of every block.
struct BranchOnce {
  template <class S>
  auto apply(S& s) const {
    const auto branch = s.f(s.norm(0, s.x));
    return s.x + branch + branch * 0.5;
  }
};
}  // namespace

TEST_CASE(
    "DecoderLM: a policy calling the branch twice fails at its first forward, naming the sub-layer",
    "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, BranchTwice> twice(c);
  twice.init(58);
  auto msg = error_of([&] { twice.forward(testing::random_tokens(1, 4, c.vocab, 59)); });
  CHECK(msg.find("called the branch twice (s.f, then s.f) in the attention sub-layer of block 1") !=
        std::string::npos);
  nn::DecoderLM<nn::Llama, ResidualThenBranch> mixed(c);
  mixed.init(58);
  msg = error_of([&] { mixed.forward(testing::random_tokens(1, 4, c.vocab, 59)); });
  CHECK(msg.find("called the branch twice (s.residual, then s.f) in the attention sub-layer of "
                 "block 1") != std::string::npos);
  nn::DecoderLM<nn::Llama, BranchOnce> once(c);
  once.init(58);
  auto tokens = testing::random_tokens(1, 4, c.vocab, 59);
  CHECK(error_of([&] { once.forward(tokens); }).empty());
  CHECK(error_of([&] { once.forward(tokens); }).empty());  // the count is per call, not per model
}

TEMPLATE_TEST_CASE("DecoderLM: each parameter carries its block index", "[nn]", nn::Llama,
                   nn::Gpt2) {
  auto c = testing::tiny_config(TestType::kind, 3);
  nn::DecoderLM<TestType, policy::SandwichLN, float> m(c);
  std::vector<int> per_block(3, 0);
  int outside = 0;
  for (const auto& p : m.parameters()) {
    INFO(p.name);
    // The Hugging Face name holds the same index: model.layers.N. / transformer.h.N.
    const std::string key =
        TestType::kind == nn::ArchKind::llama ? "model.layers." : "transformer.h.";
    int from_name = -1;
    if (p.name.rfind(key, 0) == 0) from_name = std::stoi(p.name.substr(key.size()));
    CHECK(p.block() == from_name);
    if (p.block() >= 0)
      ++per_block.at(static_cast<std::size_t>(p.block()));
    else
      ++outside;
  }
  CHECK(per_block[0] == per_block[1]);
  CHECK(per_block[1] == per_block[2]);
  CHECK(per_block[0] > 0);
  CHECK(outside >= 2);  // embedding, final norm (and an untied head)
}

// Without an observer s.residual adds the stream in the branch's last GEMM (autograd::Residual);
// with one it composes s.f and the add. The two must give the same loss and gradients.
TEMPLATE_LIST_TEST_CASE("DecoderLM: the residual add fused into the branch equals it composed",
                        "[nn]", Policies) {
  for (auto arch : {nn::ArchKind::llama, nn::ArchKind::gpt2}) {
    INFO(nn::to_string(arch));
    auto c = testing::tiny_config(arch, 3);
    auto run = [&](auto model, bool observed) {
      model.init(60);
      testing::randomize(model, 61, 0.3);
      nn::ForwardOptions<double, Cpu> o;
      if (observed) o.observer = [](int, nn::Site, const Var<double>&) {};
      auto loss = model.loss(testing::random_tokens(2, 4, c.vocab, 62),
                             testing::random_tokens(2, 4, c.vocab, 63), o);
      autograd::backward(loss);
      std::vector<std::vector<double>> out{loss.value().to_vector()};
      for (const auto& p : model.parameters()) out.push_back(p.var.grad().to_vector());
      return out;
    };
    auto both = [&](auto make) {
      const auto fused = run(make(), false), composed = run(make(), true);
      REQUIRE(fused.size() == composed.size());
      for (std::size_t t = 0; t < fused.size(); ++t) {
        INFO("tensor " << t << " (the loss, then each parameter's gradient)");
        REQUIRE(fused[t].size() == composed[t].size());
        for (std::size_t i = 0; i < fused[t].size(); ++i)
          CHECK_THAT(fused[t][i], WithinAbs(composed[t][i], 1e-11));
      }
    };
    if (arch == nn::ArchKind::llama)
      both([&] { return nn::DecoderLM<nn::Llama, TestType, double>(c); });
    else
      both([&] { return nn::DecoderLM<nn::Gpt2, TestType, double>(c); });
  }
}
