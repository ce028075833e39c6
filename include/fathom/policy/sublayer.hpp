// SublayerContext<T, D>: what a normalization policy sees of one residual sub-layer (attention or
// MLP) of block l of L: the stream x, the branch f, the norm slots, l, L and which sub-layer it is.
#pragma once

#include <functional>
#include <string_view>
#include <utility>

#include "fathom/autograd/var.hpp"

namespace fathom::policy {

enum class Sublayer { attention, mlp };

inline std::string_view to_string(Sublayer s) {
  return s == Sublayer::attention ? "attention" : "mlp";
}

// The argument of a policy's apply(s). The block builds one per sub-layer and calls apply once.
// Its members are the whole vocabulary a policy is written in:
//   s.x                      the residual stream entering the sub-layer, (B, T, C)
//   s.f(v)                   the branch (attention or MLP) applied to v, (B, T, C) -> (B, T, C)
//   s.residual(v, x_scale)   x_scale * s.x + s.f(v) (x_scale defaults to 1): the same value, with
//                            the add done in the epilogue of the branch's last GEMM where the
//                            block can (no pass of its own over the stream); counts as the
//                            sub-layer's call of the branch
//   s.norm(i, v, scale)      norm slot i of this sub-layer applied to v, its output times `scale`
//                            (the scale is folded into the norm kernel, so it costs nothing);
//                            0 <= i < norms_per_sublayer, scale defaults to 1
//   s.layer, s.depth         l (1-based) and L
//   s.kind                   Sublayer::attention or Sublayer::mlp
// Both f and norm record on the autograd tape like any op, so apply needs no backward code.
// The context is type-erased (std::function) so that a policy is instantiated once per element type
// and device, never once per module or architecture.
template <class T, DeviceTag D>
class SublayerContext {
 public:
  using Var = fathom::Var<T, D>;
  using Branch = std::function<Var(const Var&)>;
  using NormSlot = std::function<Var(int, const Var&, double)>;
  // (v, x_scale) -> x_scale * x + branch(v), the add fused into the branch; empty: residual()
  // composes f and the add.
  using ResidualBranch = std::function<Var(const Var&, double)>;

  SublayerContext(Var x_in, int layer_in, int depth_in, Sublayer kind_in, Branch branch,
                  NormSlot norm_slot, ResidualBranch residual_branch = {})
      : x(std::move(x_in)),
        layer(layer_in),
        depth(depth_in),
        kind(kind_in),
        branch_(std::move(branch)),
        norm_(std::move(norm_slot)),
        residual_(std::move(residual_branch)) {}

  Var x;
  int layer;
  int depth;
  Sublayer kind;

  Var f(const Var& v) const { return branch_(v); }
  Var norm(int slot, const Var& v, double out_scale = 1.0) const {
    return norm_(slot, v, out_scale);
  }
  Var residual(const Var& v, double x_scale = 1.0) const {
    if (residual_) return residual_(v, x_scale);
    Var out = f(v);
    return x_scale == 1.0 ? x + out : x * x_scale + out;
  }

 private:
  Branch branch_;
  NormSlot norm_;
  ResidualBranch residual_;
};

}  // namespace fathom::policy
