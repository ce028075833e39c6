// Architecture traits: every parameter's Hugging Face name, in order, for Llama and GPT-2, and
// which names the checkpoint code transposes.
#include "fathom/nn/arch.hpp"

#include <string>
#include <vector>

#include "fathom/policy/pre_ln.hpp"
#include "nn/model_testing.hpp"
#include "support/catch.hpp"

using namespace fathom;

template <class Model>
std::vector<std::string> names_of(const Model& m) {
  std::vector<std::string> out;
  for (const auto& p : m.parameters()) {
    CHECK(p.var.name() == p.name);  // the Var carries its name too
    out.push_back(p.name);
  }
  return out;
}

TEST_CASE("Llama parameter names", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, policy::PreLN, float> m(c);
  std::vector<std::string> want = {"model.embed_tokens.weight"};
  for (std::string i : {"0", "1"}) {
    const std::string p = "model.layers." + i + ".";
    for (std::string n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                          "input_layernorm", "post_attention_layernorm"})
      want.push_back(p + n + ".weight");
  }
  want.push_back("model.norm.weight");
  want.push_back("lm_head.weight");
  CHECK(names_of(m) == want);
  CHECK(m.find("model.layers.1.self_attn.q_proj.weight")->var.shape() == Shape{8, 8});
  CHECK(m.find("model.layers.1.mlp.gate_proj.weight")->var.shape() == Shape{12, 8});
  CHECK(m.find("model.layers.1.mlp.down_proj.weight")->var.shape() == Shape{8, 12});
  CHECK(m.find("lm_head.weight")->var.shape() == Shape{11, 8});
  for (const auto& n : want) CHECK_FALSE(nn::hf_transposed(nn::ArchKind::llama, n));
}

TEST_CASE("GPT-2 parameter names, tied head, transposed Conv1D weights", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::gpt2, 2);
  nn::DecoderLM<nn::Gpt2, policy::PreLN, float> m(c);
  std::vector<std::string> want = {"transformer.wte.weight", "transformer.wpe.weight"};
  for (std::string i : {"0", "1"}) {
    const std::string p = "transformer.h." + i + ".";
    for (std::string n : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "ln_1", "ln_2"}) {
      want.push_back(p + n + ".weight");
      want.push_back(p + n + ".bias");
    }
  }
  want.push_back("transformer.ln_f.weight");
  want.push_back("transformer.ln_f.bias");
  auto got = names_of(m);
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  CHECK(got == want);
  CHECK(m.find("transformer.h.0.attn.c_attn.weight")->var.shape() ==
        Shape{24, 8});  // (3C, C), ours (out, in)
  CHECK(m.find("transformer.wpe.weight")->var.shape() == Shape{4, 8});
  // Tied: the head is the embedding itself.
  CHECK(m.lm_head_weight().slot() == m.find("transformer.wte.weight")->var.slot());

  for (const char* n : {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight",
                        "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"})
    CHECK(nn::hf_transposed(nn::ArchKind::gpt2, n));
  for (const char* n :
       {"transformer.h.0.attn.c_attn.bias", "transformer.wte.weight", "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight", "transformer.ln_f.weight", "lm_head.weight"})
    CHECK_FALSE(nn::hf_transposed(nn::ArchKind::gpt2, n));
}

TEST_CASE("Norm slots beyond the first are named by the architecture", "[nn]") {
  auto l = nn::Llama::block(3, 3);
  CHECK(l.attn_norms == std::vector<std::string>{"model.layers.3.input_layernorm",
                                                 "model.layers.3.attn_out_norm",
                                                 "model.layers.3.attn_norm_2"});
  CHECK(l.mlp_norms == std::vector<std::string>{"model.layers.3.post_attention_layernorm",
                                                "model.layers.3.mlp_out_norm",
                                                "model.layers.3.mlp_norm_2"});
  auto g = nn::Gpt2::block(0, 2);
  CHECK(g.attn_norms ==
        std::vector<std::string>{"transformer.h.0.ln_1", "transformer.h.0.ln_attn_out"});
  CHECK(g.mlp_norms ==
        std::vector<std::string>{"transformer.h.0.ln_2", "transformer.h.0.ln_mlp_out"});
}
