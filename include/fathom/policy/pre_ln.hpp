// PreLN: x + F(N(x)), the GPT-2/Llama placement: the stream is never normalized, only each branch's
// input is, and a final norm precedes the LM head.
#pragma once

#include "fathom/autograd/ops/elementwise.hpp"

namespace fathom::policy {

struct PreLN {
  static constexpr int norms_per_sublayer = 1;

  template <class S>
  auto apply(S& s) const {
    return s.residual(s.norm(0, s.x));  // s.x + s.f(s.norm(0, s.x)), the add fused
  }
};

}  // namespace fathom::policy
