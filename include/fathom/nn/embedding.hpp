// Embedding: a (V, C) table looked up by integer ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fathom/autograd/ops/embedding.hpp"
#include "fathom/nn/parameter.hpp"

namespace fathom::nn {

template <class T, DeviceTag D>
class Embedding {
 public:
  Embedding() = default;
  // The parameter is name + ".weight" ("model.embed_tokens.weight").
  Embedding(const std::string& name, std::int64_t count, std::int64_t dim, policy::ParamRole role,
            std::vector<NamedParameter<T, D>>& registry)
      : weight_(make_parameter<T, D>(name + ".weight", Shape{count, dim})) {
    policy::ParamInfo info;
    info.role = role;
    info.fan_in = count;
    info.fan_out = dim;
    registry.push_back({name + ".weight", weight_, {info}});
  }

  // ids (any shape) -> (..., C)
  Var<T, D> forward(const Tensor<std::int32_t, D>& ids) const {
    return autograd::embedding(ids, weight_);
  }

  const Var<T, D>& weight() const { return weight_; }

 private:
  Var<T, D> weight_;  // (V, C)
};

}  // namespace fathom::nn
