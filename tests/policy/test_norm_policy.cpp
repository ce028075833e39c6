// The NormPolicy concept: its archetype and every library policy model it, things that are not
// policies do not, and PolicyTraits fills in the documented defaults.
#include "fathom/policy/norm_policy.hpp"

#include <cmath>

#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/init_normal.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "fathom/policy/scaled_init.hpp"
#include "fathom/policy/traits.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;
using namespace fathom::policy;

static_assert(NormPolicy<NormPolicyArchetype>);
static_assert(NormPolicyCheck<NormPolicyArchetype>::value);
static_assert(NormPolicy<PreLN>);
static_assert(NormPolicy<PostLN>);
static_assert(NormPolicy<LNS>);
static_assert(NormPolicy<DeepNorm>);
static_assert(NormPolicy<MixLN<>>);
static_assert(NormPolicy<MixLN<PostLN, LNS, 1, 2>>);
static_assert(NormPolicy<SandwichLN>);

namespace {
struct NoApply {
  static constexpr int norms_per_sublayer = 1;
};
struct ApplyReturnsDouble {
  template <class S>
  double apply(S&) const {
    return 0.0;
  }
};
struct ZeroNorms {
  static constexpr int norms_per_sublayer = 0;
  template <class S>
  auto apply(S& s) const {
    return s.x;
  }
};
struct BadInit {
  template <class S>
  auto apply(S& s) const {
    return s.x;
  }
  int init() const { return 0; }
};
// A policy with every optional member, set away from its default.
struct EveryOption {
  static constexpr int norms_per_sublayer = 3;
  template <class S>
  auto apply(S& s) const {
    return s.x;
  }
  bool has_final_norm() const { return false; }
  ScaledInit init() const { return ScaledInit{0.1, 0.2}; }
};
}  // namespace

static_assert(!NormPolicy<NoApply>);
static_assert(!NormPolicy<ApplyReturnsDouble>);
static_assert(!NormPolicy<ZeroNorms>);
static_assert(!NormPolicy<BadInit>);
static_assert(!NormPolicy<int>);
static_assert(NormPolicy<EveryOption>);
static_assert(HasApply<ApplyReturnsDouble> && !ApplyReturnsStream<ApplyReturnsDouble>);

TEST_CASE("PolicyTraits: defaults for members a policy leaves out", "[policy]") {
  STATIC_REQUIRE(PolicyTraits<NormPolicyArchetype>::norms_per_sublayer == 1);
  CHECK(PolicyTraits<NormPolicyArchetype>::has_final_norm(NormPolicyArchetype{}));
  auto init = PolicyTraits<NormPolicyArchetype>::init(NormPolicyArchetype{});
  STATIC_REQUIRE(std::is_same_v<decltype(init), InitNormal>);
  ParamInfo q{ParamRole::q, 1, 4, 8, 8};
  CHECK(init.spec(q).std == 0.02);
}

TEST_CASE("PolicyTraits: members a policy declares are used", "[policy]") {
  STATIC_REQUIRE(PolicyTraits<EveryOption>::norms_per_sublayer == 3);
  STATIC_REQUIRE(PolicyTraits<SandwichLN>::norms_per_sublayer == 2);
  CHECK_FALSE(PolicyTraits<EveryOption>::has_final_norm(EveryOption{}));
  auto init = PolicyTraits<EveryOption>::init(EveryOption{});
  STATIC_REQUIRE(std::is_same_v<decltype(init), ScaledInit>);
  CHECK(init.std == 0.1);
  CHECK(PolicyTraits<PostLN>::has_final_norm(PostLN{}));
  CHECK_FALSE(PolicyTraits<PostLN>::has_final_norm(PostLN{.final_norm = false}));
  CHECK(PolicyTraits<DeepNorm>::has_final_norm(DeepNorm{}));
}

TEST_CASE("NormPolicyArchetype is the identity sub-layer", "[policy]") {
  testing::FakeSublayer fake(11);
  auto s = fake.context(2, 4);
  auto y = NormPolicyArchetype{}.apply(s);
  CHECK(y.value().to_vector() == fake.x.value().to_vector());
  CHECK(fake.branch_calls == 0);
  CHECK(fake.norm_calls.empty());
}
