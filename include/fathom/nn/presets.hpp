// Model presets by name: the paper's Llama sizes (shared/paper.md), GPT-2 124M and 350M, and tiny
// ones for tests and demos. A preset is values only; the architecture type must match its arch.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "fathom/core/error.hpp"
#include "fathom/nn/config.hpp"

namespace fathom::nn {

namespace detail {

inline ModelConfig llama_preset(std::string_view name, int layers, int d_model, int d_ff,
                                int heads) {
  ModelConfig c;
  c.arch = ArchKind::llama;
  c.layers = layers;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.heads = heads;
  c.vocab = 32000;   // the T5 sentencepiece vocabulary the paper trained with
  c.max_seq = 1024;  // RoPE has no table: only a guard (the paper trains at 256)
  c.norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.tied = false;
  c.bias = false;
  c.name = std::string(name);
  return c;
}

inline ModelConfig gpt2_preset(std::string_view name, int layers, int d_model, int heads) {
  ModelConfig c;
  c.arch = ArchKind::gpt2;
  c.layers = layers;
  c.d_model = d_model;
  c.d_ff = 4 * d_model;
  c.heads = heads;
  c.vocab = 50257;  // pad to 50304 (a multiple of 64) for speed; the counts here are unpadded
  c.max_seq = 1024;
  c.norm_eps = 1e-5;
  c.tied = true;
  c.bias = true;
  c.name = std::string(name);
  return c;
}

}  // namespace detail

// The valid preset names, in the order --help lists them.
inline constexpr std::array<std::string_view, 9> preset_names = {
    "tiny",       "gpt2-tiny", "llama-71m", "llama-130m", "llama-250m",
    "llama-350m", "llama-1b",  "gpt2-124m", "gpt2-350m"};

// The config of a preset; throws fathom::Error listing the valid names for any other.
//   tiny        Llama, 4 x 64, 4 heads, d_ff 176, vocab 257 (the byte tokenizer), max_seq 256
//   gpt2-tiny   GPT-2, 4 x 64, 4 heads, d_ff 256, vocab 257, max_seq 256
//   llama-*     the paper's sizes, vocab 32000, untied, no biases: 70.6M, 134.1M, 247.4M, 368.0M,
//               1.339B parameters
//   gpt2-124m   12 x 768, 12 heads, vocab 50257, tied: 124.4M; gpt2-350m 24 x 1024, 16 heads:
//   354.8M
inline ModelConfig preset(std::string_view name) {
  using detail::gpt2_preset;
  using detail::llama_preset;
  if (name == "tiny") {
    ModelConfig c = llama_preset(name, 4, 64, 176, 4);
    c.vocab = 257;
    c.max_seq = 256;
    return c;
  }
  if (name == "gpt2-tiny") {
    ModelConfig c = gpt2_preset(name, 4, 64, 4);
    c.vocab = 257;
    c.max_seq = 256;
    return c;
  }
  if (name == "llama-71m") return llama_preset(name, 12, 512, 1368, 8);
  if (name == "llama-130m") return llama_preset(name, 12, 768, 2048, 12);
  if (name == "llama-250m") return llama_preset(name, 24, 768, 2560, 16);
  if (name == "llama-350m") return llama_preset(name, 24, 1024, 2736, 16);
  if (name == "llama-1b") return llama_preset(name, 24, 2048, 5461, 32);
  if (name == "gpt2-124m") return gpt2_preset(name, 12, 768, 12);
  if (name == "gpt2-350m") return gpt2_preset(name, 24, 1024, 16);
  std::string valid;
  for (auto n : preset_names) valid += (valid.empty() ? "" : ", ") + std::string(n);
  FATHOM_FAIL("unknown model preset '" << name << "'; valid presets: " << valid);
}

}  // namespace fathom::nn
