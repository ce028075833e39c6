// Differentiable softmax over the last dimension, and the fused softmax cross-entropy loss with
// integer targets and an ignore index (no probability matrix is ever stored): cross_entropy, and
// cross_entropy_fused for training, which computes the logits' gradient with the loss.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/core/env.hpp"
#include "fathom/kernels/softmax.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::softmax(Cuda{}, ...) resolves (a qualified call
// sees only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/softmax.cuh"
#endif

namespace fathom::autograd {

// softmax over the last dimension of x (..., C).
template <class T, DeviceTag D>
Var<T, D> softmax(const Var<T, D>& x) {
  FATHOM_CHECK(x.dim() >= 1,
               "softmax: x must have at least one dimension, got shape " << x.shape());
  const std::int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  kernels::softmax(D{}, kernels::SoftmaxParams<T>{xc.data(), y.data(), rows, cols});
  return Var<T, D>::make_result(
      y, x.requires_grad(), [gx = grad_target(x), y, rows, cols](const Tensor<T, D>& gy) {
        Tensor<T, D> dy = gy.contiguous();
        const auto dx = gx->write_target();
        kernels::softmax_backward(
            D{}, kernels::SoftmaxBackwardParams<T>{y.data(), dy.data(), dx.data, rows, cols,
                                                   dx.accumulate});
      });
}

namespace detail {

// The rows (N) of cross-entropy's logits (..., V), after checking them against the targets.
template <class T, DeviceTag D>
std::int64_t cross_entropy_rows(const char* op, const Var<T, D>& logits,
                                const Tensor<std::int32_t, D>& targets) {
  FATHOM_CHECK(
      logits.dim() >= 1,
      op << ": logits must have at least one dimension (N, V), got shape " << logits.shape());
  Shape rows_shape;
  for (int d = 0; d + 1 < logits.dim(); ++d) rows_shape.push_back(logits.size(d));
  FATHOM_CHECK(targets.shape() == rows_shape,
               op << ": logits " << logits.shape() << " and targets " << targets.shape()
                  << " disagree: expected targets of shape " << rows_shape);
  FATHOM_CHECK(logits.size(-1) > 0, op << ": logits " << logits.shape() << " have no classes");
  return rows_shape.numel();
}

inline bool& fused_cross_entropy_setting() {
  static bool on = env_switch("FATHOM_FUSED_CROSS_ENTROPY", true);
  return on;
}

// cross_entropy_fused calls that took the fused path (the tests check which path ran).
inline std::uint64_t& fused_cross_entropy_runs() {
  static std::uint64_t runs = 0;
  return runs;
}

}  // namespace detail

// Whether cross_entropy_fused computes the gradient in the forward pass (on by default;
// FATHOM_FUSED_CROSS_ENTROPY=0 in the environment, or set_fused_cross_entropy(false), makes it
// plain cross_entropy, for comparisons).
inline void set_fused_cross_entropy(bool on) { detail::fused_cross_entropy_setting() = on; }
inline bool fused_cross_entropy() { return detail::fused_cross_entropy_setting(); }

// Mean cross-entropy of logits (..., V) against integer targets whose shape is the logits' shape
// without the last dimension ((N, V) and (N) in the common case). Rows whose target equals
// ignore_index contribute nothing and are left out of the mean; when every row is ignored the loss
// is 0 and the gradient is 0 (never NaN). On the CPU a target outside [0, V) throws
// fathom::Error naming the row, the target and V; on CUDA it makes the loss NaN.
// Returns a one-element Var of shape () in accum_t<T> (fp32 for bf16 logits).
template <class T, DeviceTag D>
Var<accum_t<T>, D> cross_entropy(const Var<T, D>& logits, const Tensor<std::int32_t, D>& targets,
                                 int ignore_index = -100) {
  using A = accum_t<T>;
  const std::int64_t rows = detail::cross_entropy_rows("cross_entropy", logits, targets);
  const std::int64_t vocab = logits.size(-1);
  const bool needs_grad = grad_enabled() && logits.requires_grad();
  Tensor<T, D> lc = logits.value().contiguous();
  Tensor<std::int32_t, D> tc = targets.contiguous();
  Tensor<A, D> loss(Shape{});
  Tensor<A, D> lse = needs_grad ? Tensor<A, D>(Shape{rows}) : Tensor<A, D>();
  Tensor<std::int32_t, D> valid(Shape{});
  kernels::CrossEntropyParams<T> p;
  p.logits = lc.data();
  p.targets = tc.data();
  p.loss = loss.data();
  p.lse = needs_grad ? lse.data() : nullptr;
  p.valid_rows = valid.data();
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  kernels::cross_entropy(D{}, p);
  return Var<A, D>::make_result(
      std::move(loss), needs_grad,
      [gl = grad_target(logits), lc, tc, lse, valid, rows, vocab,
       ignore_index](const Tensor<A, D>& gy) {
        // (N, V) is the largest tensor of a step. Nothing needs the logits after this node: when
        // it holds their only reference and nothing has reached their gradient yet, the gradient
        // is written over them in place (each element is read once, then overwritten); otherwise
        // into a new buffer, never zero-filled first.
        GradWrite<T> dlogits;
        if (!gl->grad.defined() && lc.storage_use_count() == 1 && lc.is_contiguous()) {
          gl->grad = lc.reshape(gl->shape.to_vector());
          dlogits = {gl->grad.data(), false};
        } else {
          dlogits = gl->write_target();
        }
        kernels::CrossEntropyBackwardParams<T> b;
        b.logits = lc.data();
        b.targets = tc.data();
        b.lse = lse.data();
        b.valid_rows = valid.data();
        b.dloss = gy.data();
        b.dlogits = dlogits.data;
        b.rows = rows;
        b.vocab = vocab;
        b.ignore_index = ignore_index;
        b.accumulate = dlogits.accumulate;
        kernels::cross_entropy_backward(D{}, b);
      });
}

// cross_entropy for training: the same loss, with d loss / d logits computed in the same pass as
// the loss rather than in the backward, and written over the logits, which it consumes (nothing
// may read them afterwards, hence the rvalue). gradient_seed is the d loss the backward will be
// seeded with (TrainStep's 1 / micro-batches). The logits are read once instead of twice, and the
// gradient is bit for bit cross_entropy's. When the backward's d loss differs from gradient_seed
// the gradient is rescaled to it (one more pass, never a wrong gradient). When no gradient is
// needed, the logits' values are still held elsewhere (a copy of the Var, a view) or are not
// contiguous, or fused_cross_entropy() is off, this is cross_entropy.
template <class T, DeviceTag D>
Var<accum_t<T>, D> cross_entropy_fused(Var<T, D>&& logits, const Tensor<std::int32_t, D>& targets,
                                       double gradient_seed, int ignore_index = -100) {
  using A = accum_t<T>;
  FATHOM_CHECK(
      std::isfinite(gradient_seed) && gradient_seed != 0.0,
      "cross_entropy_fused: gradient_seed must be finite and nonzero, got " << gradient_seed);
  Var<T, D> owned = std::move(logits);
  const std::int64_t rows = detail::cross_entropy_rows("cross_entropy_fused", owned, targets);
  const std::int64_t vocab = owned.size(-1);
  if (!fused_cross_entropy() || !grad_enabled() || !owned.requires_grad() ||
      !owned.value().is_contiguous() || owned.value().storage_use_count() != 1) {
    return cross_entropy(owned, targets, ignore_index);
  }
  ++detail::fused_cross_entropy_runs();
  auto gl = grad_target(owned);
  Tensor<T, D> buffer = owned.value();  // the logits, then their gradient
  owned = Var<T, D>();
  Tensor<std::int32_t, D> tc = targets.contiguous();
  Tensor<A, D> loss(Shape{});
  kernels::CrossEntropyParams<T> p;
  p.logits = buffer.data();
  p.targets = tc.data();
  p.loss = loss.data();
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  p.dlogits = buffer.data();
  p.grad_scale = static_cast<double>(static_cast<A>(gradient_seed));
  p.accumulate = false;
  kernels::cross_entropy(D{}, p);
  return Var<A, D>::make_result(
      std::move(loss), true,
      [gl, g = std::move(buffer), seed = static_cast<A>(gradient_seed)](const Tensor<A, D>& gy) {
        kernels::CrossEntropyRescaleParams<T> r;
        r.g = g.data();
        r.dloss = gy.data();
        r.seed = seed;
        r.n = g.numel();
        if (!gl->grad.defined()) {
          gl->grad = g.reshape(gl->shape.to_vector());  // the gradient is the buffer itself
          r.dst = gl->grad.data();
          r.accumulate = false;
        } else {
          const GradWrite<T> dst = gl->write_target();
          r.dst = dst.data;
          r.accumulate = dst.accumulate;
        }
        kernels::cross_entropy_rescale(D{}, r);
      });
}

}  // namespace fathom::autograd
