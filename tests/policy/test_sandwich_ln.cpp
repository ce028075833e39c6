// SandwichLN (Peri-LN): x + N_out(F(N_in(x))), two norms per sub-layer with their own parameters
// and names.
#include "fathom/policy/sandwich_ln.hpp"

#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("SandwichLN: x + N_1(F(N_0(x)))", "[policy]") {
  testing::FakeSublayer fake(71);
  auto s = fake.context(2, 4);
  auto y = policy::SandwichLN{}.apply(s);
  // N_0 = 10x, F = 3 (10x), N_1 = 100 (30x): x + 3000x.
  testing::require_close(y.value().to_vector(), fake.x_times(3001.0));
  REQUIRE(fake.norm_calls.size() == 2);
  CHECK(fake.norm_calls[0].slot == 0);
  CHECK(fake.norm_calls[1].slot == 1);
}

TEST_CASE("SandwichLN model: output norms are parameters with their own names", "[policy][nn]") {
  auto lc = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, policy::SandwichLN, double> llama(lc);
  for (const char* n :
       {"model.layers.1.input_layernorm.weight", "model.layers.1.attn_out_norm.weight",
        "model.layers.1.post_attention_layernorm.weight", "model.layers.1.mlp_out_norm.weight"})
    CHECK(llama.find(n) != nullptr);
  CHECK(llama.num_parameters() == nn::count_parameters(lc, 2, true));

  auto gc = testing::tiny_config(nn::ArchKind::gpt2, 2);
  nn::DecoderLM<nn::Gpt2, policy::SandwichLN, double> gpt2(gc);
  for (const char* n : {"transformer.h.0.ln_attn_out.weight", "transformer.h.0.ln_attn_out.bias",
                        "transformer.h.0.ln_mlp_out.weight", "transformer.h.0.ln_mlp_out.bias"})
    CHECK(gpt2.find(n) != nullptr);
  CHECK(gpt2.num_parameters() == nn::count_parameters(gc, 2, true));

  // The branch output really passes through slot 1: block output = x + N_1(attention branch) ...
  llama.init(12);
  testing::randomize(llama, 13);
  testing::Recorder<double> rec;
  llama.forward(testing::random_tokens(2, 4, lc.vocab, 6), rec.options());
  const auto& blk = llama.blocks()[0];
  auto h = rec.at(0, nn::Site::block_input) +
           blk.norm(policy::Sublayer::attention, 1).forward(rec.at(0, nn::Site::attn_branch));
  auto y = h + blk.norm(policy::Sublayer::mlp, 1).forward(rec.at(0, nn::Site::mlp_branch));
  CHECK(testing::identical(rec.at(0, nn::Site::block_output).value(), y.value()));
  CHECK(testing::identical(rec.at(0, nn::Site::mlp_input).value(),
                           blk.norm(policy::Sublayer::mlp, 0).forward(h).value()));
}
