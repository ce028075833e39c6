// SandwichLN (Peri-LN): x + N_out(F(N_in(x))): each branch is normalized on the way in and on the
// way out, so two norms per sub-layer (slot 0 in, slot 1 out).
#pragma once

#include "fathom/autograd/ops/elementwise.hpp"

namespace fathom::policy {

struct SandwichLN {
  static constexpr int norms_per_sublayer = 2;

  template <class S>
  auto apply(S& s) const {
    return s.x + s.norm(1, s.f(s.norm(0, s.x)));
  }
};

}  // namespace fathom::policy
