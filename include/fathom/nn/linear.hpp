// Linear: y = x W^T + b with W stored (out, in) as in PyTorch and Hugging Face Llama (GPT-2's
// Conv1D checkpoints store (in, out): see hf_transposed in arch.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/ops/linear_fp8.hpp"
#include "fathom/nn/parameter.hpp"

namespace fathom::nn {

// How a linear layer runs its GEMMs: `native` in the model's element type T (autograd::linear);
// `fp8` with E4M3 activations and weights and E5M2 gradients, each scaled by its current amax
// (autograd::linear_fp8), results and everything else still in T. fp8 needs T = bf16 or float.
enum class LinearPrecision { native, fp8 };

// Whether T can take LinearPrecision::fp8 (the fp8 GEMMs write bf16 or float).
template <class T>
inline constexpr bool linear_fp8_capable = std::is_same_v<T, bf16> || std::is_same_v<T, float>;

template <class T, DeviceTag D>
class Linear {
 public:
  Linear() = default;
  // `name` is the module's prefix ("model.layers.0.self_attn.q_proj"); parameters are
  // name + ".weight" and, with bias, name + ".bias". `parts` describes the weight for init (one
  // entry per equal slice of its rows).
  Linear(const std::string& name, std::int64_t in, std::int64_t out, bool bias,
         std::vector<policy::ParamInfo> parts, std::vector<NamedParameter<T, D>>& registry)
      : weight_(make_parameter<T, D>(name + ".weight", Shape{out, in})) {
    policy::ParamInfo b;  // the bias belongs to the weight's block
    b.role = policy::ParamRole::bias;
    if (!parts.empty()) {
      b.layer = parts.front().layer;
      b.depth = parts.front().depth;
    }
    registry.push_back({name + ".weight", weight_, std::move(parts)});
    if (bias) {
      bias_ = make_parameter<T, D>(name + ".bias", Shape{out});
      registry.push_back({name + ".bias", bias_, {b}});
    }
  }

  // x (..., in) -> (..., out)
  Var<T, D> forward(const Var<T, D>& x) const {
    if constexpr (linear_fp8_capable<T>) {
      if (precision_ == LinearPrecision::fp8)
        return autograd::linear_fp8(x, weight_, bias_.defined() ? &bias_ : nullptr);
    }
    return bias_.defined() ? autograd::linear(x, weight_, &bias_) : autograd::linear(x, weight_);
  }

  // x quantized already (autograd::quantize_fp8_input), shared with other layers that read it;
  // fp8 layers only.
  Var<T, D> forward(const autograd::Fp8Input<T, D>& x) const requires linear_fp8_capable<T> {
    FATHOM_CHECK(precision_ == LinearPrecision::fp8,
                 "Linear: a quantized input needs a layer set to LinearPrecision::fp8");
    return autograd::linear_fp8(x, weight_, bias_.defined() ? &bias_ : nullptr);
  }

  void set_precision(LinearPrecision p) {
    FATHOM_CHECK(p == LinearPrecision::native || linear_fp8_capable<T>,
                 "Linear: fp8 GEMMs need bf16 or float weights, not " << Precision<T>::name);
    precision_ = p;
  }
  LinearPrecision precision() const { return precision_; }

  const Var<T, D>& weight() const { return weight_; }
  const Var<T, D>& bias() const { return bias_; }  // undefined without bias
  bool has_bias() const { return bias_.defined(); }

 private:
  Var<T, D> weight_;  // (out, in)
  Var<T, D> bias_;    // (out)
  LinearPrecision precision_ = LinearPrecision::native;
};

}  // namespace fathom::nn
