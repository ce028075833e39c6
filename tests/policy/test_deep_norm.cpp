// DeepNorm: N(alpha x + F(x)) with alpha = (2L)^(1/4), beta = (8L)^(-1/4) on exactly v, the
// attention out-projection and every MLP weight (gain 1 on q, k); both settable.
#include "fathom/policy/deep_norm.hpp"

#include <cmath>
#include <string>

#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("DeepNorm: alpha and beta from the DeepNet formulas", "[policy]") {
  struct Row {
    int depth;
    double alpha, beta;
  };
  // (2L)^(1/4) and (8L)^(-1/4), worked out independently.
  for (auto r : {Row{6, 1.8612097182041991, 0.37991784282579627},
                 Row{12, 2.213363839400643, 0.3194715521231362},
                 Row{24, 2.6321480259049848, 0.2686424829558855}}) {
    INFO("L = " << r.depth);
    policy::DeepNorm p;
    CHECK_THAT(p.alpha_for(r.depth), WithinRel(r.alpha, 1e-15));
    CHECK_THAT(p.beta_for(r.depth), WithinRel(r.beta, 1e-15));
    CHECK_THAT(p.init().beta_for(r.depth), WithinRel(r.beta, 1e-15));
  }
}

TEST_CASE("DeepNorm: N(alpha x + F(x)), alpha settable", "[policy]") {
  const int depth = 12;
  {
    testing::FakeSublayer fake(51);
    auto s = fake.context(3, depth);
    auto y = policy::DeepNorm{}.apply(s);
    testing::require_close(y.value().to_vector(), fake.x_times(10.0 * (2.213363839400643 + 3.0)));
    REQUIRE(fake.norm_calls.size() == 1);
    CHECK(fake.norm_calls[0].scale == 1.0);
  }
  {
    // The Curse of Depth authors' deviating baseline: alpha fixed at 2.828.
    testing::FakeSublayer fake(52);
    auto s = fake.context(3, depth);
    auto y = policy::DeepNorm{.alpha = 2.828}.apply(s);
    testing::require_close(y.value().to_vector(), fake.x_times(10.0 * (2.828 + 3.0)));
  }
  policy::DeepNorm inverted{.alpha = 2.828, .beta = std::pow(8.0 * depth, 0.25)};
  CHECK(inverted.alpha_for(depth) == 2.828);
  CHECK_THAT(inverted.init().beta_for(depth), WithinRel(std::pow(96.0, 0.25), 1e-15));
}

TEST_CASE("DeepNormInit: Xavier-normal std with gain beta on v, out-proj and MLP, 1 on q and k",
          "[policy]") {
  policy::DeepNormInit init;  // beta from depth
  const double beta = std::pow(8.0 * 6, -0.25);
  auto spec = [&](policy::ParamRole role, std::int64_t in, std::int64_t out) {
    return init.spec(policy::ParamInfo{role, 2, 6, in, out});
  };
  using policy::ParamRole;
  CHECK_THAT(spec(ParamRole::q, 64, 64).std, WithinRel(std::sqrt(2.0 / 128), 1e-15));
  CHECK_THAT(spec(ParamRole::k, 64, 64).std, WithinRel(std::sqrt(2.0 / 128), 1e-15));
  CHECK_THAT(spec(ParamRole::v, 64, 64).std, WithinRel(beta * std::sqrt(2.0 / 128), 1e-15));
  CHECK_THAT(spec(ParamRole::attn_out, 64, 64).std, WithinRel(beta * std::sqrt(2.0 / 128), 1e-15));
  CHECK_THAT(spec(ParamRole::mlp_gate, 64, 176).std, WithinRel(beta * std::sqrt(2.0 / 240), 1e-15));
  CHECK_THAT(spec(ParamRole::mlp_up, 64, 176).std, WithinRel(beta * std::sqrt(2.0 / 240), 1e-15));
  CHECK_THAT(spec(ParamRole::mlp_down, 176, 64).std, WithinRel(beta * std::sqrt(2.0 / 240), 1e-15));
  CHECK(spec(ParamRole::embedding, 100, 64).std == 0.02);
  CHECK(spec(ParamRole::norm_weight, 0, 0).kind == policy::InitSpec::Kind::constant);
  CHECK(spec(ParamRole::norm_weight, 0, 0).value == 1.0);
  CHECK(spec(ParamRole::bias, 0, 0).value == 0.0);
}

