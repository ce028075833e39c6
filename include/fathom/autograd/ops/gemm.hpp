// Differentiable matrix products: matmul (one matrix, or a batch of them) and linear (x W^T + b).
// Each is one node whose backward runs GEMMs (and a column sum for the bias) on the same device.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/gemm.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::gemm(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/gemm.cuh"
#endif

namespace fathom::autograd {

namespace detail {

// Product of the first `count` extents of s.
inline std::int64_t gemm_leading_numel(const Shape& s, int count) {
  std::int64_t n = 1;
  for (int i = 0; i < count; ++i) n *= s[i];
  return n;
}

}  // namespace detail

// matmul(a, b), row-major:
//   a (..., M, K) and b (K, N)        -> (..., M, N): every row of a times the one matrix b
//   a (..., M, K) and b (..., K, N)   -> (..., M, N): batched, same leading extents in a and b
template <class T, DeviceTag D>
Var<T, D> matmul(const Var<T, D>& a, const Var<T, D>& b) {
  FATHOM_CHECK(a.dim() >= 2 && b.dim() >= 2,
               "matmul: expected a (..., M, K) and b (K, N) or (..., K, N), got a "
                   << a.shape() << " and b " << b.shape());
  const std::int64_t k = a.size(-1);
  FATHOM_CHECK(b.size(-2) == k, "matmul: a " << a.shape() << " and b " << b.shape()
                                             << " disagree on the inner dimension (" << k << " vs "
                                             << b.size(-2) << ")");
  const bool batched = b.dim() > 2;
  if (batched) {
    bool same = a.dim() == b.dim();
    for (int i = 0; same && i < a.dim() - 2; ++i) same = a.size(i) == b.size(i);
    FATHOM_CHECK(same, "matmul: batched a " << a.shape() << " and b " << b.shape()
                                            << " need the same leading (batch) extents");
  }
  const std::int64_t n = b.size(-1);
  // Batched: `batch` products of (M, K) (K, N). Otherwise one product with all rows of a as M.
  const std::int64_t batch = batched ? detail::gemm_leading_numel(a.shape(), a.dim() - 2) : 1;
  const std::int64_t m = batched ? a.size(-2) : detail::gemm_leading_numel(a.shape(), a.dim() - 1);

  Tensor<T, D> av = a.value().contiguous(), bv = b.value().contiguous();
  Shape out_shape = a.shape();
  out_shape[a.dim() - 1] = n;
  Tensor<T, D> y(out_shape);  // (..., M, N)
  kernels::gemm(
      D{},
      kernels::GemmParams<T>{
          .a = av.data(), .b = bv.data(), .c = y.data(), .m = m, .n = n, .k = k, .batch = batch});

  auto ga = grad_target(a), gb = grad_target(b);
  return Var<T, D>::make_result(
      std::move(y), ga || gb,
      [ga, gb, av = gb ? av : Tensor<T, D>(), bv = ga ? bv : Tensor<T, D>(), m, n, k,
       batch](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (..., M, N)
        if (ga) {  // dA (M, K) += dY (M, N) B^T
          const auto da = ga->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = gy.data(),
                                                    .b = bv.data(),
                                                    .c = da.data,
                                                    .m = m,
                                                    .n = k,
                                                    .k = n,
                                                    .trans_b = true,
                                                    .batch = batch,
                                                    .beta = da.accumulate ? 1.0 : 0.0});
        }
        if (gb) {  // dB (K, N) += A^T dY: (K, M) (M, N)
          const auto db = gb->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = av.data(),
                                                    .b = gy.data(),
                                                    .c = db.data,
                                                    .m = k,
                                                    .n = n,
                                                    .k = m,
                                                    .trans_a = true,
                                                    .batch = batch,
                                                    .beta = db.accumulate ? 1.0 : 0.0});
        }
      });
}

// linear(x, weight, bias): y = x W^T + b, the layout of torch.nn.Linear.
//   x (..., in), weight (out, in), bias (out) or nullptr  -> (..., out)
// Backward: dX += dY W, dW += dY^T X, db += sum of dY over rows. (The bias pointer takes no part
// in deducing T and D, so linear(x, w, nullptr) compiles.)
template <class T, DeviceTag D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& weight,
                 const std::type_identity_t<Var<T, D>>* bias = nullptr) {
  FATHOM_CHECK(weight.dim() == 2,
               "linear: weight must be (out_features, in_features), got " << weight.shape());
  FATHOM_CHECK(x.dim() >= 1, "linear: x must be (..., in_features), got "
                                 << x.shape() << " for weight " << weight.shape());
  const std::int64_t in = weight.size(1), out = weight.size(0);
  FATHOM_CHECK(x.size(-1) == in, "linear: x " << x.shape() << " and weight " << weight.shape()
                                              << " disagree on in_features (" << x.size(-1)
                                              << " vs " << in << ")");
  if (bias) {
    FATHOM_CHECK(bias->dim() == 1 && bias->size(0) == out,
                 "linear: bias " << bias->shape() << " and weight " << weight.shape()
                                 << " disagree: bias must be (" << out
                                 << ",), one per out_feature");
  }
  const std::int64_t rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);

  Tensor<T, D> xv = x.value().contiguous(), wv = weight.value().contiguous();
  Tensor<T, D> bv = bias ? bias->value().contiguous() : Tensor<T, D>();
  Shape out_shape = x.shape();
  out_shape[x.dim() - 1] = out;
  Tensor<T, D> y(out_shape);  // (rows, out)
  kernels::gemm(D{}, kernels::GemmParams<T>{.a = xv.data(),
                                            .b = wv.data(),
                                            .c = y.data(),
                                            .bias = bias ? bv.data() : nullptr,
                                            .m = rows,
                                            .n = out,
                                            .k = in,
                                            .trans_b = true});

  auto gx = grad_target(x), gw = grad_target(weight);
  auto gbias = bias ? grad_target(*bias) : nullptr;
  return Var<T, D>::make_result(
      std::move(y), gx || gw || gbias,
      [gx, gw, gbias, xv = gw ? xv : Tensor<T, D>(), wv = gx ? wv : Tensor<T, D>(), rows, in,
       out](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, out)
        if (gx) {  // dX (rows, in) += dY (rows, out) W (out, in)
          const auto dx = gx->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = gy.data(),
                                                    .b = wv.data(),
                                                    .c = dx.data,
                                                    .m = rows,
                                                    .n = in,
                                                    .k = out,
                                                    .beta = dx.accumulate ? 1.0 : 0.0});
        }
        if (gw) {  // dW (out, in) += dY^T (out, rows) X (rows, in)
          const auto dw = gw->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = gy.data(),
                                                    .b = xv.data(),
                                                    .c = dw.data,
                                                    .m = out,
                                                    .n = in,
                                                    .k = rows,
                                                    .trans_a = true,
                                                    .beta = dw.accumulate ? 1.0 : 0.0});
        }
        if (gbias) {  // db (out) += sum over rows of dY
          const auto db = gbias->write_target();
          kernels::column_sum(D{}, kernels::ColumnSumParams<T>{.x = gy.data(),
                                                               .out = db.data,
                                                               .rows = rows,
                                                               .cols = out,
                                                               .accumulate = db.accumulate});
        }
      });
}

template <class T, DeviceTag D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& weight, const Var<T, D>& bias) {
  return linear(x, weight, &bias);
}

}  // namespace fathom::autograd
