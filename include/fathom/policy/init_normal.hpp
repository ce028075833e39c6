// InitNormal: every matrix N(0, 0.02^2), norms 1, biases 0 (the Llama and GPT-2 default, and the
// paper's). The default init of every norm policy that does not name its own.
#pragma once

#include "fathom/policy/init.hpp"

namespace fathom::policy {

struct InitNormal {
  double std = 0.02;            // linears and the untied LM head
  double embedding_std = 0.02;  // token and position embeddings. The paper's runs used sqrt(2/5)
                                // (= 0.632) for token embeddings; set it to reproduce them exactly.

  InitSpec spec(const ParamInfo& p) const {
    InitSpec s;
    if (fixed_init(p, s)) return s;
    if (p.role == ParamRole::embedding || p.role == ParamRole::position_embedding)
      return InitSpec::normal(embedding_std);
    return InitSpec::normal(std);
  }
};

static_assert(InitPolicy<InitNormal>);

}  // namespace fathom::policy
