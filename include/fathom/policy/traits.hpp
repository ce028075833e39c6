// PolicyTraits<P>: the one place where a norm policy's optional members are detected, each with
// its default written next to it. Library code asks these traits, never the policy directly.
#pragma once

#include <type_traits>

#include "fathom/policy/init.hpp"
#include "fathom/policy/init_normal.hpp"

namespace fathom::policy {

template <class P>
struct PolicyTraits {
  // Optional `static constexpr int norms_per_sublayer`: how many norm slots each sub-layer owns
  // (the indices apply may pass to s.norm). Default 1.
  static constexpr bool declares_norms_per_sublayer = requires { P::norms_per_sublayer; };
  static constexpr int norms_per_sublayer = [] {
    if constexpr (requires { std::integral_constant<int, P::norms_per_sublayer>{}; })
      return static_cast<int>(P::norms_per_sublayer);
    else
      return 1;
  }();
  // Whether a declared norms_per_sublayer is usable: a constant expression convertible to int,
  // >= 1.
  static constexpr bool valid_norms_per_sublayer = [] {
    if constexpr (!declares_norms_per_sublayer)
      return true;
    else if constexpr (requires { std::integral_constant<int, P::norms_per_sublayer>{}; })
      return P::norms_per_sublayer >= 1;
    else
      return false;
  }();

  // Optional `bool has_final_norm() const`: whether the model applies a norm after the last block
  // and before the LM head. Default true (Pre-LN needs it; the paper's Post-LN code keeps it too).
  static bool has_final_norm(const P& p) {
    if constexpr (requires {
                    { p.has_final_norm() } -> std::convertible_to<bool>;
                  })
      return p.has_final_norm();
    else
      return true;
  }

  // Optional `init() const` returning an InitPolicy: how the model's weights are drawn when the
  // user names no init policy of their own (DeepNorm's Xavier gains). Default InitNormal{}
  // (N(0, 0.02^2) matrices, norms 1, biases 0).
  static auto init(const P& p) {
    if constexpr (requires {
                    { p.init() } -> InitPolicy;
                  })
      return p.init();
    else
      return InitNormal{};
  }
  static constexpr bool declares_init = requires(const P& p) { p.init(); };
  static constexpr bool valid_init = [] {
    if constexpr (declares_init) return requires(const P& p) {
        { p.init() } -> InitPolicy;
      };
    else
      return true;
  }();

  // Optional `bool has_final_norm() const` declared with a type that does not convert to bool.
  static constexpr bool valid_final_norm = [] {
    if constexpr (requires(const P& p) { p.has_final_norm(); }) return requires(const P& p) {
        { p.has_final_norm() } -> std::convertible_to<bool>;
      };
    else
      return true;
  }();
};

}  // namespace fathom::policy
