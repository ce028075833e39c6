// Differentiable dropout on Var. The mask comes from the counter-based stream (seed, offset + i),
// so it is never stored, backward recomputes it, and CPU and CUDA drop the same elements.
#pragma once

#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/kernels/dropout.hpp"
#if defined(__CUDACC__)
// Declared before the op below so that kernels::op(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/dropout.cuh"
#endif

namespace fathom::autograd {

// Element i of x is zeroed when rng::uniform(seed, offset + i) < p and scaled by 1 / (1 - p)
// otherwise; 0 <= p < 1. With p == 0 this is the identity and returns x itself. Callers give each
// dropout site and step its own (seed, offset), and pass p = 0 for evaluation.
template <class T, DeviceTag D>
Var<T, D> dropout(const Var<T, D>& x, double p, std::uint64_t seed, std::uint64_t offset) {
  FATHOM_CHECK(p >= 0.0 && p < 1.0, "dropout: expected a probability 0 <= p < 1, got " << p);
  if (p == 0.0) return x;
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  const std::int64_t n = x.numel();
  kernels::dropout(D{}, kernels::DropoutParams<T>{xc.data(), y.data(), n, p, seed, offset});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(),
      [gx = grad_target(x), n, p, seed, offset](const Tensor<T, D>& gy) {
        if (gx)
          kernels::dropout_backward(
              D{}, kernels::DropoutBackwardParams<T>{gy.data(), gx->accumulator().data(), n, p,
                                                     seed, offset});
      });
}

}  // namespace fathom::autograd
