// PostLN computes N(x + F(x)); with every branch zeroed a Post-LN model normalizes the stream at
// each sub-layer; the final norm is kept by default and can be dropped.
#include "fathom/policy/post_ln.hpp"

#include "fathom/autograd/ops/norm.hpp"
#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("PostLN: N(x + F(x))", "[policy]") {
  for (int layer : {1, 4}) {
    testing::FakeSublayer fake(31);
    auto s = fake.context(layer, 4);
    auto y = policy::PostLN{}.apply(s);
    testing::require_close(y.value().to_vector(), fake.x_times(10.0 * (1.0 + 3.0)));  // 10 (x + 3x)
    REQUIRE(fake.norm_calls.size() == 1);
    CHECK(fake.norm_calls[0].slot == 0);
    CHECK(fake.norm_calls[0].scale == 1.0);
  }
}

TEMPLATE_TEST_CASE("PostLN model: zeroed branches, the stream is normalized at every sub-layer",
                   "[policy][nn]", nn::Llama, nn::Gpt2) {
  auto c = testing::tiny_config(TestType::kind, 3);
  nn::DecoderLM<TestType, policy::PostLN, double> model(c);
  model.init(6);
  testing::zero_branch_outputs(model);
  testing::Recorder<double> rec;
  model.forward(testing::random_tokens(2, 4, c.vocab, 2), rec.options());
  for (int i = 0; i < c.layers; ++i) {
    INFO("block " << i);
    const auto& blk = model.blocks()[static_cast<std::size_t>(i)];
    const auto& x = rec.at(i, nn::Site::block_input);
    // x + 0 is x, so each sub-layer is exactly its norm: N_mlp(N_attn(x)).
    auto want = blk.norm(policy::Sublayer::mlp, 0)
                    .forward(blk.norm(policy::Sublayer::attention, 0).forward(x));
    CHECK(testing::identical(rec.at(i, nn::Site::block_output).value(), want.value()));
    // Norm weights start at 1 and biases at 0: every row leaves with RMS 1. The embeddings
    // (std 0.02) enter far from it, so this is the norm's doing.
    for (double r : testing::row_rms(rec.at(i, nn::Site::block_output).value()))
      CHECK_THAT(r, WithinRel(1.0, 1e-4));
  }
  for (double r : testing::row_rms(rec.at(0, nn::Site::block_input).value())) CHECK(r < 0.1);
}

TEST_CASE("PostLN: the final norm is kept by default and can be dropped", "[policy][nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, policy::PostLN, double> with(c);
  nn::DecoderLM<nn::Llama, policy::PostLN, double> without(c, policy::PostLN{.final_norm = false});
  CHECK(with.has_final_norm());
  CHECK(with.find("model.norm.weight") != nullptr);
  CHECK_FALSE(without.has_final_norm());
  CHECK(without.find("model.norm.weight") == nullptr);
  CHECK(with.num_parameters() - without.num_parameters() == c.d_model);
  CHECK(without.num_parameters() == nn::count_parameters(c, 1, false));

  // Without it the logits are the LM head applied to the last block's output.
  without.init(3);
  testing::Recorder<double> rec;
  auto logits = without.forward(testing::random_tokens(2, 4, c.vocab, 3), rec.options());
  auto last = autograd::reshape(rec.at(c.layers - 1, nn::Site::block_output), {8, c.d_model});
  CHECK(
      testing::identical(logits.value(), autograd::linear(last, without.lm_head_weight()).value()));
  CHECK(rec.values.count({c.layers, nn::Site::final_norm}) == 0);
}
