// Differentiable element-wise ops on Var: add, sub, mul, add_scaled, scale, the operators
// a + b, a - b, a * b, x * s, s * x, and the shape ops reshape, split_last and concat_rows.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/kernels/elementwise.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::op(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/elementwise.cuh"
#endif

namespace fathom::autograd {

namespace detail {
inline void check_elementwise_shapes(const char* op, const Shape& a, const Shape& b) {
  FATHOM_CHECK(a == b, op << ": a " << a << " and b " << b << " differ in shape (no broadcasting)");
}

template <class T, DeviceTag D>
Var<T, D> axpby_op(const char* op, const Var<T, D>& a, double alpha, const Var<T, D>& b,
                   double beta) {
  check_elementwise_shapes(op, a.shape(), b.shape());
  Tensor<T, D> ac = a.value().contiguous(), bc = b.value().contiguous();
  Tensor<T, D> y(a.shape());
  const std::int64_t n = a.numel();
  kernels::axpby(D{}, kernels::AxpbyParams<T>{ac.data(), bc.data(), y.data(), n, alpha, beta});
  return Var<T, D>::make_result(
      std::move(y), any_requires_grad(a, b),
      [ga = grad_target(a), gb = grad_target(b), alpha, beta, n](const Tensor<T, D>& gy) {
        // A unit coefficient passes gy on without a copy when nothing is in that input's gradient
        // yet (the residual adds of a Transformer): no kernel at all.
        if (ga && !(alpha == 1.0 && ga->lend(gy)))
          kernels::axpy(D{}, kernels::AxpyParams<T>{gy.data(), ga->accumulator().data(), n, alpha});
        if (gb && !(beta == 1.0 && gb->lend(gy)))
          kernels::axpy(D{}, kernels::AxpyParams<T>{gy.data(), gb->accumulator().data(), n, beta});
      });
}
}  // namespace detail

// alpha * a + beta * b (same shapes).
template <class T, DeviceTag D>
Var<T, D> add_scaled(const Var<T, D>& a, double alpha, const Var<T, D>& b, double beta) {
  return detail::axpby_op("add_scaled", a, alpha, b, beta);
}

// a + b (same shapes).
template <class T, DeviceTag D>
Var<T, D> add(const Var<T, D>& a, const Var<T, D>& b) {
  return detail::axpby_op("add", a, 1.0, b, 1.0);
}

// a - b (same shapes).
template <class T, DeviceTag D>
Var<T, D> sub(const Var<T, D>& a, const Var<T, D>& b) {
  return detail::axpby_op("sub", a, 1.0, b, -1.0);
}

// s * x
template <class T, DeviceTag D>
Var<T, D> scale(const Var<T, D>& x, double s) {
  Tensor<T, D> xc = x.value().contiguous();
  Tensor<T, D> y(x.shape());
  const std::int64_t n = x.numel();
  kernels::scale(D{}, kernels::ScaleParams<T>{xc.data(), y.data(), n, s});
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(), [gx = grad_target(x), s, n](const Tensor<T, D>& gy) {
        if (gx)
          kernels::axpy(D{}, kernels::AxpyParams<T>{gy.data(), gx->accumulator().data(), n, s});
      });
}

// a * b element-wise (same shapes). Saves b for a's gradient and a for b's, only where needed.
template <class T, DeviceTag D>
Var<T, D> mul(const Var<T, D>& a, const Var<T, D>& b) {
  detail::check_elementwise_shapes("mul", a.shape(), b.shape());
  Tensor<T, D> ac = a.value().contiguous(), bc = b.value().contiguous();
  Tensor<T, D> y(a.shape());
  const std::int64_t n = a.numel();
  kernels::mul(D{}, kernels::MulParams<T>{ac.data(), bc.data(), y.data(), n});
  auto ga = grad_target(a), gb = grad_target(b);
  Tensor<T, D> saved_a = gb ? ac : Tensor<T, D>(), saved_b = ga ? bc : Tensor<T, D>();
  return Var<T, D>::make_result(
      std::move(y), any_requires_grad(a, b),
      [ga, gb, saved_a = std::move(saved_a), saved_b = std::move(saved_b),
       n](const Tensor<T, D>& gy) {
        kernels::mul_backward(
            D{}, kernels::MulBackwardParams<T>{saved_a.defined() ? saved_a.data() : nullptr,
                                               saved_b.defined() ? saved_b.data() : nullptr,
                                               gy.data(), ga ? ga->accumulator().data() : nullptr,
                                               gb ? gb->accumulator().data() : nullptr, n});
      });
}

template <class T, DeviceTag D>
Var<T, D> operator+(const Var<T, D>& a, const Var<T, D>& b) {
  return add(a, b);
}
template <class T, DeviceTag D>
Var<T, D> operator-(const Var<T, D>& a, const Var<T, D>& b) {
  return sub(a, b);
}
template <class T, DeviceTag D>
Var<T, D> operator*(const Var<T, D>& a, const Var<T, D>& b) {
  return mul(a, b);
}
template <class T, DeviceTag D>
Var<T, D> operator*(const Var<T, D>& x, double s) {
  return scale(x, s);
}
template <class T, DeviceTag D>
Var<T, D> operator*(double s, const Var<T, D>& x) {
  return scale(x, s);
}

