// The one table of fathom's built-in policies: each name (--policy, a checkpoint's "policy"), what
// it is, and how its options (config.json's "policy_options") become the policy object. Programs
// list names from it and each backend translation unit compiles its models from it.
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"

namespace fathom::programs {

// Calls visit.template operator()<Policy>(name, description, from_options) once per built-in
// policy, in the order --help lists them.
template <class Visit>
void for_each_builtin_policy(Visit&& visit) {
  visit.template operator()<policy::PreLN>("pre-ln", "Pre-LN: x + F(N(x))", nullptr);
  visit.template operator()<policy::PostLN>("post-ln", "Post-LN: N(x + F(x))",
                                            [](const nlohmann::json& o) {
                                              policy::PostLN p;
                                              p.final_norm = o.value("final_norm", true);
                                              return p;
                                            });
  visit.template operator()<policy::LNS>("lns", "LayerNorm Scaling: x + F(N(x) / sqrt(l))",
                                         nullptr);
  visit.template operator()<policy::DeepNorm>(
      "deepnorm", "DeepNorm: N(alpha x + F(x)), init gain beta", [](const nlohmann::json& o) {
        policy::DeepNorm p;
        if (o.contains("alpha")) p.alpha = o.at("alpha").get<double>();
        if (o.contains("beta")) p.beta = o.at("beta").get<double>();
        return p;
      });
  visit.template operator()<policy::MixLN<>>(
      "mix-ln", "Mix-LN: Post-LN in the first quarter, Pre-LN after", nullptr);
  visit.template operator()<policy::SandwichLN>("sandwich-ln",
                                                "Sandwich-LN (Peri-LN): x + N(F(N(x)))", nullptr);
}

}  // namespace fathom::programs
