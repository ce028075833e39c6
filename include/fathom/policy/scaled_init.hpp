// ScaledInit: InitNormal with the residual output projections (attention out-proj and MLP
// down-proj) drawn from N(0, std^2 / (2L)) (GPT-2, Megatron), so the stream's variance grows less
// with depth.
#pragma once

#include <cmath>

#include "fathom/policy/init.hpp"

namespace fathom::policy {

struct ScaledInit {
  double std = 0.02;
  double embedding_std = 0.02;

  InitSpec spec(const ParamInfo& p) const {
    InitSpec s;
    if (fixed_init(p, s)) return s;
    if (p.role == ParamRole::embedding || p.role == ParamRole::position_embedding)
      return InitSpec::normal(embedding_std);
    if (p.role == ParamRole::attn_out || p.role == ParamRole::mlp_down)
      return InitSpec::normal(std / std::sqrt(2.0 * p.depth));
    return InitSpec::normal(std);
  }
};

static_assert(InitPolicy<ScaledInit>);

}  // namespace fathom::policy
