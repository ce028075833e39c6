// Global-norm gradient clipping: the L2 norm over every parameter's gradient, and the factor that
// scales it down to max_norm (applied inside the optimizer step, so gradients are read once).
#pragma once

#include <cmath>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/reduce.hpp"
#if defined(__CUDACC__)
#include "fathom/kernels/cuda/reduce.cuh"
#endif

namespace fathom::optim {

// sqrt(sum of squares of every gradient); parameters without a gradient count as zero.
template <class T, class D, class Params>
double global_grad_norm(const Params& params) {
  kernels::SumSquaresParams<T> p;
  for (const auto& param : params)
    if (param.var.has_grad()) p.tensors.push_back({param.var.grad().data(), param.var.numel()});
  if (p.tensors.empty()) return 0.0;
  return std::sqrt(static_cast<double>(kernels::sum_squares(D{}, p)));
}

// Clipping without waiting for the host: writes the factor that
// clip_factor(global_grad_norm(params), max_norm) would return into `factor` (one float in D's
// memory), for Optimizer::step's grad_scale_device, and the sum of squares of every gradient into
// `sum_squares` (one accum_t<T> in D's memory: its square root is the global norm, for logs).
// Nothing is copied back, so a training step on CUDA never synchronizes.
template <class T, class D, class Params>
void clip_factor_on_device(const Params& params, double max_norm, Tensor<float, D>& factor,
                           Tensor<accum_t<T>, D>& sum_squares) {
  FATHOM_CHECK(
      factor.numel() == 1 && sum_squares.numel() == 1,
      "clip_factor_on_device: expected one-element factor and sum_squares tensors, got shapes "
          << factor.shape() << " and " << sum_squares.shape());
  kernels::SumSquaresParams<T> p;
  for (const auto& param : params)
    if (param.var.has_grad()) p.tensors.push_back({param.var.grad().data(), param.var.numel()});
  if (p.tensors.empty())
    sum_squares.zero_();
  else
    kernels::sum_squares(D{}, p, sum_squares.data());
  kernels::clip_factor(D{}, sum_squares.data(), max_norm, factor.data());
}

template <class T, class D, class Params>
void clip_factor_on_device(const Params& params, double max_norm, Tensor<float, D>& factor) {
  Tensor<accum_t<T>, D> total(Shape{});
  clip_factor_on_device<T, D>(params, max_norm, factor, total);
}

// The factor that brings a gradient of norm `norm` to at most max_norm (1 when max_norm <= 0).
inline double clip_factor(double norm, double max_norm) {
  if (max_norm <= 0.0 || !(norm > max_norm)) return 1.0;
  return max_norm / (norm + 1e-6);
}

}  // namespace fathom::optim
