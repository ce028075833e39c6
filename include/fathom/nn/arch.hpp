// Architecture traits Llama and Gpt2: what each fixes (ArchSpec: norm, MLP, positions, fused
// attention projection), its name, and the Hugging Face names of its parameters, so checkpoints
// load in transformers (LlamaForCausalLM, GPT2LMHeadModel). A runtime ArchKind reaches its trait
// through visit_arch(), the one place that maps one to the other.
//
// Names of norm slots. A policy's norm slot i of a sub-layer gets the same name whatever the policy
// does with it (PostLN's slot 0 follows the add but is still input_layernorm / ln_1). Slot 0 has
// the architecture's own names; slots a policy adds (SandwichLN's output norms) are fathom's:
//                     attention slot 0            mlp slot 0                  slot 1 (att / mlp)
//   Llama  model.layers.{i}.  input_layernorm     post_attention_layernorm    attn_out_norm /
//   mlp_out_norm GPT-2  transformer.h.{i}. ln_1                ln_2 ln_attn_out / ln_mlp_out
// Slots k >= 2 are attn_norm_{k} / mlp_norm_{k} (Llama) and ln_attn_{k} / ln_mlp_{k} (GPT-2).
// {i} is the 0-based block index, as in Hugging Face (block i has policy layer l = i + 1).
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <vector>

#include "fathom/core/error.hpp"

namespace fathom::nn {

enum class ArchKind { llama, gpt2 };
enum class NormKind { rms, layer };
enum class MlpKind { swiglu, gelu };

// What an architecture fixes (a ModelConfig cannot change these).
struct ArchSpec {
  NormKind norm;
  MlpKind mlp;
  bool rope;       // rotary positions; otherwise learned absolute positions (a (max_seq, C) table)
  bool fused_qkv;  // one (3C, C) projection (GPT-2 c_attn) instead of q_proj, k_proj, v_proj
};

// Module prefixes (parameter names without ".weight" / ".bias") of one block.
struct BlockNames {
  std::string q, k, v;  // separate projections (Llama)
  std::string qkv;      // fused projection (GPT-2 c_attn)
  std::string attn_out;
  std::string mlp_gate;                            // SwiGLU only
  std::string mlp_up;                              // up_proj / c_fc
  std::string mlp_down;                            // down_proj / mlp.c_proj
  std::vector<std::string> attn_norms, mlp_norms;  // by slot
};

struct Llama {
  static constexpr ArchKind kind = ArchKind::llama;
  static constexpr std::string_view name = "llama";
  static constexpr ArchSpec spec{NormKind::rms, MlpKind::swiglu, /*rope=*/true,
                                 /*fused_qkv=*/false};

  static std::string embedding() { return "model.embed_tokens"; }
  static std::string positions() { return ""; }  // rotary: no table
  static std::string final_norm() { return "model.norm"; }
  static std::string lm_head() { return "lm_head"; }

  static BlockNames block(int index, int norms_per_sublayer) {
    const std::string p = "model.layers." + std::to_string(index) + ".";
    BlockNames n;
    n.q = p + "self_attn.q_proj";
    n.k = p + "self_attn.k_proj";
    n.v = p + "self_attn.v_proj";
    n.attn_out = p + "self_attn.o_proj";
    n.mlp_gate = p + "mlp.gate_proj";
    n.mlp_up = p + "mlp.up_proj";
    n.mlp_down = p + "mlp.down_proj";
    for (int s = 0; s < norms_per_sublayer; ++s) {
      const std::string k = std::to_string(s);
      n.attn_norms.push_back(p + (s == 0   ? "input_layernorm"
                                  : s == 1 ? "attn_out_norm"
                                           : "attn_norm_" + k));
      n.mlp_norms.push_back(p + (s == 0   ? "post_attention_layernorm"
                                 : s == 1 ? "mlp_out_norm"
                                          : "mlp_norm_" + k));
    }
    return n;
  }

  // Hugging Face Llama stores every matrix (out, in), as fathom does.
  static bool hf_transposed(std::string_view) { return false; }
};

struct Gpt2 {
  static constexpr ArchKind kind = ArchKind::gpt2;
  static constexpr std::string_view name = "gpt2";
  static constexpr ArchSpec spec{NormKind::layer, MlpKind::gelu, /*rope=*/false,
                                 /*fused_qkv=*/true};

  static std::string embedding() { return "transformer.wte"; }
  static std::string positions() { return "transformer.wpe"; }
  static std::string final_norm() { return "transformer.ln_f"; }
  static std::string lm_head() { return "lm_head"; }  // only when untied

  static BlockNames block(int index, int norms_per_sublayer) {
    const std::string p = "transformer.h." + std::to_string(index) + ".";
    BlockNames n;
    n.qkv = p + "attn.c_attn";
    n.attn_out = p + "attn.c_proj";
    n.mlp_up = p + "mlp.c_fc";
    n.mlp_down = p + "mlp.c_proj";
    for (int s = 0; s < norms_per_sublayer; ++s) {
      const std::string k = std::to_string(s);
      n.attn_norms.push_back(p + (s == 0 ? "ln_1" : s == 1 ? "ln_attn_out" : "ln_attn_" + k));
      n.mlp_norms.push_back(p + (s == 0 ? "ln_2" : s == 1 ? "ln_mlp_out" : "ln_mlp_" + k));
    }
    return n;
  }

  // Hugging Face GPT-2 keeps its linears as Conv1D, weight (in, out): the checkpoint code
  // transposes these four matrices of every block on save and load (fathom keeps (out, in)).
  static bool hf_transposed(std::string_view name) {
    if (!name.starts_with("transformer.h.")) return false;
    for (std::string_view suffix :
         {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"})
      if (name.ends_with(suffix)) return true;
    return false;
  }
};

// Calls f(Llama{}) or f(Gpt2{}) for `arch`: the one place a runtime ArchKind meets its trait.
template <class F>
decltype(auto) visit_arch(ArchKind arch, F&& f) {
  if (arch == ArchKind::llama) return f(Llama{});
  return f(Gpt2{});
}

inline std::string_view to_string(ArchKind a) {
  return visit_arch(a, [](auto arch) { return decltype(arch)::name; });
}

inline ArchSpec arch_spec(ArchKind a) {
  return visit_arch(a, [](auto arch) { return decltype(arch)::spec; });
}

// The ArchKind named `name` ("llama", "gpt2"); throws naming the valid values otherwise.
inline ArchKind arch_kind(std::string_view name) {
  for (ArchKind a : {ArchKind::llama, ArchKind::gpt2})
    if (to_string(a) == name) return a;
  FATHOM_FAIL("unknown architecture '" << name << "'; valid architectures: llama, gpt2");
}

// Whether the Hugging Face checkpoint of architecture `arch` stores parameter `name` transposed
// relative to fathom's (out, in) layout.
inline bool hf_transposed(ArchKind arch, std::string_view name) {
  return visit_arch(arch, [&](auto a) { return decltype(a)::hf_transposed(name); });
}

template <class A>
concept Architecture = requires(int i) {
  { A::kind } -> std::convertible_to<ArchKind>;
  { A::name } -> std::convertible_to<std::string_view>;
  { A::spec } -> std::convertible_to<ArchSpec>;
  { A::embedding() } -> std::convertible_to<std::string>;
  { A::positions() } -> std::convertible_to<std::string>;
  { A::final_norm() } -> std::convertible_to<std::string>;
  { A::lm_head() } -> std::convertible_to<std::string>;
  { A::block(i, i) } -> std::same_as<BlockNames>;
};

}  // namespace fathom::nn