// The same elements in a new shape (one extent may be -1). A view of x's value when x is
// contiguous; the gradient flows back in x's shape.
template <class T, DeviceTag D>
Var<T, D> reshape(const Var<T, D>& x, std::vector<std::int64_t> dims) {
  Tensor<T, D> y = x.value().reshape(std::move(dims));
  const std::int64_t n = x.numel();
  return Var<T, D>::make_result(
      std::move(y), x.requires_grad(), [gx = grad_target(x), n](const Tensor<T, D>& gy) {
        if (gx && !gx->lend(gy.reshape(gx->shape.to_vector())))
          kernels::axpy(D{}, kernels::AxpyParams<T>{gy.data(), gx->accumulator().data(), n, 1.0});
      });
}

// n equal slices of the last dimension, each contiguous: x (..., n * w) -> n Vars (..., w).
// Slice k's gradient lands in columns [k w, (k + 1) w) of x's gradient.
template <class T, DeviceTag D>
std::vector<Var<T, D>> split_last(const Var<T, D>& x, int n) {
  FATHOM_CHECK(x.dim() >= 1, "split_last: expected a tensor with at least one dimension, got shape "
                                 << x.shape());
  const std::int64_t c = x.size(-1);
  FATHOM_CHECK(n >= 1 && c % n == 0, "split_last: the last dimension of shape "
                                         << x.shape() << " does not split into " << n
                                         << " equal parts");
  const std::int64_t w = c / n, rows = c == 0 ? 0 : x.numel() / c;
  std::vector<Var<T, D>> parts;
  parts.reserve(static_cast<std::size_t>(n));
  for (int k = 0; k < n; ++k) {
    Tensor<T, D> y = x.value().slice(-1, k * w, (k + 1) * w).contiguous();
    parts.push_back(Var<T, D>::make_result(
        std::move(y), x.requires_grad(),
        [gx = grad_target(x), k, w, c, rows](const Tensor<T, D>& gy) {
          if (gx)
            kernels::axpy_2d(
                D{}, kernels::Axpy2dParams<T>{gy.data(), gx->accumulator().data() + k * w, rows, w,
                                              w, c, 1.0});
        }));
  }
  return parts;
}

// The parts stacked along dimension 0: parts (n_i, ...) with equal trailing extents ->
// (sum of n_i, ...). Part i's gradient is rows [r_i, r_i + n_i) of the output's: lent as a view
// when the part has none yet (GradSlot::lend: the part copies it before it ever writes to it), else
// added into the part's own. The parts are typically parameters (the q, k and v weights of a Llama
// attention read by one GEMM), whose gradients the optimizer, clipping and data parallelism read.
template <class T, DeviceTag D>
Var<T, D> concat_rows(const std::vector<Var<T, D>>& parts) {
  FATHOM_CHECK(!parts.empty(), "concat_rows: expected at least one part");
  Shape shape = parts.front().shape();
  FATHOM_CHECK(shape.rank() >= 1,
               "concat_rows: expected parts with at least one dimension, got shape " << shape);
  std::int64_t rows = 0;
  bool needs_grad = false;
  for (const auto& p : parts) {
    bool same = p.dim() == shape.rank();
    for (int d = 1; same && d < shape.rank(); ++d) same = p.size(d) == shape[d];
    FATHOM_CHECK(same, "concat_rows: part of shape " << p.shape() << " does not stack under "
                                                     << parts.front().shape()
                                                     << " (all extents but the first must agree)");
    rows += p.size(0);
    needs_grad = needs_grad || p.requires_grad();
  }
  shape[0] = rows;
  Tensor<T, D> y(shape);
  std::vector<std::pair<std::shared_ptr<detail::GradSlot<T, D>>, std::int64_t>> targets;
  std::int64_t r = 0;
  for (const auto& p : parts) {
    y.slice(0, r, r + p.size(0)).copy_(p.value());
    targets.emplace_back(grad_target(p), r);
    r += p.size(0);
  }
  return Var<T, D>::make_result(
      std::move(y), needs_grad, [targets = std::move(targets)](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();
        for (const auto& [g, r0] : targets) {
          if (!g) continue;
          Tensor<T, D> rows = gy.slice(0, r0, r0 + g->shape[0]);  // contiguous: whole rows
          // A part with no gradient yet borrows its rows of gy (a view, no copy: the stacked
          // weights' gradient becomes the parts' without a pass); one that has one adds them.
          if (!g->lend(rows)) {
            kernels::axpy(D{}, kernels::AxpyParams<T>{rows.data(), g->accumulator().data(),
                                                      rows.numel(), 1.0});
          }
        }
      });
}

}  // namespace fathom::autograd
