// LNS (LayerNorm Scaling, the Curse of Depth paper): x + F(N(x) / sqrt(l)). Both sub-layers of
// block l use the same l (1-based); the final norm is not scaled.
#pragma once

#include <cmath>

#include "fathom/autograd/ops/elementwise.hpp"

namespace fathom::policy {

struct LNS {
  static constexpr int norms_per_sublayer = 1;

  // A fixed constant, not a parameter or buffer: nothing to save, nothing to lose on reload. It is
  // passed as the norm's output scale, so the norm kernel applies it for free.
  static double scale(int layer) { return 1.0 / std::sqrt(static_cast<double>(layer)); }

  template <class S>
  auto apply(S& s) const {
    return s.residual(s.norm(0, s.x, scale(s.layer)));  // s.x + s.f(N(s.x) / sqrt(l))
  }
};

}  // namespace fathom::policy
