// Norm modules: RMSNorm (Llama), LayerNorm (GPT-2), and Norm, which holds either so that blocks
// are not templated on the architecture. Every forward takes an output scale that the norm kernel
// folds in (LNS's 1/sqrt(l) costs nothing).
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "fathom/autograd/ops/norm.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/parameter.hpp"

namespace fathom::nn {

inline policy::ParamInfo norm_info(policy::ParamRole role, int layer, int depth) {
  policy::ParamInfo info;
  info.role = role;
  info.layer = layer;
  info.depth = depth;
  return info;
}

// y = w * x / sqrt(mean(x^2) + eps) * out_scale, over the last dimension.
template <class T, DeviceTag D>
class RMSNorm {
 public:
  RMSNorm() = default;
  RMSNorm(const std::string& name, std::int64_t dim, double eps, int layer, int depth,
          std::vector<NamedParameter<T, D>>& registry)
      : weight_(make_parameter<T, D>(name + ".weight", Shape{dim})), eps_(eps) {
    registry.push_back(
        {name + ".weight", weight_, {norm_info(policy::ParamRole::norm_weight, layer, depth)}});
  }

  // x (..., C) -> (..., C)
  Var<T, D> forward(const Var<T, D>& x, double out_scale = 1.0) const {
    return autograd::rms_norm(x, weight_, eps_, out_scale);
  }

  const Var<T, D>& weight() const { return weight_; }
  double eps() const { return eps_; }

 private:
  Var<T, D> weight_;  // (C)
  double eps_ = 1e-6;
};

// y = (w * (x - mean) / sqrt(var + eps) + b) * out_scale, over the last dimension.
template <class T, DeviceTag D>
class LayerNorm {
 public:
  LayerNorm() = default;
  LayerNorm(const std::string& name, std::int64_t dim, double eps, int layer, int depth,
            std::vector<NamedParameter<T, D>>& registry)
      : weight_(make_parameter<T, D>(name + ".weight", Shape{dim})),
        bias_(make_parameter<T, D>(name + ".bias", Shape{dim})),
        eps_(eps) {
    registry.push_back(
        {name + ".weight", weight_, {norm_info(policy::ParamRole::norm_weight, layer, depth)}});
    registry.push_back(
        {name + ".bias", bias_, {norm_info(policy::ParamRole::norm_bias, layer, depth)}});
  }

  // x (..., C) -> (..., C)
  Var<T, D> forward(const Var<T, D>& x, double out_scale = 1.0) const {
    return autograd::layer_norm(x, weight_, bias_, eps_, out_scale);
  }

  const Var<T, D>& weight() const { return weight_; }
  const Var<T, D>& bias() const { return bias_; }
  double eps() const { return eps_; }

 private:
  Var<T, D> weight_;  // (C)
  Var<T, D> bias_;    // (C)
  double eps_ = 1e-5;
};

// An RMSNorm or a LayerNorm, chosen at run time by the architecture.
template <class T, DeviceTag D>
class Norm {
 public:
  Norm() = default;
  Norm(NormKind kind, const std::string& name, std::int64_t dim, double eps, int layer, int depth,
       std::vector<NamedParameter<T, D>>& registry) {
    if (kind == NormKind::rms)
      impl_ = RMSNorm<T, D>(name, dim, eps, layer, depth, registry);
    else
      impl_ = LayerNorm<T, D>(name, dim, eps, layer, depth, registry);
  }

  Var<T, D> forward(const Var<T, D>& x, double out_scale = 1.0) const {
    return std::visit([&](const auto& n) { return n.forward(x, out_scale); }, impl_);
  }

  NormKind kind() const { return impl_.index() == 0 ? NormKind::rms : NormKind::layer; }
  const Var<T, D>& weight() const {
    return std::visit([](const auto& n) -> const Var<T, D>& { return n.weight(); }, impl_);
  }

 private:
  std::variant<RMSNorm<T, D>, LayerNorm<T, D>> impl_;
};

}  // namespace fathom::nn
