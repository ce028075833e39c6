// Differentiable activations on Var: gelu (tanh form), silu, and swiglu(gate, up) = silu(gate) * up
// as one fused node (one kernel forward, one backward), also on gate and up stacked in one tensor
// (swiglu_stacked).
#pragma once

#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/kernels/activation.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::op(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/activation.cuh"
#endif

namespace fathom::autograd {

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise.
template <class T, DeviceTag D>
Var<T, D> gelu(const Var<T, D>& x) {
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  const std::int64_t n = x.numel();
  kernels::gelu(D{}, kernels::ActivationParams<T>{xc.data(), y.data(), n});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(), [gx = grad_target(x), xc, n](const Tensor<T, D>& gy) {
        if (!gx) return;
        const auto dx = gx->write_target();
        kernels::gelu_backward(D{}, kernels::ActivationBackwardParams<T>{
                                        xc.data(), gy.data(), dx.data, n, dx.accumulate});
      });
}

// x * sigmoid(x), element-wise.
template <class T, DeviceTag D>
Var<T, D> silu(const Var<T, D>& x) {
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  const std::int64_t n = x.numel();
  kernels::silu(D{}, kernels::ActivationParams<T>{xc.data(), y.data(), n});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(), [gx = grad_target(x), xc, n](const Tensor<T, D>& gy) {
        if (!gx) return;
        const auto dx = gx->write_target();
        kernels::silu_backward(D{}, kernels::ActivationBackwardParams<T>{
                                        xc.data(), gy.data(), dx.data, n, dx.accumulate});
      });
}

// silu(gate) * up (same shapes), fused: saves gate and up, never silu(gate).
template <class T, DeviceTag D>
Var<T, D> swiglu(const Var<T, D>& gate, const Var<T, D>& up) {
  FATHOM_CHECK(gate.shape() == up.shape(),
               "swiglu: gate " << gate.shape() << " and up " << up.shape() << " differ in shape");
  Tensor<T, D> gc = gate.value().contiguous(), uc = up.value().contiguous();
  Tensor<T, D> y(gate.shape());
  const std::int64_t n = gate.numel();
  kernels::swiglu(D{}, kernels::SwigluParams<T>{gc.data(), uc.data(), y.data(), n});
  return Var<T, D>::make_result(
      std::move(y), any_requires_grad(gate, up),
      [gg = grad_target(gate), gu = grad_target(up), gc, uc, n](const Tensor<T, D>& gy) {
        const auto dg = gg ? gg->write_target() : GradWrite<T>{};
        const auto du = gu ? gu->write_target() : GradWrite<T>{};
        kernels::swiglu_backward(
            D{}, kernels::SwigluBackwardParams<T>{gc.data(), uc.data(), gy.data(), dg.data, du.data,
                                                  n, dg.accumulate, du.accumulate});
      });
}

// silu(gate) * up of gate and up stacked on the last dimension: gu (..., 2F) -> (..., F), with
// gate = gu[..., :F] and up = gu[..., F:]. This is the output of one GEMM against the gate and up
// weights stacked into (2F, C) (nn::MLP of a Llama). The kernels read both halves in place, and the
// backward writes d gate and d up into the two halves of one (..., 2F) gradient, so the GEMMs
// behind it see one gradient: the input's gradient is one GEMM with K = 2F, the weight's one GEMM.
// Values and gradients equal swiglu(gate, up) on the split halves, bit for bit.
namespace detail {

// The node of swiglu_stacked(gu) around its output y, computed by the caller from gc, gu's
// contiguous value (..., 2F).
template <class T, DeviceTag D>
Var<T, D> swiglu_stacked_node(Tensor<T, D> y, const Var<T, D>& gu, const Tensor<T, D>& gc,
                              std::int64_t F) {
  const std::int64_t n = y.numel();
  return Var<T, D>::make_result(
      std::move(y), gu.requires_grad(), [g = grad_target(gu), gc, F, n](const Tensor<T, D>& gy) {
        if (!g) return;
        const auto d = g->write_target();  // (..., 2F): d gate | d up
        kernels::swiglu_backward(D{}, kernels::SwigluBackwardParams<T>{
                                          gc.data(), gc.data() + F, gy.data(), d.data, d.data + F,
                                          n, d.accumulate, d.accumulate, F, 2 * F, 2 * F});
      });
}

}  // namespace detail

template <class T, DeviceTag D>
Var<T, D> swiglu_stacked(const Var<T, D>& gu) {
  FATHOM_CHECK(gu.dim() >= 1 && gu.size(-1) % 2 == 0,
               "swiglu_stacked: expected gate and up stacked on an even last dimension (..., 2F), "
               "got shape "
                   << gu.shape());
  Tensor<T, D> gc = gu.value().contiguous();
  const std::int64_t F = gu.size(-1) / 2;
  Shape shape = gu.shape();
  shape[shape.rank() - 1] = F;
  Tensor<T, D> y(shape);  // (..., F)
  const std::int64_t n = y.numel();
  kernels::swiglu(D{}, kernels::SwigluParams<T>{gc.data(), gc.data() + F, y.data(), n, F, 2 * F});
  return detail::swiglu_stacked_node(std::move(y), gu, gc, F);
}

}  // namespace fathom::autograd
