// Differentiable normalization ops: rms_norm and layer_norm over the last dimension, each with an
// output scale folded into the kernel (what LNS's 1/sqrt(l) costs: nothing).
#pragma once

#include <cstdint>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/norm.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::rms_norm(Cuda{}, ...) resolves (a qualified call
// sees only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/norm.cuh"
#endif

namespace fathom::autograd {

namespace detail {

// Rows of x (..., C) once checked against a gain of shape (C).
template <class T, class D>
std::int64_t norm_rows(const char* op, const Var<T, D>& x, const Var<T, D>& w) {
  FATHOM_CHECK(x.dim() >= 1, op << ": x must have at least one dimension, got shape " << x.shape());
  FATHOM_CHECK(w.dim() == 1 && w.size(0) == x.size(-1),
               op << ": x " << x.shape() << " and weight " << w.shape()
                  << " disagree: expected a weight of shape (" << x.size(-1) << ",)");
  FATHOM_CHECK(x.size(-1) > 0, op << ": x " << x.shape() << " has an empty last dimension");
  return x.numel() / x.size(-1);
}

}  // namespace detail

// y = w * x / sqrt(mean(x^2) + eps) * out_scale over the last dimension of x (..., C); w (C).
// The mean of squares is taken in accum_t<T> (fp32 for bf16).
template <class T, DeviceTag D>
Var<T, D> rms_norm(const Var<T, D>& x, const Var<T, D>& w, double eps, double out_scale = 1.0) {
  using A = accum_t<T>;
  const std::int64_t rows = detail::norm_rows("rms_norm", x, w), cols = x.size(-1);
  const bool needs_grad = grad_enabled() && any_requires_grad(x, w);
  Tensor<T, D> xc = x.value().contiguous(), wc = w.value().contiguous();
  Tensor<T, D> y(x.shape());
  Tensor<A, D> rstd = needs_grad ? Tensor<A, D>(Shape{rows}) : Tensor<A, D>();
  kernels::rms_norm(D{}, kernels::RmsNormParams<T>{xc.data(), wc.data(), y.data(),
                                                   needs_grad ? rstd.data() : nullptr, rows, cols,
                                                   eps, out_scale});
  return Var<T, D>::make_result(
      std::move(y), needs_grad,
      [gx = grad_target(x), gw = grad_target(w), xc, wc, rstd, rows, cols,
       out_scale](const Tensor<T, D>& gy) {
        Tensor<T, D> dy = gy.contiguous();
        const auto dx = gx ? gx->write_target() : GradWrite<T>{};
        kernels::rms_norm_backward(
            D{}, kernels::RmsNormBackwardParams<T>{dy.data(), xc.data(), wc.data(), rstd.data(),
                                                   dx.data, gw ? gw->accumulator().data() : nullptr,
                                                   rows, cols, out_scale, dx.accumulate});
      });
}

// y = (w * (x - mean) / sqrt(var + eps) + b) * out_scale over the last dimension of x (..., C);
// w, b (C); biased variance, statistics in accum_t<T>.
template <class T, DeviceTag D>
Var<T, D> layer_norm(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& b, double eps,
                     double out_scale = 1.0) {
  using A = accum_t<T>;
  const std::int64_t rows = detail::norm_rows("layer_norm", x, w), cols = x.size(-1);
  FATHOM_CHECK(b.shape() == w.shape(), "layer_norm: weight " << w.shape() << " and bias "
                                                             << b.shape()
                                                             << " disagree: expected equal shapes");
  const bool needs_grad = grad_enabled() && any_requires_grad(x, w, b);
  Tensor<T, D> xc = x.value().contiguous(), wc = w.value().contiguous(),
               bc = b.value().contiguous();
  Tensor<T, D> y(x.shape());
  Tensor<A, D> mean = needs_grad ? Tensor<A, D>(Shape{rows}) : Tensor<A, D>();
  Tensor<A, D> rstd = needs_grad ? Tensor<A, D>(Shape{rows}) : Tensor<A, D>();
  kernels::layer_norm(D{}, kernels::LayerNormParams<T>{xc.data(), wc.data(), bc.data(), y.data(),
                                                       needs_grad ? mean.data() : nullptr,
                                                       needs_grad ? rstd.data() : nullptr, rows,
                                                       cols, eps, out_scale});
  return Var<T, D>::make_result(
      std::move(y), needs_grad,
      [gx = grad_target(x), gw = grad_target(w), gb = grad_target(b), xc, wc, mean, rstd, rows,
       cols, out_scale](const Tensor<T, D>& gy) {
        Tensor<T, D> dy = gy.contiguous();
        const auto dx = gx ? gx->write_target() : GradWrite<T>{};
        kernels::layer_norm_backward(
            D{}, kernels::LayerNormBackwardParams<T>{dy.data(), xc.data(), wc.data(), mean.data(),
                                                     rstd.data(), dx.data,
                                                     gw ? gw->accumulator().data() : nullptr,
                                                     gb ? gb->accumulator().data() : nullptr, rows,
                                                     cols, out_scale, dx.accumulate});
      });
}

}  // namespace fathom::autograd
