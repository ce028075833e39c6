// Attention: causal multi-head self-attention with q, k, v and output projections, rotary
// positions (Llama) or none (GPT-2 adds learned positions to the embeddings), and either separate
// q/k/v projections or one fused (3C, C) projection split in three (GPT-2 c_attn).
#pragma once

#include <initializer_list>
#include <string>
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

  // x (B, T, C) -> (B, T, C)
  Var<T, D> forward(const Var<T, D>& x) const {
    Var<T, D> q, k, v;
    if (fused_ && !rope_) {  // (B, T, 3C) read in place by the attention kernels
      return out_.forward(autograd::attention_qkv(qkv_.forward(x), heads_, /*causal=*/true));
    }
    if (fused_) {
      auto parts = autograd::split_last(qkv_.forward(x), 3);  // (B, T, 3C) -> 3 x (B, T, C)
      q = parts[0];
      k = parts[1];
      v = parts[2];
    } else if (q_.precision() == LinearPrecision::fp8) {  // x quantized once for q, k and v
      if constexpr (linear_fp8_capable<T>) {
        const auto xq = autograd::quantize_fp8_input(x);
        q = q_.forward(xq);
        k = k_.forward(xq);
        v = v_.forward(xq);
      }
    } else {
      q = q_.forward(x);
      k = k_.forward(x);
      v = v_.forward(x);
    }
    if (rope_) {
      q = autograd::rope(q, heads_, theta_);
      k = autograd::rope(k, heads_, theta_);
    }
    return out_.forward(autograd::attention(q, k, v, heads_, /*causal=*/true));
  }

  const Linear<T, D>& out_proj() const { return out_; }

  // The precision of every projection's GEMMs (see LinearPrecision).
  void set_linear_precision(LinearPrecision p) {
    for (Linear<T, D>* l : {&q_, &k_, &v_, &qkv_, &out_}) l->set_precision(p);
  }

 private:
  int heads_ = 1;
  bool rope_ = true;
  bool fused_ = false;
  double theta_ = 10000.0;
  Linear<T, D> q_, k_, v_, qkv_, out_;
};

}  // namespace fathom::nn
