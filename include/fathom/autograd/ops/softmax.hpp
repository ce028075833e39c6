// Differentiable softmax over the last dimension, and the fused softmax cross-entropy loss with
// integer targets and an ignore index (no probability matrix is ever stored).
#pragma once

#include <cstdint>

#include "fathom/autograd/var.hpp"
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
  FATHOM_CHECK(logits.dim() >= 1,
               "cross_entropy: logits must have at least one dimension (N, V), got shape "
                   << logits.shape());
  Shape rows_shape;
  for (int d = 0; d + 1 < logits.dim(); ++d) rows_shape.push_back(logits.size(d));
  FATHOM_CHECK(targets.shape() == rows_shape,
               "cross_entropy: logits " << logits.shape() << " and targets " << targets.shape()
                                        << " disagree: expected targets of shape " << rows_shape);
  const std::int64_t vocab = logits.size(-1), rows = rows_shape.numel();
  FATHOM_CHECK(vocab > 0, "cross_entropy: logits " << logits.shape() << " have no classes");
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

}  // namespace fathom::autograd
