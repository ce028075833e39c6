// Differentiable rotary position embedding (Hugging Face Llama convention; see kernels/rope.hpp).
#pragma once

#include <cstdint>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/rope.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::rope(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
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

}  // namespace fathom::autograd
