// The one place where fathom's programs turn strings into types: policy names, architectures,
// precisions and devices. Every unknown name fails with a message listing the valid ones.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#if defined(__CUDACC__)
#include <fathom/cuda.hpp>
#endif

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

inline constexpr std::array<std::string_view, 6> policy_names = {"pre-ln", "post-ln", "lns",
                                                                 "deepnorm", "mix-ln", "sandwich-ln"};

inline std::string joined(auto const& names) {
  std::string s;
  for (auto n : names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

inline void check_policy_name(const std::string& name) {
  for (auto n : policy_names)
    if (n == name) return;
  FATHOM_FAIL("unknown policy '" << name << "'; valid policies: " << joined(policy_names));
}

inline void check_choice(const char* flag, const std::string& value, std::initializer_list<std::string_view> valid) {
  for (auto v : valid)
    if (v == value) return;
  std::string s;
  for (auto v : valid) s += (s.empty() ? "" : ", ") + std::string(v);
  FATHOM_FAIL(flag << ": unknown value '" << value << "'; valid values: " << s);
}

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

inline bool cuda_built() {
#if defined(__CUDACC__)
  return true;
#else
  return false;
#endif
}

inline bool cuda_available() {
#if defined(__CUDACC__)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

// "auto" becomes cuda when this program was built with CUDA and a GPU is present, else cpu.
inline std::string resolve_device(const std::string& device) {
  check_choice("--device", device, {"auto", "cpu", "cuda"});
  if (device == "auto") return cuda_available() ? "cuda" : "cpu";
  if (device == "cuda") {
    FATHOM_CHECK(cuda_built(), "--device cuda: this program was built without CUDA (configure with nvcc "
                               "available and FATHOM_ENABLE_CUDA=ON)");
    FATHOM_CHECK(cuda_available(), "--device cuda: no CUDA GPU is visible");
  }
  return device;
}

// Calls fn.template operator()<T, D>() for the precision and device named.
template <class Fn>
decltype(auto) dispatch_precision_device(const std::string& precision, const std::string& device, Fn&& fn) {
  check_choice("--precision", precision, {"fp32", "bf16"});
#if defined(__CUDACC__)
  if (device == "cuda") {
    if (precision == "bf16") return fn.template operator()<bf16, Cuda>();
    return fn.template operator()<float, Cuda>();
  }
#endif
  FATHOM_CHECK(device == "cpu", "--device: '" << device << "' is not available in this build");
  if (precision == "bf16") return fn.template operator()<bf16, Cpu>();
  return fn.template operator()<float, Cpu>();
}

}  // namespace fathom::programs
