// The NormPolicy concept: what a normalization policy must provide, member by member, its minimal
// archetype, and NormPolicyCheck, which turns a failed requirement into a sentence naming it.
#pragma once

#include <concepts>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/core/device.hpp"
#include "fathom/policy/sublayer.hpp"
#include "fathom/policy/traits.hpp"

namespace fathom::policy {

// WHAT A NORM POLICY REPRESENTS
//   Where the norms of one residual sub-layer sit and how its branch and skip are scaled. A block
//   of a DecoderLM has two sub-layers (attention, then MLP); for each, the block builds a
//   SublayerContext s (sublayer.hpp) and replaces the residual stream by policy.apply(s).
//   Policies are objects: a model keeps a copy, so runtime-settable values (DeepNorm's alpha and
//   beta) are plain fields. They are written with Var operations only (+, -, * by a double), so
//   autograd differentiates them and no kernel is instantiated per policy.
//
// REQUIRED MEMBER
//   template <class S> auto apply(S& s) const        (a static member function is fine too)
//     requires: s is a SublayerContext<T, D> (s.x, s.f, s.residual, s.norm, s.layer, s.depth,
//               s.kind); apply calls the branch (s.f or s.residual) at most once per call (the
//               branch is the expensive part) and only norm slots
//               0 .. norms_per_sublayer - 1. The block checks both at every forward
//               and throws fathom::Error naming the sub-layer (a concept cannot see a call count).
//     ensures:  returns the sub-layer's output stream as a Var<T, D> of s.x's shape. It is used
//               for every T and device, so it must not depend on either.
//
// OPTIONAL MEMBERS (detected in PolicyTraits, traits.hpp, where their defaults are written)
//   static constexpr int norms_per_sublayer            default 1
//     ensures: >= 1; the model creates this many norms (with their own parameters) per sub-layer.
//   bool has_final_norm() const                        default true
//     ensures: whether a norm follows the last block (unscaled, before the LM head).
//   auto init() const                                  default InitNormal{}
//     ensures: returns an InitPolicy (init.hpp) used by DecoderLM::init(seed).
//
// A type that does not satisfy NormPolicy is rejected where a model is instantiated by
// NormPolicyCheck, whose static_asserts name the missing or malformed member. (The model templates
// use static_assert rather than a requires-clause for this reason: a constraint failure reports
// the expression, a static_assert can say what to write instead.)

namespace detail {
// Policies are checked against the double, CPU context; apply must be generic over T and D anyway.
using CheckContext = SublayerContext<double, Cpu>;
}  // namespace detail

template <class P>
concept HasApply = requires(const P& p, detail::CheckContext& s) {
  p.apply(s);
};

// apply declared without const: callable on a mutable policy only (the model's is const).
template <class P>
concept HasNonConstApply = !HasApply<P> && requires(P & p, detail::CheckContext& s) {
  p.apply(s);
};

template <class P>
concept ApplyReturnsStream = requires(const P& p, detail::CheckContext& s) {
  { p.apply(s) } -> std::same_as<Var<double, Cpu>>;
};

namespace detail {
// Instantiated only for a policy whose apply(s) returns something other than Var<T, D>, so that the
// compiler's "in instantiation of ApplyMustReturnVar<Returned = ...>" names the type it returned.
template <class Returned>
struct ApplyMustReturnVar {
  static_assert(sizeof(Returned*) == 0,
                "NormPolicy: apply(s) returned `Returned` (see the line above), not Var<T, D>");
  using type = int;
};
template <class P, bool Wrong>
struct ReportApplyReturn {
  using type = int;
};
template <class P>
struct ReportApplyReturn<P, true> {
  using type = typename ApplyMustReturnVar<decltype(std::declval<const P&>().apply(
      std::declval<CheckContext&>()))>::type;
};
}  // namespace detail

template <class P>
concept NormPolicy = std::is_class_v<P> && std::copy_constructible<P> && HasApply<P> &&
    ApplyReturnsStream<P> && PolicyTraits<P>::valid_norms_per_sublayer &&
    PolicyTraits<P>::valid_final_norm && PolicyTraits<P>::valid_init;

// The smallest type that models NormPolicy: the identity sub-layer (it skips the branch), a useful
// baseline for structure tests.
struct NormPolicyArchetype {
  template <class S>
  auto apply(S& s) const {
    return s.x;
  }
};

// Instantiating NormPolicyCheck<P> fails to compile, with one sentence per broken requirement,
// unless P models NormPolicy. Models use `static_assert(NormPolicyCheck<Policy>::value)`.
template <class P>
struct NormPolicyCheck {
  static_assert(std::is_class_v<P>, "NormPolicy: a norm policy must be a struct or class type");
  static_assert(std::copy_constructible<P>,
                "NormPolicy: the policy must be copy-constructible (the model keeps a copy)");
  static_assert(!HasNonConstApply<P>,
                "NormPolicy: member `apply` must be const: declare it `template <class S> auto "
                "apply(S& s) const` (the model calls it on a const policy)");
  static_assert(HasApply<P> || HasNonConstApply<P>,
                "NormPolicy: missing member `apply`: declare `template <class S> auto apply(S& s) "
                "const` returning the sub-layer's new residual stream, e.g. "
                "`return s.x + s.f(s.norm(0, s.x));` (see fathom/policy/norm_policy.hpp)");
  static_assert(!HasApply<P> || ApplyReturnsStream<P>,
                "NormPolicy: member `apply(s)` must return the new residual stream as a Var of "
                "the same element type and device as s.x (e.g. `s.x + s.f(...)`); the type it "
                "returns is shown below as `Returned` of ApplyMustReturnVar");
  static_assert(sizeof(typename detail::ReportApplyReturn < P,
                       HasApply<P> && !ApplyReturnsStream < P >> ::type) > 0);
  static_assert(PolicyTraits<P>::valid_norms_per_sublayer,
                "NormPolicy: member `norms_per_sublayer` must be a `static constexpr int` >= 1");
  static_assert(PolicyTraits<P>::valid_final_norm,
                "NormPolicy: member `has_final_norm()` must be a const member function returning "
                "bool");
  static_assert(PolicyTraits<P>::valid_init,
                "NormPolicy: member `init()` must be a const member function returning an "
                "InitPolicy (a type with `InitSpec spec(const ParamInfo&) const`, see init.hpp)");
  static constexpr bool value = true;
};

}  // namespace fathom::policy
