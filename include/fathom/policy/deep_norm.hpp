// DeepNorm (DeepNet, arXiv 2203.00555, decoder-only form): N(alpha * x + F(x)) with
// alpha = (2L)^(1/4), and DeepNormInit: Xavier-normal init with gain beta = (8L)^(-1/4) on v, the
// attention out-projection and every MLP weight, gain 1 on q and k.
#pragma once

#include <cmath>
#include <optional>

#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/policy/init.hpp"

namespace fathom::policy {

// The DeepNet formulas for a decoder of L blocks.
inline double deepnorm_alpha(int depth) { return std::pow(2.0 * depth, 0.25); }
inline double deepnorm_beta(int depth) { return std::pow(8.0 * depth, -0.25); }

struct DeepNormInit {
  std::optional<double> beta{};  // unset: deepnorm_beta(L)
  double std = 0.02;             // embeddings and the untied LM head, which DeepNet leaves alone

  double beta_for(int depth) const { return beta ? *beta : deepnorm_beta(depth); }

  InitSpec spec(const ParamInfo& p) const {
    InitSpec s;
    if (fixed_init(p, s)) return s;
    switch (p.role) {
      case ParamRole::q:
      case ParamRole::k:
        return InitSpec::normal(xavier_normal_std(p, 1.0));
      case ParamRole::v:
      case ParamRole::attn_out:
      case ParamRole::mlp_gate:
      case ParamRole::mlp_up:
      case ParamRole::mlp_down:
        return InitSpec::normal(xavier_normal_std(p, beta_for(p.depth)));
      default:
        return InitSpec::normal(std);
    }
  }
};

static_assert(InitPolicy<DeepNormInit>);

struct DeepNorm {
  // Unset: the DeepNet formulas for the model's depth. The Curse of Depth authors' baseline
  // deviates (alpha = 2.828 fixed, beta inverted to (8L)^(1/4)); set both to run it.
  std::optional<double> alpha{};
  std::optional<double> beta{};
  bool final_norm = true;

  static constexpr int norms_per_sublayer = 1;

  double alpha_for(int depth) const { return alpha ? *alpha : deepnorm_alpha(depth); }
  double beta_for(int depth) const { return beta ? *beta : deepnorm_beta(depth); }

  template <class S>
  auto apply(S& s) const {
    return s.norm(0, s.residual(s.x, alpha_for(s.depth)));  // N(alpha s.x + s.f(s.x))
  }

  bool has_final_norm() const { return final_norm; }
  DeepNormInit init() const { return DeepNormInit{beta}; }
};

}  // namespace fathom::policy
