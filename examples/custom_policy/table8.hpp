// Where else the 1/sqrt(l) of LNS could go: the variants of the Curse of Depth paper's Table 8
// (130M, C4 perplexity in brackets), each a norm policy of a few lines. They are the solutions to
// the exercises in docs/policies.md; main.cpp trains any of them by name.
#pragma once

#include <cmath>

#include <fathom/fathom.hpp>

namespace table8 {

inline double depth_scale(int layer) { return 1.0 / std::sqrt(static_cast<double>(layer)); }

// Before LN [26.97]: x + F(N(x / sqrt(l))). RMSNorm is scale-invariant, so this is Pre-LN up to
// eps.
struct ScaleBeforeNorm {
  template <class S>
  auto apply(S& s) const {
    return s.residual(s.norm(0, s.x * depth_scale(s.layer)));
  }
};

// After Attn/FFN [26.53]: x + F(N(x)) / sqrt(l).
struct ScaleBranchOutput {
  template <class S>
  auto apply(S& s) const {
    return s.x + s.f(s.norm(0, s.x)) * depth_scale(s.layer);
  }
};

// After the residual add [1358, diverged]: (x + F(N(x))) / sqrt(l), which shrinks the stream
// itself.
struct ScaleAfterAdd {
  template <class S>
  auto apply(S& s) const {
    return (s.x + s.f(s.norm(0, s.x))) * depth_scale(s.layer);
  }
};

// Only attention [26.89]: LNS on the attention sub-layer, Pre-LN on the MLP.
struct LnsAttentionOnly {
  template <class S>
  auto apply(S& s) const {
    const bool attn = s.kind == fathom::policy::Sublayer::attention;
    return s.residual(s.norm(0, s.x, attn ? depth_scale(s.layer) : 1.0));
  }
};

// After LN [25.76] is LNS itself: fathom::policy::LNS. Only FFN [26.43] is in main.cpp.

static_assert(fathom::policy::NormPolicy<ScaleBeforeNorm>);
static_assert(fathom::policy::NormPolicy<ScaleBranchOutput>);
static_assert(fathom::policy::NormPolicy<ScaleAfterAdd>);
static_assert(fathom::policy::NormPolicy<LnsAttentionOnly>);

}  // namespace table8
