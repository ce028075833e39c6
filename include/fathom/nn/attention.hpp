// Attention: causal multi-head self-attention with q, k, v and output projections, rotary
// positions (Llama) or none (GPT-2 adds learned positions to the embeddings), and either separate
// q/k/v weights (Llama; stacked into one GEMM at each forward) or one fused (3C, C) projection
// (GPT-2 c_attn).
#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "fathom/autograd/ops/attention.hpp"
#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/autograd/ops/rope.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/linear.hpp"

namespace fathom::nn {

template <class T, DeviceTag D>
class Attention {
 public:
  Attention() = default;
  // Block `layer` (1-based) of `c.layers`; parameter names from `names`.
  Attention(const ModelConfig& c, const BlockNames& names, int layer,
            std::vector<NamedParameter<T, D>>& registry)
      : heads_(c.heads),
        rope_(arch_spec(c.arch).rope),
        fused_(arch_spec(c.arch).fused_qkv),
        theta_(c.rope_theta) {
    const std::int64_t C = c.d_model;
    auto info = [&](policy::ParamRole role) {
      policy::ParamInfo p;
      p.role = role;
      p.layer = layer;
      p.depth = c.layers;
      p.fan_in = C;
      p.fan_out = C;
      return p;
    };
    using policy::ParamRole;
    if (fused_) {
      qkv_ = Linear<T, D>(names.qkv, C, 3 * C, c.bias,
                          {info(ParamRole::q), info(ParamRole::k), info(ParamRole::v)}, registry);
    } else {
      q_ = Linear<T, D>(names.q, C, C, c.bias, {info(ParamRole::q)}, registry);
      k_ = Linear<T, D>(names.k, C, C, c.bias, {info(ParamRole::k)}, registry);
      v_ = Linear<T, D>(names.v, C, C, c.bias, {info(ParamRole::v)}, registry);
    }
    out_ = Linear<T, D>(names.attn_out, C, C, c.bias, {info(ParamRole::attn_out)}, registry);
  }

  // x (B, T, C) -> (B, T, C). q, k and v come from one GEMM into a (B, T, 3C) projection (the
  // fused weight, or Llama's three weights stacked), RoPE turns its q and k thirds in place, and
  // the attention kernels read it in place (rope_attention_qkv: the attention backward also
  // undoes the turn on the gradient, so RoPE costs one pass a step instead of two).
  // With `add`, the output projection adds add.scale * add.x in its GEMM's epilogue (a residual
  // sub-layer's add, autograd::Residual).
  Var<T, D> forward(const Var<T, D>& x, const autograd::Residual<T, D>& add = {}) const {
    Var<T, D> qkv = fused_ ? qkv_.forward(x) : stacked_projection(x);  // (B, T, 3C)
    if (rope_)
      return out_.forward(autograd::rope_attention_qkv(std::move(qkv), heads_, theta_), add);
    return out_.forward(autograd::attention_qkv(qkv, heads_, /*causal=*/true), add);
  }

  const Linear<T, D>& out_proj() const { return out_; }
  // The separate q, k and v projections (Llama); unused (no parameters) when the projection is
  // fused.
  const Linear<T, D>& q_proj() const { return q_; }
  const Linear<T, D>& k_proj() const { return k_; }
  const Linear<T, D>& v_proj() const { return v_; }

  // The precision of every projection's GEMMs (see LinearPrecision, Fp8Recipe).
  void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    for (Linear<T, D>* l : {&q_, &k_, &v_, &qkv_, &out_}) l->set_precision(p, recipe);
  }
  // The delayed-scaling histories of the projections that run (the stacked q/k/v GEMM keeps its
  // under q_proj's name).
  void append_fp8_histories(std::vector<NamedFp8History<D>>& out) const {
    (fused_ ? qkv_ : q_).append_fp8_histories(out);
    out_.append_fp8_histories(out);
  }

 private:
  // x (B, T, C) -> (B, T, 3C): q, k and v side by side, one GEMM against the q, k and v weights
  // stacked into (3C, C) for this forward (a 3C x C copy; the backward splits the stacked weight
  // gradient back into the three parameters). The parameters stay three, with their names,
  // shapes, checkpoints and init roles. Under fp8 the stacked weight is quantized as one tensor.
  Var<T, D> stacked_projection(const Var<T, D>& x) const {
    const Var<T, D> w = autograd::concat_rows<T, D>({q_.weight(), k_.weight(), v_.weight()});
    Var<T, D> b;
    if (q_.has_bias()) b = autograd::concat_rows<T, D>({q_.bias(), k_.bias(), v_.bias()});
    return q_.forward(x, w, b);  // in q_proj's precision and fp8 scaling state
  }

  int heads_ = 1;
  bool rope_ = true;
  bool fused_ = false;
  double theta_ = 10000.0;
  Linear<T, D> q_, k_, v_, qkv_, out_;
};

}  // namespace fathom::nn
