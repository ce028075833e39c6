// LNS: in block l both pre-norm outputs equal N(x) / sqrt(l) exactly (the scale folded into the
// norm op), l = 1..L, for both architectures; the final norm is not scaled.
#include "fathom/policy/lns.hpp"

#include <cmath>

#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("LNS: x + F(N(x) / sqrt(l)) with the scale passed to the norm", "[policy]") {
  const int depth = 9;
  for (int layer = 1; layer <= depth; ++layer) {
    for (auto kind : {policy::Sublayer::attention, policy::Sublayer::mlp}) {
      testing::FakeSublayer fake(41);
      auto s = fake.context(layer, depth, kind);
      auto y = policy::LNS{}.apply(s);
      const double scale = 1.0 / std::sqrt(static_cast<double>(layer));
      testing::require_close(y.value().to_vector(), fake.x_times(1.0 + 3.0 * 10.0 * scale));
      REQUIRE(fake.norm_calls.size() == 1);
      CHECK(fake.norm_calls[0].slot == 0);
      CHECK(fake.norm_calls[0].scale == scale);  // the same constant for both sub-layers
    }
  }
}

TEMPLATE_TEST_CASE("LNS model: pre-norm outputs are N(x) / sqrt(l), the final norm unscaled",
                   "[policy][nn]", nn::Llama, nn::Gpt2) {
  auto c = testing::tiny_config(TestType::kind, 4);
  nn::DecoderLM<TestType, policy::LNS, double> model(c);
  model.init(7);
  testing::randomize(model, 8);  // norm weights away from 1, so a dropped weight would show
  testing::Recorder<double> rec;
  auto logits = model.forward(testing::random_tokens(2, 4, c.vocab, 4), rec.options());

  for (int i = 0; i < c.layers; ++i) {
    const int l = i + 1;
    const double scale = 1.0 / std::sqrt(static_cast<double>(l));
    INFO("block l = " << l);
    const auto& blk = model.blocks()[static_cast<std::size_t>(i)];
    const auto& n_attn = blk.norm(policy::Sublayer::attention, 0);
    const auto& n_mlp = blk.norm(policy::Sublayer::mlp, 0);

    // Attention sub-layer: its input is N(x) / sqrt(l).
    const auto& x = rec.at(i, nn::Site::block_input);
    CHECK(testing::identical(rec.at(i, nn::Site::attn_input).value(),
                             n_attn.forward(x, scale).value()));
    auto unscaled = n_attn.forward(x).value();
    CHECK(testing::max_abs_diff(rec.at(i, nn::Site::attn_input).value(),
                                (n_attn.forward(x) * scale).value()) <= 1e-14);
    if (l > 1)
      CHECK(testing::max_abs_diff(rec.at(i, nn::Site::attn_input).value(), unscaled) > 1e-3);

    // MLP sub-layer: its stream is x + attention branch, and its input N(that) / sqrt(l).
    auto h = x + rec.at(i, nn::Site::attn_branch);
    CHECK(testing::identical(rec.at(i, nn::Site::mlp_input).value(),
                             n_mlp.forward(h, scale).value()));
    CHECK(testing::max_abs_diff(rec.at(i, nn::Site::mlp_input).value(),
                                (n_mlp.forward(h) * scale).value()) <= 1e-14);
    CHECK(testing::identical(rec.at(i, nn::Site::block_output).value(),
                             (h + rec.at(i, nn::Site::mlp_branch)).value()));
  }

  // The final norm: N(x_L), scale 1, and the logits are the LM head of it.
  REQUIRE(model.final_norm() != nullptr);
  auto last = rec.at(c.layers - 1, nn::Site::block_output);
  CHECK(testing::identical(rec.at(c.layers, nn::Site::final_norm).value(),
                           model.final_norm()->forward(last).value()));
  auto flat = autograd::reshape(rec.at(c.layers, nn::Site::final_norm), {8, c.d_model});
  CHECK(testing::identical(logits.value(), autograd::linear(flat, model.lm_head_weight()).value()));
}
