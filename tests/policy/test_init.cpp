// Init policies: InitNormal (N(0, 0.02^2) matrices, norms 1, biases 0) and ScaledInit (out-proj
// and down-proj N(0, 0.02^2 / 2L)); a model's init is reproducible and name-keyed.
#include "fathom/policy/init_normal.hpp"
#include "fathom/policy/scaled_init.hpp"

#include <cmath>

#include "fathom/policy/pre_ln.hpp"
#include "nn/model_testing.hpp"
#include "support/catch.hpp"

using namespace fathom;
using policy::ParamInfo;
using policy::ParamRole;

TEST_CASE("InitNormal and ScaledInit specs", "[policy]") {
  policy::InitNormal normal;
  policy::ScaledInit scaled;
  const int depth = 12;
  for (auto role : {ParamRole::q, ParamRole::k, ParamRole::v, ParamRole::mlp_gate,
                    ParamRole::mlp_up, ParamRole::lm_head, ParamRole::embedding}) {
    INFO(policy::to_string(role));
    CHECK(normal.spec(ParamInfo{role, 3, depth, 64, 64}).std == 0.02);
    CHECK(scaled.spec(ParamInfo{role, 3, depth, 64, 64}).std == 0.02);
  }
  for (auto role : {ParamRole::attn_out, ParamRole::mlp_down}) {
    INFO(policy::to_string(role));
    CHECK(normal.spec(ParamInfo{role, 3, depth, 64, 64}).std == 0.02);
    CHECK_THAT(scaled.spec(ParamInfo{role, 3, depth, 64, 64}).std,
               WithinRel(0.02 / std::sqrt(24.0), 1e-15));
  }
  CHECK(normal.spec(ParamInfo{ParamRole::norm_weight, 3, depth, 0, 0}).value == 1.0);
  CHECK(normal.spec(ParamInfo{ParamRole::norm_bias, 3, depth, 0, 0}).value == 0.0);
  CHECK(scaled.spec(ParamInfo{ParamRole::bias, 3, depth, 0, 0}).kind ==
        policy::InitSpec::Kind::constant);
  policy::InitNormal paper{.embedding_std = std::sqrt(0.4)};
  CHECK_THAT(paper.spec(ParamInfo{ParamRole::embedding, 0, depth, 32000, 512}).std,
             WithinRel(0.632455532, 1e-9));
}

TEST_CASE("A model's init: constants exact, matrices with the spec's std, keyed by name",
          "[policy][nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 4);
  c.d_model = 64;
  c.d_ff = 128;
  c.heads = 4;
  nn::DecoderLM<nn::Llama, policy::PreLN, double> a(c), b(c);
  a.init(21, policy::ScaledInit{});
  b.init(21);  // PreLN's default: InitNormal
  auto rms = [](const Tensor<double>& t) {
    double s = 0.0;
    for (double e : t.to_vector()) s += e * e;
    return std::sqrt(s / static_cast<double>(t.numel()));
  };
  CHECK_THAT(rms(a.find("model.layers.0.self_attn.o_proj.weight")->var.value()),
             WithinRel(0.02 / std::sqrt(8.0), 0.05));
  CHECK_THAT(rms(a.find("model.layers.0.mlp.down_proj.weight")->var.value()),
             WithinRel(0.02 / std::sqrt(8.0), 0.05));
  CHECK_THAT(rms(b.find("model.layers.0.mlp.down_proj.weight")->var.value()),
             WithinRel(0.02, 0.05));
  // Same names, same seed: same normals, so q_proj (unscaled under both) is identical.
  CHECK(testing::identical(a.find("model.layers.3.self_attn.q_proj.weight")->var.value(),
                           b.find("model.layers.3.self_attn.q_proj.weight")->var.value()));
  // Different parameters get different streams.
  CHECK_FALSE(testing::identical(a.find("model.layers.3.self_attn.q_proj.weight")->var.value(),
                                 a.find("model.layers.3.self_attn.k_proj.weight")->var.value()));
  for (double w : a.find("model.layers.2.input_layernorm.weight")->var.value().to_vector())
    CHECK(w == 1.0);
}
