// PostLN: N(x + F(x)), the original Transformer placement: the stream is normalized after every
// residual add.
#pragma once

#include "fathom/autograd/ops/elementwise.hpp"

namespace fathom::policy {

struct PostLN {
  // The Curse of Depth authors' code still applies the final norm before the LM head (so the last
  // block's output is normalized twice); set false to drop it, as the original Post-LN does.
  bool final_norm = true;

  static constexpr int norms_per_sublayer = 1;

  template <class S>
  auto apply(S& s) const {
    return s.norm(0, s.residual(s.x));  // N(s.x + s.f(s.x))
  }

  bool has_final_norm() const { return final_norm; }
};

}  // namespace fathom::policy
