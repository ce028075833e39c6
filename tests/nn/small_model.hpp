// The model configuration the training and diagnostics tests run: a small Llama.
#pragma once

#include "fathom/nn/config.hpp"
#include "fathom/nn/presets.hpp"

namespace fathom::test {

// Preset "tiny" with 2 heads: `layers` blocks of width d_model, MLP width d_ff, at most max_seq
// positions.
inline nn::ModelConfig small_model(int layers, int d_model, int d_ff, int max_seq) {
  nn::ModelConfig c = nn::preset("tiny");
  c.layers = layers;
  c.d_model = d_model;
  c.heads = 2;
  c.d_ff = d_ff;
  c.max_seq = max_seq;
  return c;
}

}  // namespace fathom::test
