// MixLN (arXiv 2412.13795): blocks l <= floor(L * Num / Den) use the Early policy, the rest the
// Late one. MixLN<> is the paper's: Post-LN for the first quarter of the blocks, Pre-LN after.
#pragma once

#include <algorithm>

#include "fathom/policy/init.hpp"
#include "fathom/policy/norm_policy.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/traits.hpp"

namespace fathom::policy {

// Each parameter drawn by the init of the policy that owns its block; parameters outside the blocks
// (embeddings, final norm, LM head) by the Late policy's init.
template <class EarlyInit, class LateInit, int Num, int Den>
struct MixInit {
  EarlyInit early;
  LateInit late;

  InitSpec spec(const ParamInfo& p) const {
    const bool is_early = p.layer >= 1 && p.layer <= Num * p.depth / Den;
    return is_early ? early.spec(p) : late.spec(p);
  }
};

template <class Early = PostLN, class Late = PreLN, int Num = 1, int Den = 4>
struct MixLN {
  static_assert(NormPolicyCheck<Early>::value && NormPolicyCheck<Late>::value);
  static_assert(
      Den > 0 && Num >= 0 && Num <= Den,
      "MixLN<Early, Late, Num, Den>: the share Num/Den of Early blocks must lie in [0, 1]");

  Early early{};
  Late late{};

  static constexpr int norms_per_sublayer =
      std::max(PolicyTraits<Early>::norms_per_sublayer, PolicyTraits<Late>::norms_per_sublayer);

  // The last block that uses Early: floor(L * Num / Den) (0 when none does).
  static int last_early_layer(int depth) { return Num * depth / Den; }

  template <class S>
  typename S::Var apply(S& s) const {
    if (s.layer <= last_early_layer(s.depth)) return early.apply(s);
    return late.apply(s);
  }

  // The final norm follows the last blocks, which are Late's.
  bool has_final_norm() const { return PolicyTraits<Late>::has_final_norm(late); }

  auto init() const {
    using EarlyInit = decltype(PolicyTraits<Early>::init(early));
    using LateInit = decltype(PolicyTraits<Late>::init(late));
    return MixInit<EarlyInit, LateInit, Num, Den>{PolicyTraits<Early>::init(early),
                                                  PolicyTraits<Late>::init(late)};
  }
};

}  // namespace fathom::policy
