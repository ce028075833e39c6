// MLP: SwiGLU down(silu(gate(x)) * up(x)) (Llama; gate and up as one GEMM against their weights
// stacked at each forward) or GELU c_proj(gelu(c_fc(x))) (GPT-2, tanh form).
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "fathom/autograd/ops/activation.hpp"
#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/linear.hpp"

namespace fathom::nn {

template <class T, DeviceTag D>
class MLP {
 public:
  MLP() = default;
  MLP(const ModelConfig& c, const BlockNames& names, int layer,
      std::vector<NamedParameter<T, D>>& registry)
      : kind_(arch_spec(c.arch).mlp) {
    const std::int64_t C = c.d_model, F = c.d_ff;
    auto info = [&](policy::ParamRole role, std::int64_t in, std::int64_t out) {
      policy::ParamInfo p;
      p.role = role;
      p.layer = layer;
      p.depth = c.layers;
      p.fan_in = in;
      p.fan_out = out;
      return p;
    };
    using policy::ParamRole;
    if (kind_ == MlpKind::swiglu)
      gate_ =
          Linear<T, D>(names.mlp_gate, C, F, c.bias, {info(ParamRole::mlp_gate, C, F)}, registry);
    up_ = Linear<T, D>(names.mlp_up, C, F, c.bias, {info(ParamRole::mlp_up, C, F)}, registry);
    down_ = Linear<T, D>(names.mlp_down, F, C, c.bias, {info(ParamRole::mlp_down, F, C)}, registry);
  }

  // x (B, T, C) -> (B, T, C); with `add`, the down projection adds add.scale * add.x in its GEMM's
  // epilogue (a residual sub-layer's add, autograd::Residual).
  Var<T, D> forward(const Var<T, D>& x, const autograd::Residual<T, D>& add = {}) const {
    if constexpr (linear_fp8_capable<T>) {
      // fp8 without biases: SwiGLU inside the quantize passes around it (autograd::swiglu_mlp_fp8),
      // the gate/up GEMM in gate_proj's scaling state, the down projection in its own.
      if (kind_ == MlpKind::swiglu && gate_.precision() == LinearPrecision::fp8 &&
          down_.precision() == LinearPrecision::fp8 && !up_.has_bias() && !down_.has_bias())
        return autograd::swiglu_mlp_fp8(
            x, autograd::concat_rows<T, D>({gate_.weight(), up_.weight()}), down_.weight(),
            &gate_.fp8_scaling(), &down_.fp8_scaling(), add);
    }
    if (kind_ == MlpKind::swiglu) {
      // Without biases and outside fp8: autograd::linear_swiglu, the composition's nodes with
      // SwiGLU in the gate/up GEMM's epilogue where kernels::swiglu_epilogue() is on (CUDA).
      if (gate_.precision() != LinearPrecision::fp8 && !up_.has_bias())
        return down_.forward(
            autograd::linear_swiglu(x, autograd::concat_rows<T, D>({gate_.weight(), up_.weight()})),
            add);
      return down_.forward(autograd::swiglu_stacked(gate_up(x)), add);
    }
    // fp8: the two GEMMs of linear_fp8 around a separate GELU.
    if (up_.precision() == LinearPrecision::fp8)
      return down_.forward(autograd::gelu(up_.forward(x)), add);
    // One fused node: GELU in the GEMM epilogues (see autograd::gelu_mlp).
    return autograd::gelu_mlp(x, up_.weight(), up_.has_bias() ? &up_.bias() : nullptr,
                              down_.weight(), down_.has_bias() ? &down_.bias() : nullptr, add);
  }

  const Linear<T, D>& down_proj() const { return down_; }
  // The separate gate and up projections (Llama; gate_proj has no parameters for GPT-2).
  const Linear<T, D>& gate_proj() const { return gate_; }
  const Linear<T, D>& up_proj() const { return up_; }

  // The precision of every projection's GEMMs (see LinearPrecision, Fp8Recipe).
  void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    for (Linear<T, D>* l : {&gate_, &up_, &down_}) l->set_precision(p, recipe);
  }
  // The delayed-scaling histories of the projections that run (the stacked gate/up GEMM keeps its
  // under gate_proj's name).
  void append_fp8_histories(std::vector<NamedFp8History<D>>& out) const {
    (kind_ == MlpKind::swiglu ? gate_ : up_).append_fp8_histories(out);
    down_.append_fp8_histories(out);
  }

 private:
  // x (B, T, C) -> (B, T, 2F): gate in [0, F) and up in [F, 2F) of the last dimension, one GEMM
  // against the gate and up weights stacked into (2F, C) for this forward (a 2F x C copy; the
  // backward splits the stacked weight gradient back into the two parameters). The parameters stay
  // two, with their names, shapes, checkpoints and init roles. Under fp8 x is quantized once and
  // the stacked weight as one tensor.
  Var<T, D> gate_up(const Var<T, D>& x) const {
    const Var<T, D> w = autograd::concat_rows<T, D>({gate_.weight(), up_.weight()});
    Var<T, D> b;
    if (up_.has_bias()) b = autograd::concat_rows<T, D>({gate_.bias(), up_.bias()});
    return gate_.forward(x, w, b);  // in gate_proj's precision and fp8 scaling state
  }

  MlpKind kind_ = MlpKind::swiglu;
  Linear<T, D> gate_, up_, down_;
};

}  // namespace fathom::nn