// Which weights beta scales, read off an initialized model: the same seed with beta and with
// beta = 1 draws the same normals, so each element's ratio is beta where beta applies and 1
// elsewhere.
TEMPLATE_TEST_CASE("DeepNorm model: beta scales exactly v, out-proj and MLP weights",
                   "[policy][nn]", nn::Llama, nn::Gpt2) {
  auto c = testing::tiny_config(TestType::kind, 6);
  const double beta = std::pow(8.0 * 6, -0.25);
  nn::DecoderLM<TestType, policy::DeepNorm, double> scaled(c),
      unit(c, policy::DeepNorm{.beta = 1.0});
  scaled.init(9);
  unit.init(9);

  auto ratio_rows = [&](const std::string& name, std::int64_t row_begin, std::int64_t row_end) {
    const auto* a = scaled.find(name);
    const auto* b = unit.find(name);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    auto av = a->var.value().slice(0, row_begin, row_end).contiguous().to_vector();
    auto bv = b->var.value().slice(0, row_begin, row_end).contiguous().to_vector();
    double lo = 1e300, hi = -1e300;
    for (std::size_t i = 0; i < av.size(); ++i) {
      REQUIRE(bv[i] != 0.0);
      lo = std::min(lo, av[i] / bv[i]);
      hi = std::max(hi, av[i] / bv[i]);
    }
    CHECK_THAT(hi - lo, WithinAbs(0.0, 1e-12));
    return lo;
  };
  auto whole = [&](const std::string& name) {
    const auto* p = scaled.find(name);
    REQUIRE(p != nullptr);
    return ratio_rows(name, 0, p->var.size(0));
  };

  const std::int64_t C = c.d_model;
  for (int i = 0; i < c.layers; ++i) {
    INFO("block " << i);
    const std::string b = std::to_string(i);
    if constexpr (TestType::kind == nn::ArchKind::llama) {
      const std::string p = "model.layers." + b + ".";
      CHECK_THAT(whole(p + "self_attn.q_proj.weight"), WithinRel(1.0, 1e-12));
      CHECK_THAT(whole(p + "self_attn.k_proj.weight"), WithinRel(1.0, 1e-12));
      CHECK_THAT(whole(p + "self_attn.v_proj.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "self_attn.o_proj.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "mlp.gate_proj.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "mlp.up_proj.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "mlp.down_proj.weight"), WithinRel(beta, 1e-12));
    } else {
      const std::string p = "transformer.h." + b + ".";
      CHECK_THAT(ratio_rows(p + "attn.c_attn.weight", 0, C), WithinRel(1.0, 1e-12));           // q
      CHECK_THAT(ratio_rows(p + "attn.c_attn.weight", C, 2 * C), WithinRel(1.0, 1e-12));       // k
      CHECK_THAT(ratio_rows(p + "attn.c_attn.weight", 2 * C, 3 * C), WithinRel(beta, 1e-12));  // v
      CHECK_THAT(whole(p + "attn.c_proj.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "mlp.c_fc.weight"), WithinRel(beta, 1e-12));
      CHECK_THAT(whole(p + "mlp.c_proj.weight"), WithinRel(beta, 1e-12));
    }
  }
  if constexpr (TestType::kind == nn::ArchKind::llama) {
    CHECK_THAT(whole("model.embed_tokens.weight"), WithinRel(1.0, 1e-12));
    CHECK_THAT(whole("lm_head.weight"), WithinRel(1.0, 1e-12));
  } else {
    CHECK_THAT(whole("transformer.wte.weight"), WithinRel(1.0, 1e-12));
    CHECK_THAT(whole("transformer.wpe.weight"), WithinRel(1.0, 1e-12));
  }
  // Everything else (norms, biases) is a constant that beta leaves alone.
  for (const auto& p : scaled.parameters()) {
    if (policy::is_branch_matrix(p.parts[0].role)) continue;
    auto role = p.parts[0].role;
    if (role == policy::ParamRole::norm_weight || role == policy::ParamRole::norm_bias ||
        role == policy::ParamRole::bias) {
      INFO(p.name);
      CHECK(p.var.value().to_vector() == unit.find(p.name)->var.value().to_vector());
    }
  }
}

TEST_CASE("DeepNorm model: q and v drawn with their Xavier std", "[policy][nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 6);
  c.d_model = 64;
  c.d_ff = 176;
  nn::DecoderLM<nn::Llama, policy::DeepNorm, double> m(c);
  m.init(10);
  auto sample_std = [&](const std::string& name) {
    auto v = m.find(name)->var.value().to_vector();
    double s = 0.0;
    for (double e : v) s += e * e;
    return std::sqrt(s / static_cast<double>(v.size()));
  };
  const double beta = std::pow(48.0, -0.25);
  // 4096 and 11264 samples: the sample std is within 5% of the true one with overwhelming odds.
  CHECK_THAT(sample_std("model.layers.2.self_attn.q_proj.weight"),
             WithinRel(std::sqrt(2.0 / 128), 0.05));
  CHECK_THAT(sample_std("model.layers.2.self_attn.v_proj.weight"),
             WithinRel(beta * std::sqrt(2.0 / 128), 0.05));
  CHECK_THAT(sample_std("model.layers.2.mlp.up_proj.weight"),
             WithinRel(beta * std::sqrt(2.0 / 240), 0.05));
}
