// PolicyRegistry::add<Policy>: compiles the models of a policy (both architectures, every backend
// this translation unit can compile) and registers them under a name. Include it in the file that
// registers policies; compiled by nvcc (a .cu file), it registers the CUDA models too.
#pragma once

#include <memory>
#include <string>

#if defined(__CUDACC__)
#include <fathom/cuda.hpp>
#endif

#include "builtin_policies.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/policy/norm_policy.hpp"
#include "fathom/nn/language_model.hpp"
#include "policy_registry.hpp"
#include "programs.hpp"

namespace fathom::programs {

// --fp8-scaling (check_fp8_scaling) and --fp8-margin (negative: the recipe's default) as the
// recipe of the models' fp8 linear layers.
inline nn::Fp8Recipe fp8_recipe_of(const std::string& scaling, int margin = -1) {
  check_fp8_scaling(scaling);
  nn::Fp8Recipe r;
  r.scaling = scaling == "delayed" ? nn::Fp8Scaling::delayed : nn::Fp8Scaling::current;
  if (margin >= 0) r.margin = margin;
  return r;
}

namespace detail {

template <class Policy, class T, DeviceTag D>
ModelFactory<T, D> model_factory(PolicyFromOptions<Policy> from_options) {
  return [from_options](const nn::ModelConfig& c,
                        const nlohmann::json& opts) -> std::unique_ptr<nn::LanguageModel<T, D>> {
    if (c.arch == nn::ArchKind::llama)
      return std::make_unique<nn::DecoderModel<nn::Llama, Policy, T, D>>(c, from_options(opts));
    return std::make_unique<nn::DecoderModel<nn::Gpt2, Policy, T, D>>(c, from_options(opts));
  };
}

}  // namespace detail

template <class Policy>
PolicyRegistry& PolicyRegistry::add(const std::string& name, const std::string& description,
                                    PolicyFromOptions<Policy> from_options) {
  static_assert(policy::NormPolicyCheck<Policy>::value);  // a sentence per broken requirement
  add_factory<float, Cpu>(name, description,
                          detail::model_factory<Policy, float, Cpu>(from_options));
  add_factory<bf16, Cpu>(name, description, detail::model_factory<Policy, bf16, Cpu>(from_options));
#if defined(__CUDACC__)
  add_factory<float, Cuda>(name, description,
                           detail::model_factory<Policy, float, Cuda>(from_options));
  add_factory<bf16, Cuda>(name, description,
                          detail::model_factory<Policy, bf16, Cuda>(from_options));
#endif
  return *this;
}

// Registers the built-in policies' models for one backend (each backend translation unit calls it
// for its own T and D, so the models compile once per backend and in parallel).
template <class T, DeviceTag D>
void add_builtin_policies(PolicyRegistry& r) {
  for_each_builtin_policy(
      [&]<class Policy>(const char* name, const char* description, auto from_options) {
        PolicyFromOptions<Policy> make = &default_policy<Policy>;
        if constexpr (!std::is_null_pointer_v<decltype(from_options)>) make = from_options;
        r.add_factory<T, D>(name, description, detail::model_factory<Policy, T, D>(make));
      });
}

}  // namespace fathom::programs
