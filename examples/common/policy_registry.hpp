// PolicyRegistry: the table from a policy's name (--policy, a checkpoint's config.json) to the
// policy type that builds the model. fathom's programs register the built-in policies in it
// (builtin_policies.hpp); a user's program adds its own, one line each, and gets fathom-train,
// fathom-diagnose and generation for them (program_main.hpp, docs/programs.md).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/nn/config.hpp"

namespace fathom::nn {
template <class T, DeviceTag D>
class LanguageModel;  // nn/language_model.hpp
}  // namespace fathom::nn

namespace fathom::programs {

// Builds a freshly constructed (not yet initialized) model of a config's architecture, with the
// policy's options (config.json's "policy_options", e.g. DeepNorm's alpha).
template <class T, DeviceTag D>
using ModelFactory = std::function<std::unique_ptr<nn::LanguageModel<T, D>>(const nn::ModelConfig&,
                                                                            const nlohmann::json&)>;

// A policy object from its options; the default ignores them and default-constructs the policy.
template <class Policy>
using PolicyFromOptions = Policy (*)(const nlohmann::json&);

template <class Policy>
Policy default_policy(const nlohmann::json&) {
  return Policy{};
}

// "fp32 on the CPU" and the like, for messages.
template <class T, DeviceTag D>
std::string backend_name() {
  return std::string(std::is_same_v<T, bf16> ? "bf16" : "fp32") +
         (std::is_same_v<D, Cuda> ? " on CUDA" : " on the CPU");
}

class PolicyRegistry {
 public:
  struct Entry {
    std::string name;
    std::string description;
    std::tuple<ModelFactory<float, Cpu>, ModelFactory<bf16, Cpu>, ModelFactory<float, Cuda>,
               ModelFactory<bf16, Cuda>>
        factories;
  };

  // Registers Policy under `name` for every backend this translation unit can compile: fp32 and
  // bf16 on the CPU, and on CUDA when it is compiled by nvcc. Defined in register_policy.hpp, which
  // compiles the models (include it where you register, not where you only look names up).
  template <class Policy>
  PolicyRegistry& add(const std::string& name, const std::string& description,
                      PolicyFromOptions<Policy> from_options = &default_policy<Policy>);

  // Registers one backend's factory for `name` (add() calls it per backend).
  template <class T, DeviceTag D>
  void add_factory(const std::string& name, const std::string& description,
                   ModelFactory<T, D> factory) {
    Entry& e = entry(name, description);
    auto& slot = std::get<ModelFactory<T, D>>(e.factories);
    const std::string backend = backend_name<T, D>();
    FATHOM_CHECK(!slot, "policy '" << name << "' is registered twice (" << backend << ")");
    slot = std::move(factory);
  }

  bool contains(const std::string& name) const { return find(name) != nullptr; }

  // The names in registration order: the built-in ones first, then the program's own.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& e : entries_) n.push_back(e.name);
    return n;
  }
  const std::vector<Entry>& entries() const { return entries_; }

  // "pre-ln, post-ln, ...": for messages and --help.
  std::string joined_names() const {
    std::string s;
    for (const auto& e : entries_) s += (s.empty() ? "" : ", ") + e.name;
    return s;
  }

  // Throws unless `name` is registered: "unknown policy 'x'; valid policies: ...".
  void check(const std::string& name) const {
    FATHOM_CHECK(contains(name),
                 "unknown policy '" << name << "'; valid policies: " << joined_names());
  }

  // The model for a policy named by a checkpoint (`where` names it in messages). An unknown name
  // says which names this program knows and how a program learns another one.
  template <class T, DeviceTag D>
  std::unique_ptr<nn::LanguageModel<T, D>> make_model(const nn::ModelConfig& c,
                                                      const std::string& name,
                                                      const nlohmann::json& options,
                                                      const std::string& where = "") const {
    const Entry* e = find(name);
    FATHOM_CHECK(e != nullptr, (where.empty() ? std::string() : where + ": ")
                                   << "policy '" << name
                                   << "' is not known to this program (it knows " << joined_names()
                                   << "); a program that registers it can load this: "
                                      "policies.add<YourPolicy>(\""
                                   << name << "\", \"...\") in its main (docs/programs.md)");
    const auto& f = std::get<ModelFactory<T, D>>(e->factories);
    const std::string backend = backend_name<T, D>();
    const char* how = std::is_same_v<D, Cuda>
                          ? "register it in a file compiled by nvcc (a .cu file)"
                          : "register it with PolicyRegistry::add";
    FATHOM_CHECK(static_cast<bool>(f),
                 "policy '" << name << "' has no " << backend << " model in this program; " << how);
    return f(c, options);
  }

 private:
  const Entry* find(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  Entry& entry(const std::string& name, const std::string& description) {
    for (auto& e : entries_)
      if (e.name == name) return e;
    FATHOM_CHECK(!name.empty() && name.find_first_of(" ,\t\n") == std::string::npos,
                 "a policy name is one word without commas, got '" << name << "'");
    entries_.push_back(Entry{name, description, {}});
    return entries_.back();
  }

  std::vector<Entry> entries_;
};

// fathom's built-in policies, registered for every backend this program was built with.
PolicyRegistry builtin_policies();

}  // namespace fathom::programs
