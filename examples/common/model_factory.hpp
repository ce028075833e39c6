// The one place where fathom's programs turn a policy name and an architecture into a model type.
// An unknown name fails with a message listing the valid ones.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#if defined(__CUDACC__)
#include <fathom/cuda.hpp>
#endif

#include "programs.hpp"

#include "fathom/nn/arch.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "fathom/train/trainer.hpp"

namespace fathom::programs {

template <class Arch, class T, DeviceTag D>
std::unique_ptr<train::LanguageModel<T, D>> make_model_for_arch(const nn::ModelConfig& c, const std::string& policy,
                                                                const nlohmann::json& opts) {
  using train::DecoderModel;
  if (policy == "pre-ln") return std::make_unique<DecoderModel<Arch, policy::PreLN, T, D>>(c, policy::PreLN{});
  if (policy == "post-ln") {
    policy::PostLN p;
    p.final_norm = opts.value("final_norm", true);
    return std::make_unique<DecoderModel<Arch, policy::PostLN, T, D>>(c, p);
  }
  if (policy == "lns") return std::make_unique<DecoderModel<Arch, policy::LNS, T, D>>(c, policy::LNS{});
  if (policy == "deepnorm") {
    policy::DeepNorm p;
    if (opts.contains("alpha")) p.alpha = opts.at("alpha").get<double>();
    if (opts.contains("beta")) p.beta = opts.at("beta").get<double>();
    return std::make_unique<DecoderModel<Arch, policy::DeepNorm, T, D>>(c, p);
  }
  if (policy == "mix-ln") return std::make_unique<DecoderModel<Arch, policy::MixLN<>, T, D>>(c, policy::MixLN<>{});
  if (policy == "sandwich-ln")
    return std::make_unique<DecoderModel<Arch, policy::SandwichLN, T, D>>(c, policy::SandwichLN{});
  check_policy_name(policy);
  return nullptr;
}

// A freshly constructed (not yet initialized) model of c's architecture normalized by `policy`.
template <class T, DeviceTag D>
std::unique_ptr<train::LanguageModel<T, D>> make_model(const nn::ModelConfig& c, const std::string& policy,
                                                       const nlohmann::json& opts = nlohmann::json::object()) {
  if (c.arch == nn::ArchKind::llama) return make_model_for_arch<nn::Llama, T, D>(c, policy, opts);
  return make_model_for_arch<nn::Gpt2, T, D>(c, policy, opts);
}

}  // namespace fathom::programs
