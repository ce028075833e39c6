// Linear: y = x W^T + b with W stored (out, in) as in PyTorch and Hugging Face Llama (GPT-2's
// Conv1D checkpoints store (in, out): see hf_transposed in arch.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/ops/linear_fp8.hpp"
#include "fathom/nn/parameter.hpp"

namespace fathom::nn {

// How a linear layer runs its GEMMs: `native` in the model's element type T (autograd::linear);
// `fp8` with E4M3 activations and weights and E5M2 gradients, each scaled per tensor as the
// Fp8Recipe says (autograd::linear_fp8), results and everything else still in T. fp8 needs
// T = bf16 or float.
enum class LinearPrecision { native, fp8 };

// How fp8 layers scale what they quantize. `current`: every tensor by its own amax, measured by a
// pass over it just before it is quantized. `delayed`: activations and gradients by the largest
// amax of their last `history` quantizations (autograd::Fp8History), which saves that pass; the
// weights keep current scaling. Delayed scaling is state that training changes: checkpoints hold
// it (LanguageModel::fp8_histories).
enum class Fp8Scaling { current, delayed };

inline std::string_view to_string(Fp8Scaling s) {
  return s == Fp8Scaling::current ? "current" : "delayed";
}

struct Fp8Recipe {
  Fp8Scaling scaling = Fp8Scaling::current;
  int history = autograd::Fp8History<Cpu>::default_length;  // delayed: quantizations remembered
  // delayed: headroom of 2^margin below the format's largest value (autograd::Fp8History), for
  // tensors whose amax grows faster than the history follows. 2: on llama-130m's 2000-step curve
  // (bench/fp8_curve.sh, docs/performance.md) it kept every 100-step window of the training loss
  // within 0.71% of bf16's, against 1.19% with no margin (early, while the loss falls fastest).
  int margin = 2;
};

// Named delayed-scaling histories of a model (checkpoint records).
template <DeviceTag D>
using NamedFp8History = std::pair<std::string, autograd::Fp8History<D>*>;

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
      : name_(name), weight_(make_parameter<T, D>(name + ".weight", Shape{out, in})) {
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

  // x (..., in) -> (..., out); with `add`, plus add.scale * add.x in the GEMM's epilogue
  // (autograd::Residual).
  Var<T, D> forward(const Var<T, D>& x, const autograd::Residual<T, D>& add = {}) const {
    return forward(x, weight_, bias_, add);
  }

  // x (..., in) -> (..., out) through another weight (and bias, or an undefined Var for none) in
  // this layer's precision and fp8 scaling state: a projection whose weights several layers' are
  // stacked into (Attention, MLP) runs as the first of them.
  Var<T, D> forward(const Var<T, D>& x, const Var<T, D>& weight, const Var<T, D>& bias,
                    const autograd::Residual<T, D>& add = {}) const {
    const Var<T, D>* b = bias.defined() ? &bias : nullptr;
    if constexpr (linear_fp8_capable<T>) {
      if (precision_ == LinearPrecision::fp8)
        return autograd::linear_fp8(x, weight, b, &scaling_, add);
    }
    return autograd::linear(x, weight, b, add);
  }

  // x quantized already (autograd::quantize_fp8_input), shared with other layers that read it;
  // fp8 layers only.
  Var<T, D> forward(const autograd::Fp8Input<T, D>& x) const requires linear_fp8_capable<T> {
    FATHOM_CHECK(precision_ == LinearPrecision::fp8,
                 "Linear: a quantized input needs a layer set to LinearPrecision::fp8");
    return autograd::linear_fp8(x, weight_, bias_.defined() ? &bias_ : nullptr, &scaling_);
  }

  // The precision of the layer's GEMMs and, for fp8, how they scale; delayed scaling starts with
  // empty histories.
  void set_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    FATHOM_CHECK(p == LinearPrecision::native || linear_fp8_capable<T>,
                 "Linear: fp8 GEMMs need bf16 or float weights, not " << Precision<T>::name);
    precision_ = p;
    scaling_ = {};
    if (p == LinearPrecision::fp8 && recipe.scaling == Fp8Scaling::delayed)
      scaling_ = {std::make_shared<autograd::Fp8History<D>>(recipe.history, recipe.margin),
                  std::make_shared<autograd::Fp8History<D>>(recipe.history, recipe.margin)};
  }
  LinearPrecision precision() const { return precision_; }
  // Delayed scaling's histories of an fp8 layer (null members: current scaling), for the fused
  // ops that run this layer's GEMMs themselves (autograd::swiglu_mlp_fp8).
  const autograd::Fp8LinearScaling<D>& fp8_scaling() const { return scaling_; }

  // The layer's delayed-scaling histories (none otherwise), named after the layer: NAME.fp8_input
  // and NAME.fp8_grad_output.
  void append_fp8_histories(std::vector<NamedFp8History<D>>& out) const {
    if (scaling_.input) out.emplace_back(name_ + ".fp8_input", scaling_.input.get());
    if (scaling_.grad_output)
      out.emplace_back(name_ + ".fp8_grad_output", scaling_.grad_output.get());
  }

  const Var<T, D>& weight() const { return weight_; }
  const Var<T, D>& bias() const { return bias_; }  // undefined without bias
  bool has_bias() const { return bias_.defined(); }

 private:
  std::string name_;
  Var<T, D> weight_;  // (out, in)
  Var<T, D> bias_;    // (out)
  LinearPrecision precision_ = LinearPrecision::native;
  autograd::Fp8LinearScaling<D> scaling_;  // delayed scaling's histories, or none
};

}  // namespace fathom::nn
