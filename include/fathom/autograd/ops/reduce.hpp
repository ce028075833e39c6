// Differentiable reductions on Var: sum(x) and mean(x) over every element, each giving a Var of
// shape () (rank 0, one element), accumulated in accum_t<T>.
#pragma once

#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/kernels/reduce.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::op(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/reduce.cuh"
#endif

namespace fathom::autograd {

namespace detail {
template <class T, DeviceTag D>
Var<T, D> scaled_sum(const Var<T, D>& x, double s) {
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y{Shape{}};
  const std::int64_t n = x.numel();
  kernels::sum(D{}, kernels::SumParams<T>{xc.data(), y.data(), n, s});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(), [gx = grad_target(x), n, s](const Tensor<T, D>& gy) {
        if (gx)
          kernels::sum_backward(
              D{}, kernels::SumBackwardParams<T>{gy.data(), gx->accumulator().data(), n, s});
      });
}
}  // namespace detail

// The sum of all elements, shape (). 0 for an empty tensor.
template <class T, DeviceTag D>
Var<T, D> sum(const Var<T, D>& x) {
  return detail::scaled_sum(x, 1.0);
}

// The mean of all elements, shape (). x must not be empty.
template <class T, DeviceTag D>
Var<T, D> mean(const Var<T, D>& x) {
  FATHOM_CHECK(x.numel() > 0, "mean: expected a non-empty tensor, got shape " << x.shape());
  return detail::scaled_sum(x, 1.0 / static_cast<double>(x.numel()));
}

}  // namespace fathom::autograd
