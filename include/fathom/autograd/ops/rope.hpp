// Differentiable rotary position embedding (Hugging Face Llama convention; see kernels/rope.hpp):
// rope on a (B, T, C) tensor, and rope_qkv in place on the q and k thirds of a fused (B, T, 3C)
// projection.
#pragma once

#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/elementwise.hpp"  // axpy
#include "fathom/kernels/rope.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::rope(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/elementwise.cuh"
#include "fathom/kernels/cuda/rope.cuh"
#endif

namespace fathom::autograd {

// Rotates each head of x (B, T, C), C = n_heads * hd with hd even, by the angles of positions
// pos0 .. pos0 + T - 1. The gradient is the inverse rotation.
template <class T, DeviceTag D>
Var<T, D> rope(const Var<T, D>& x, int n_heads, double theta = 10000.0, std::int64_t pos0 = 0) {
  FATHOM_CHECK(x.dim() == 3, "rope: expected x of shape (B, T, C), got " << x.shape());
  const std::int64_t batch = x.size(0), seq = x.size(1), channels = x.size(2);
  FATHOM_CHECK(n_heads > 0 && channels % n_heads == 0,
               "rope: x " << x.shape() << " has C = " << channels
                          << ", expected a multiple of n_heads = " << n_heads);
  FATHOM_CHECK((channels / n_heads) % 2 == 0,
               "rope: x " << x.shape() << " with " << n_heads << " heads has head size "
                          << channels / n_heads << ", expected an even head size");
  FATHOM_CHECK(theta > 0, "rope: expected theta > 0, got " << theta);
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  kernels::rope(
      D{}, kernels::RopeParams<T>{xc.data(), y.data(), batch, seq, channels, n_heads, theta, pos0});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(),
      [gx = grad_target(x), batch, seq, channels, n_heads, theta, pos0](const Tensor<T, D>& gy) {
        Tensor<T, D> dy = gy.contiguous();
        const auto dx = gx->write_target();
        kernels::rope_backward(
            D{}, kernels::RopeBackwardParams<T>{dy.data(), dx.data, batch, seq, channels, n_heads,
                                                theta, pos0, dx.accumulate});
      });
}

// rope_qkv(qkv, n_heads, theta, pos0): qkv (B, T, 3C) holds q, k and v side by side in its last
// dimension (a fused projection's output); returns qkv with q and k each rotated as rope() rotates
// them, and v as it was: the same values as concatenating rope(q), rope(k) and v. The gradient is
// the inverse rotation of the q and k thirds; v's passes through.
//
// In place. qkv is taken by value: when that copy holds the only reference to its storage
// (pass a temporary, or std::move the Var) and it is contiguous, q and k are rotated in that
// buffer and the result shares it; no kernel reads or writes v. This is safe because nothing can
// read the buffer afterwards: a node that saved it for its backward would hold a reference (a
// linear layer saves its input and weight, never its output). Otherwise (qkv still held elsewhere,
// or a strided view) the op rotates a contiguous copy and leaves qkv unchanged. Likewise the
// backward turns the incoming gradient back in its own buffer and hands that buffer on as qkv's
// gradient when nothing else shares it and it is not retained (retain_grad()); otherwise it works
// on a copy. A moved-from Var is undefined: reading qkv after std::move throws.
template <class T, DeviceTag D>
Var<T, D> rope_qkv(Var<T, D> qkv, int n_heads, double theta = 10000.0, std::int64_t pos0 = 0) {
  FATHOM_CHECK(qkv.defined(), "rope_qkv: qkv is undefined (used again after std::move?)");
  FATHOM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0,
               "rope_qkv: expected qkv of shape (B, T, 3C), got " << qkv.shape());
  const std::int64_t batch = qkv.size(0), seq = qkv.size(1), channels = qkv.size(2) / 3;
  FATHOM_CHECK(n_heads > 0 && channels % n_heads == 0,
               "rope_qkv: qkv " << qkv.shape() << " has C = " << channels
                                << ", expected a multiple of n_heads = " << n_heads);
  FATHOM_CHECK((channels / n_heads) % 2 == 0,
               "rope_qkv: qkv " << qkv.shape() << " with " << n_heads << " heads has head size "
                                << channels / n_heads << ", expected an even head size");
  FATHOM_CHECK(theta > 0, "rope_qkv: expected theta > 0, got " << theta);
  const auto params = [=](T* data, bool inverse) {
    return kernels::RopeQkvParams<T>{data, batch, seq, channels, n_heads, theta, pos0, inverse};
  };
  const Tensor<T, D>& x = qkv.value();
  Tensor<T, D> y = x.storage_use_count() == 1 && x.is_contiguous() ? x : x.clone();
  kernels::rope_qkv(D{}, params(y.data(), false));
  using Slot = typename Var<T, D>::Slot;
  return Var<T, D>::make_result(
      std::move(y), qkv.requires_grad(),
      [gx = grad_target(qkv), params](const Tensor<T, D>& gy, Slot& out) {
        if (!gx) return;
        // An owned, unshared, contiguous gradient is taken over (gy then refers to nothing).
        Tensor<T, D> g =
            !out.retain && !out.borrowed && gy.is_contiguous() && gy.storage_use_count() == 1
                ? std::move(out.grad)
                : gy.clone();
        kernels::rope_qkv(D{}, params(g.data(), true));
        if (!gx->grad.defined()) {
          gx->grad = std::move(g);
          gx->borrowed = false;
        } else {
          kernels::axpy(D{},
                        kernels::AxpyParams<T>{g.data(), gx->accumulator().data(), g.numel(), 1.0});
        }
      });
}

}  // namespace fathom::autograd
