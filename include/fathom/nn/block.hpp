// Block<Policy, T, D>: one Transformer block, an attention sub-layer then an MLP sub-layer, each
// turned into a new residual stream by the norm policy; and the observer hook that diagnostics use
// to see inside it.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/attention.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/mlp.hpp"
#include "fathom/nn/norm.hpp"
#include "fathom/policy/norm_policy.hpp"
#include "fathom/policy/sublayer.hpp"
#include "fathom/policy/traits.hpp"

namespace fathom::nn {

// Where an observer sees the model's values, in the order they are reported for each block:
//   block_input   the residual stream entering the block, (B, T, C)
//   attn_input    what the policy passed to the attention branch (e.g. LNS: N(x) / sqrt(l))
//   attn_branch   the attention branch's output F(...)
//   mlp_input     what the policy passed to the MLP branch
//   mlp_branch    the MLP branch's output
//   block_output  the stream leaving the block
// A skipped block reports only block_input and block_output (equal). After the last block,
// DecoderLM reports (L, final_norm, ...) when the model has a final norm.
enum class Site {
  block_input,
  attn_input,
  attn_branch,
  mlp_input,
  mlp_branch,
  block_output,
  final_norm
};

inline std::string_view to_string(Site s) {
  constexpr std::string_view names[] = {"block_input", "attn_input",   "attn_branch", "mlp_input",
                                        "mlp_branch",  "block_output", "final_norm"};
  return names[static_cast<int>(s)];
}

// Called during forward with (block index, site, value); the block index is 0-based (block i is
// policy layer l = i + 1). The values are the graph's own Vars: keep them (or their gradients,
// with retain_grad) but do not modify them.
template <class T, DeviceTag D>
using Observer = std::function<void(int, Site, const Var<T, D>&)>;

template <class Policy, FloatingScalar T, DeviceTag D>
class Block {
  static_assert(policy::NormPolicyCheck<Policy>::value);

 public:
  static constexpr int norms_per_sublayer = policy::PolicyTraits<Policy>::norms_per_sublayer;

  // Block `layer` (1-based) of c.layers, named by `names` (BlockNames of the architecture).
  Block(const ModelConfig& c, const BlockNames& names, int layer,
        std::vector<NamedParameter<T, D>>& registry)
      : layer_(layer), depth_(c.layers) {
    FATHOM_CHECK(static_cast<int>(names.attn_norms.size()) == norms_per_sublayer &&
                     static_cast<int>(names.mlp_norms.size()) == norms_per_sublayer,
                 "Block: expected " << norms_per_sublayer << " norm names per sub-layer, got "
                                    << names.attn_norms.size() << " and "
                                    << names.mlp_norms.size());
    attn_ = Attention<T, D>(c, names, layer, registry);
    mlp_ = MLP<T, D>(c, names, layer, registry);
    const NormKind kind = arch_spec(c.arch).norm;
    for (int s = 0; s < norms_per_sublayer; ++s) {
      attn_norms_.emplace_back(kind, names.attn_norms[static_cast<std::size_t>(s)], c.d_model,
                               c.norm_eps, layer, c.layers, registry);
      mlp_norms_.emplace_back(kind, names.mlp_norms[static_cast<std::size_t>(s)], c.d_model,
                              c.norm_eps, layer, c.layers, registry);
    }
  }

  // x (B, T, C) -> (B, T, C). `observer` may be null.
  Var<T, D> forward(const Policy& policy, const Var<T, D>& x,
                    const Observer<T, D>* observer) const {
    const int index = layer_ - 1;
    auto report = [&](Site site, const Var<T, D>& v) {
      if (observer && *observer) (*observer)(index, site, v);
    };
    report(Site::block_input, x);
    const bool observed = observer && *observer;
    Var<T, D> h = run_sublayer(policy, x, policy::Sublayer::attention, report, observed);
    Var<T, D> y = run_sublayer(policy, h, policy::Sublayer::mlp, report, observed);
    report(Site::block_output, y);
    return y;
  }

  int layer() const { return layer_; }
  const Attention<T, D>& attention() const { return attn_; }
  const MLP<T, D>& mlp() const { return mlp_; }
  // The precision of the GEMMs of every linear layer of the block (attention projections, MLP).
  void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    attn_.set_linear_precision(p, recipe);
    mlp_.set_linear_precision(p, recipe);
  }
  void append_fp8_histories(std::vector<NamedFp8History<D>>& out) const {
    attn_.append_fp8_histories(out);
    mlp_.append_fp8_histories(out);
  }
  const Norm<T, D>& norm(policy::Sublayer kind, int slot) const {
    return (kind == policy::Sublayer::attention ? attn_norms_ : mlp_norms_)
        .at(static_cast<std::size_t>(slot));
  }

 private:
  // s.residual fuses the add into the branch's last GEMM (bf16, fp32 or fp8) unless the branch is
  // `observed`: an observer sees the branch's output, which the fused form never holds on its own.
  template <class Report>
  Var<T, D> run_sublayer(const Policy& policy, const Var<T, D>& x, policy::Sublayer kind,
                         Report& report, bool observed) const {
    const bool is_attn = kind == policy::Sublayer::attention;
    const std::vector<Norm<T, D>>& norms = is_attn ? attn_norms_ : mlp_norms_;
    const char* first_call = nullptr;  // "s.f" or "s.residual", once the branch has run
    auto count_call = [&](const char* call) {
      FATHOM_CHECK(!first_call, "norm policy called the branch twice ("
                                    << first_call << ", then " << call << ") in the "
                                    << policy::to_string(kind) << " sub-layer of block " << layer_
                                    << "; apply(s) may call s.f or s.residual once (keep its "
                                       "result in a variable and use that)");
      first_call = call;
    };
    auto branch = [&](const Var<T, D>& in) {
      count_call("s.f");
      report(is_attn ? Site::attn_input : Site::mlp_input, in);
      Var<T, D> out = is_attn ? attn_.forward(in) : mlp_.forward(in);
      report(is_attn ? Site::attn_branch : Site::mlp_branch, out);
      return out;
    };
    typename policy::SublayerContext<T, D>::ResidualBranch residual;  // empty: composed
    if (!observed)
      residual = [&](const Var<T, D>& in, double x_scale) {
        count_call("s.residual");
        const autograd::Residual<T, D> add{&x, x_scale};
        return is_attn ? attn_.forward(in, add) : mlp_.forward(in, add);
      };
    auto norm = [&](int slot, const Var<T, D>& in, double out_scale) {
      FATHOM_CHECK(slot >= 0 && slot < norms_per_sublayer,
                   "norm policy asked for norm slot "
                       << slot << " of the " << policy::to_string(kind) << " sub-layer of block "
                       << layer_ << "; it declares norms_per_sublayer = " << norms_per_sublayer);
      return norms[static_cast<std::size_t>(slot)].forward(in, out_scale);
    };
    policy::SublayerContext<T, D> s(x, layer_, depth_, kind, branch, norm, residual);
    return policy.apply(s);
  }

  int layer_ = 1;
  int depth_ = 1;
  Attention<T, D> attn_;
  MLP<T, D> mlp_;
  std::vector<Norm<T, D>> attn_norms_, mlp_norms_;  // by slot
};

}  // namespace fathom::nn
