// Initialization policies: what a parameter is (ParamInfo: its role, block, fans) and how it is
// drawn (InitSpec), and the InitPolicy concept that maps one to the other.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>

namespace fathom::policy {

// The part a weight plays in the model. A fused GPT-2 c_attn weight is three parts (q, k, v), each
// initialized as its own (C, C) matrix.
enum class ParamRole {
  embedding,           // token embedding (also the LM head when tied)
  position_embedding,  // learned positions (GPT-2)
  q,
  k,
  v,
  attn_out,  // attention output projection (o_proj, attn.c_proj)
  mlp_gate,  // SwiGLU gate_proj
  mlp_up,    // SwiGLU up_proj, GELU c_fc
  mlp_down,  // SwiGLU down_proj, GELU mlp.c_proj
  lm_head,   // untied LM head
  norm_weight,
  norm_bias,
  bias,  // bias of a linear
};

inline std::string_view to_string(ParamRole r) {
  switch (r) {
    case ParamRole::embedding:
      return "embedding";
    case ParamRole::position_embedding:
      return "position_embedding";
    case ParamRole::q:
      return "q";
    case ParamRole::k:
      return "k";
    case ParamRole::v:
      return "v";
    case ParamRole::attn_out:
      return "attn_out";
    case ParamRole::mlp_gate:
      return "mlp_gate";
    case ParamRole::mlp_up:
      return "mlp_up";
    case ParamRole::mlp_down:
      return "mlp_down";
    case ParamRole::lm_head:
      return "lm_head";
    case ParamRole::norm_weight:
      return "norm_weight";
    case ParamRole::norm_bias:
      return "norm_bias";
    case ParamRole::bias:
      return "bias";
  }
  return "?";
}

// True for the weight matrices of a sub-layer branch (everything a DeepNet gain may touch).
inline bool is_branch_matrix(ParamRole r) {
  return r == ParamRole::q || r == ParamRole::k || r == ParamRole::v || r == ParamRole::attn_out ||
         r == ParamRole::mlp_gate || r == ParamRole::mlp_up || r == ParamRole::mlp_down;
}

struct ParamInfo {
  ParamRole role = ParamRole::bias;
  int layer = 0;  // 1-based block index; 0 outside the blocks (embeddings, final norm, LM head)
  int depth = 0;  // L
  std::int64_t fan_in = 0;   // input features of a matrix (columns of our (out, in) layout)
  std::int64_t fan_out = 0;  // output features (rows)
};

// How one parameter (or one part of it) is drawn: N(0, std^2), or every element = value.
struct InitSpec {
  enum class Kind { normal, constant };
  Kind kind = Kind::normal;
  double std = 0.0;
  double value = 0.0;

  static InitSpec normal(double s) { return {Kind::normal, s, 0.0}; }
  static InitSpec constant(double v) { return {Kind::constant, 0.0, v}; }
};

// Norm weights start at 1, every bias at 0: what all of fathom's init policies do. Returns false
// (leaving `out` alone) for a weight matrix or embedding.
inline bool fixed_init(const ParamInfo& p, InitSpec& out) {
  if (p.role == ParamRole::norm_weight) {
    out = InitSpec::constant(1.0);
    return true;
  }
  if (p.role == ParamRole::norm_bias || p.role == ParamRole::bias) {
    out = InitSpec::constant(0.0);
    return true;
  }
  return false;
}

// Xavier (Glorot) normal: std = gain * sqrt(2 / (fan_in + fan_out)).
inline double xavier_normal_std(const ParamInfo& p, double gain) {
  return gain * std::sqrt(2.0 / static_cast<double>(p.fan_in + p.fan_out));
}

// An init policy maps a parameter's description to how it is drawn.
//   spec(p)   requires: p describes one parameter (or one part of a fused one) of a model of depth
//             p.depth. ensures: the distribution its values are drawn from. Called once per
//             parameter part; must not depend on anything but p and the policy's own fields.
// The random values themselves come from the model (fathom::rng, one stream per parameter name),
// so the same seed gives the same weights on every device.
template <class I>
concept InitPolicy = std::copy_constructible<I> && requires(const I& init, const ParamInfo& p) {
  { init.spec(p) } -> std::same_as<InitSpec>;
};

}  // namespace fathom::policy
