// NamedParameter: a trainable leaf Var with its stable (Hugging Face) name and what it is for init,
// and initialize(), which draws every parameter from an init policy, the same on every device.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/policy/init.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::nn {

// `var` shares its value and gradient with the module that owns it: update values in place
// (optimizer steps, mutable_value().copy_(loaded)), never by assigning a new tensor to a copy.
template <class T, DeviceTag D>
struct NamedParameter {
  NamedParameter() = default;
  NamedParameter(std::string name_, Var<T, D> var_, std::vector<policy::ParamInfo> parts_ = {})
      : name(std::move(name_)), var(std::move(var_)), parts(std::move(parts_)) {}

  std::string name;
  Var<T, D> var;
  // What the parameter is, for init. One entry per equal slice along dimension 0: a fused GPT-2
  // c_attn weight (3C, C) has three (q, k, v), everything else one. Empty for parameters made
  // outside a model (an optimizer's tests).
  std::vector<policy::ParamInfo> parts;

  // The 0-based block the parameter belongs to, or -1 (embeddings, final norm, LM head).
  int block() const { return parts.empty() ? -1 : parts.front().layer - 1; }
};

// A leaf Var that requires a gradient, named `name`, uninitialized until initialize() runs.
template <class T, DeviceTag D>
Var<T, D> make_parameter(const std::string& name, const Shape& shape) {
  return Var<T, D>(Tensor<T, D>::zeros(shape), true, name);
}

namespace detail {

// 64-bit FNV-1a of a parameter name: its random stream, so a parameter's initial values depend on
// the seed and its name only, not on which other parameters exist or in what order they are made.
inline std::uint64_t name_stream(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace detail

using InitFn = std::function<policy::InitSpec(const policy::ParamInfo&)>;

// Draws every parameter from `spec_of(part)`, on the host with fathom::rng (stream: seed and the
// parameter's name, plus the part index), then copies it to the parameter's device. Gradients are
// released.
template <class T, DeviceTag D>
void initialize(std::vector<NamedParameter<T, D>>& params, std::uint64_t seed,
                const InitFn& spec_of) {
  for (auto& p : params) {
    Tensor<T, D>& value = p.var.mutable_value();
    const std::int64_t rows = value.size(0);
    const auto n_parts = static_cast<std::int64_t>(p.parts.size());
    FATHOM_CHECK(n_parts >= 1 && rows % n_parts == 0,
                 "initialize: parameter " << p.name << " of shape " << value.shape() << " has "
                                          << n_parts << " init parts; expected a divisor of "
                                          << rows);
    Tensor<T, Cpu> host(value.shape());
    const std::int64_t part_rows = rows / n_parts;
    const std::uint64_t stream = detail::name_stream(p.name);
    for (std::int64_t k = 0; k < n_parts; ++k) {
      const policy::InitSpec spec = spec_of(p.parts[static_cast<std::size_t>(k)]);
      Tensor<T, Cpu> part = host.slice(0, k * part_rows, (k + 1) * part_rows);  // contiguous rows
      if (spec.kind == policy::InitSpec::Kind::constant) {
        part.fill_(scalar_cast<T>(spec.value));
      } else {
        const std::uint64_t s = rng::derive_seed(seed, stream + static_cast<std::uint64_t>(k));
        part.copy_(Tensor<T, Cpu>::randn(part.shape(), s, spec.std));
      }
    }
    value.copy_(host);
    p.var.zero_grad(true);
  }
}

// Drops every parameter's gradient (the next backward writes them fresh): what a training step
// leaves behind (train::TrainStep) and what diagnostics restore after their own backward.
template <class T, DeviceTag D>
void release_gradients(std::vector<NamedParameter<T, D>>& params) {
  for (auto& p : params) p.var.zero_grad(/*release=*/true);
}

// Total number of elements.
template <class T, DeviceTag D>
std::int64_t count_elements(const std::vector<NamedParameter<T, D>>& params) {
  std::int64_t n = 0;
  for (const auto& p : params) n += p.var.numel();
  return n;
}

}  // namespace fathom::nn
