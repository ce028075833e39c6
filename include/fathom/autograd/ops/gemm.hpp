// Differentiable matrix products: matmul (one matrix, or a batch of them), linear (x W^T + b), and
// the MLPs built on linear with their activation in a GEMM's epilogue (linear_swiglu, gelu_mlp).
// Each is one node whose backward runs GEMMs (and a column sum for the bias) on the same device.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fathom/autograd/ops/activation.hpp"  // swiglu_stacked's node, for linear_swiglu
#include "fathom/autograd/var.hpp"
#include "fathom/kernels/elementwise.hpp"  // axpy
#include "fathom/kernels/gemm.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::gemm(Cuda{}, ...) resolves (a qualified call sees
// only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/elementwise.cuh"
#include "fathom/kernels/cuda/gemm.cuh"
#endif

namespace fathom::autograd {

// What a linear layer's output is added to: scale * x, with x of the output's shape, in the
// epilogue of the GEMM that writes the output (C = x, beta = scale). A residual sub-layer's
// x + F(v) then costs no pass of its own: the add would read x and F(v) and write the sum, the
// epilogue only reads x. A null x adds nothing.
template <class T, DeviceTag D>
struct Residual {
  const Var<T, D>* x = nullptr;
  double scale = 1.0;
};

namespace detail {

// Product of the first `count` extents of s.
inline std::int64_t gemm_leading_numel(const Shape& s, int count) {
  std::int64_t n = 1;
  for (int i = 0; i < count; ++i) n *= s[i];
  return n;
}

// The shapes linear and linear_fp8 (`op`) take: x (..., in), weight (out, in), bias (out).
template <class T, DeviceTag D>
void check_linear_shapes(const char* op, const Var<T, D>& x, const Var<T, D>& weight,
                         const Var<T, D>* bias) {
  FATHOM_CHECK(weight.dim() == 2,
               op << ": weight must be (out_features, in_features), got " << weight.shape());
  FATHOM_CHECK(x.dim() >= 1, op << ": x must be (..., in_features), got " << x.shape()
                                << " for weight " << weight.shape());
  const std::int64_t in = weight.size(1), out = weight.size(0);
  FATHOM_CHECK(x.size(-1) == in, op << ": x " << x.shape() << " and weight " << weight.shape()
                                    << " disagree on in_features (" << x.size(-1) << " vs " << in
                                    << ")");
  if (bias) {
    FATHOM_CHECK(bias->dim() == 1 && bias->size(0) == out,
                 op << ": bias " << bias->shape() << " and weight " << weight.shape()
                    << " disagree: bias must be (" << out << ",), one per out_feature");
  }
}

// The residual of linear(..., add) and its kin: checked against the output's shape, as a contiguous
// tensor for the GEMM's C (empty without one).
template <class T, DeviceTag D>
Tensor<T, D> residual_value(const char* op, const Residual<T, D>& add, const Shape& out_shape) {
  if (!add.x) return Tensor<T, D>();
  FATHOM_CHECK(add.x->shape() == out_shape, op << ": the residual " << add.x->shape()
                                               << " must have the output's shape " << out_shape);
  return add.x->value().contiguous();
}

// The residual's gradient: scale * dY, passed on without a copy (lent, as an add does) when the
// scale is 1 and nothing is in that gradient yet.
template <class Target, class T, DeviceTag D>
void residual_backward(const Target& gr, const Tensor<T, D>& gy, double scale) {
  if (gr && !(scale == 1.0 && gr->lend(gy)))
    kernels::axpy(D{},
                  kernels::AxpyParams<T>{gy.data(), gr->accumulator().data(), gy.numel(), scale});
}

// The bias gradient of linear and linear_fp8: db (out) += sum over the rows of dY (rows, out).
template <class Target, class T, DeviceTag D>
void bias_backward(const Target& gbias, const Tensor<T, D>& gy, std::int64_t rows,
                   std::int64_t out) {
  const auto db = gbias->write_target();
  kernels::column_sum(
      D{},
      kernels::ColumnSumParams<T>{
          .x = gy.data(), .out = db.data, .rows = rows, .cols = out, .accumulate = db.accumulate});
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
        if (ga) {                              // dA (M, K) += dY (M, N) B^T
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

namespace detail {

// The node of linear(x, weight, bias, add) around its output y, which the caller computed from xv
// and wv (x's and the weight's contiguous values; x is (rows, in), the weight (out, in)).
template <class T, DeviceTag D>
Var<T, D> linear_node(Tensor<T, D> y, const Var<T, D>& x, const Var<T, D>& weight,
                      const Var<T, D>* bias, const Residual<T, D>& add, const Tensor<T, D>& xv,
                      const Tensor<T, D>& wv, std::int64_t rows, std::int64_t in,
                      std::int64_t out) {
  auto gx = grad_target(x), gw = grad_target(weight);
  auto gbias = bias ? grad_target(*bias) : nullptr;
  auto gr = add.x ? grad_target(*add.x) : nullptr;
  return Var<T, D>::make_result(
      std::move(y), gx || gw || gbias || gr,
      [gx, gw, gbias, gr, r_scale = add.scale, xv = gw ? xv : Tensor<T, D>(),
       wv = gx ? wv : Tensor<T, D>(), rows, in, out](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, out)
        detail::residual_backward(gr, gy, r_scale);
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
          const kernels::GemmParams<T> p{.a = gy.data(),
                                         .b = xv.data(),
                                         .c = dw.data,
                                         .m = out,
                                         .n = in,
                                         .k = rows,
                                         .trans_a = true,
                                         .beta = dw.accumulate ? 1.0 : 0.0};
          if (gbias) {  // and db (out) += the sums of dY's columns
            const auto db = gbias->write_target();
            kernels::gemm_bias_grad(D{}, p, db.data, db.accumulate);
          } else {
            kernels::gemm(D{}, p);
          }
        } else if (gbias) {
          detail::bias_backward(gbias, gy, rows, out);
        }
      });
}

}  // namespace detail

// linear(x, weight, bias): y = x W^T + b, the layout of torch.nn.Linear.
//   x (..., in), weight (out, in), bias (out) or nullptr  -> (..., out)
// Backward: dX += dY W, dW += dY^T X, db += sum of dY over rows (with dW, in the same call:
// kernels::gemm_bias_grad, which on CUDA sums dY inside the GEMM that reads it). (The bias pointer
// takes no part in deducing T and D, so linear(x, w, nullptr) compiles.)
// With `add` (Residual): y = x W^T + b + add.scale * add.x, the add in the GEMM's epilogue, and
// d add.x += add.scale * dY (passed on without a copy when the scale is 1, as an add does).
template <class T, DeviceTag D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& weight,
                 const std::type_identity_t<Var<T, D>>* bias = nullptr,
                 const std::type_identity_t<Residual<T, D>>& add = {}) {
  detail::check_linear_shapes("linear", x, weight, bias);
  const std::int64_t in = weight.size(1), out = weight.size(0);
  const std::int64_t rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);

  Tensor<T, D> xv = x.value().contiguous(), wv = weight.value().contiguous();
  Tensor<T, D> bv = bias ? bias->value().contiguous() : Tensor<T, D>();
  Shape out_shape = x.shape();
  out_shape[x.dim() - 1] = out;
  const Tensor<T, D> rv = detail::residual_value("linear", add, out_shape);
  Tensor<T, D> y(out_shape);  // (rows, out)
  kernels::gemm(D{}, kernels::GemmParams<T>{.a = xv.data(),
                                            .b = wv.data(),
                                            .c = y.data(),
                                            .c_in = add.x ? rv.data() : nullptr,
                                            .bias = bias ? bv.data() : nullptr,
                                            .m = rows,
                                            .n = out,
                                            .k = in,
                                            .trans_b = true,
                                            .beta = add.x ? add.scale : 0.0});
  return detail::linear_node(std::move(y), x, weight, bias, add, xv, wv, rows, in, out);
}

template <class T, DeviceTag D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& weight, const Var<T, D>& bias) {
  return linear(x, weight, &bias);
}

// linear_swiglu(x, gate_up) = swiglu_stacked(linear(x, gate_up)): the gate/up projection of a
// Llama MLP (gate_up (2F, C): gate's rows, then up's; no bias) and SwiGLU, with the same two nodes
// and so the same gradients, their forward one call of kernels::gemm_swiglu: on Hopper in bf16,
// with kernels::swiglu_epilogue() on, one GEMM whose epilogue also writes silu(gate) * up (no pass
// that reads the (..., 2F) product back). Otherwise the values are the composition's, bit for bit.
//   x (..., C), gate_up (2F, C) -> (..., F)
template <class T, DeviceTag D>
Var<T, D> linear_swiglu(const Var<T, D>& x, const Var<T, D>& gate_up) {
  const Var<T, D>* no_bias = nullptr;
  detail::check_linear_shapes("linear_swiglu", x, gate_up, no_bias);
  const std::int64_t in = gate_up.size(1), out = gate_up.size(0);
  FATHOM_CHECK(out % 2 == 0, "linear_swiglu: gate_up " << gate_up.shape()
                                                       << " must stack gate and up: an even count "
                                                          "of rows (2F, C)");
  const std::int64_t rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1), f = out / 2;
  Tensor<T, D> xv = x.value().contiguous(), wv = gate_up.value().contiguous();
  Shape gu_shape = x.shape(), h_shape = x.shape();
  gu_shape[x.dim() - 1] = out;
  h_shape[x.dim() - 1] = f;
  Tensor<T, D> gu(gu_shape), h(h_shape);
  kernels::gemm_swiglu(D{},
                       kernels::GemmParams<T>{.a = xv.data(),
                                              .b = wv.data(),
                                              .c = gu.data(),
                                              .m = rows,
                                              .n = out,
                                              .k = in,
                                              .trans_b = true},
                       h.data());
  const Var<T, D> gu_var =
      detail::linear_node(gu, x, gate_up, no_bias, Residual<T, D>{}, xv, wv, rows, in, out);
  return detail::swiglu_stacked_node(std::move(h), gu_var, gu, f);
}

// gelu_mlp(x, w1, b1, w2, b2) = linear(gelu(linear(x, w1, b1)), w2, b2), the MLP of GPT-2, as one
// node: the GELU runs in the epilogue of the first GEMM (which also keeps the pre-activation for
// the backward; cuBLASLt's GELU_AUX_BIAS for bf16 on CUDA), and the backward turns the hidden
// gradient into the pre-activation's in the buffer the GEMM wrote, then sums it for the first
// bias. Same values and gradients as the three ops composed.
//   x (..., C), w1 (F, C), b1 (F) or null, w2 (C', F), b2 (C') or null  -> (..., C')
// With `add` (Residual), the second GEMM adds add.scale * add.x in its epilogue, as linear does.
template <class T, DeviceTag D>
Var<T, D> gelu_mlp(const Var<T, D>& x, const Var<T, D>& w1,
                   const std::type_identity_t<Var<T, D>>* b1, const Var<T, D>& w2,
                   const std::type_identity_t<Var<T, D>>* b2,
                   const std::type_identity_t<Residual<T, D>>& add = {}) {
  FATHOM_CHECK(w1.dim() == 2 && w2.dim() == 2 && x.dim() >= 1,
               "gelu_mlp: expected x (..., C), w1 (F, C), w2 (C', F), got x "
                   << x.shape() << ", w1 " << w1.shape() << ", w2 " << w2.shape());
  const std::int64_t in = w1.size(1), hidden = w1.size(0), out = w2.size(0);
  FATHOM_CHECK(x.size(-1) == in && w2.size(1) == hidden,
               "gelu_mlp: x " << x.shape() << ", w1 " << w1.shape() << " and w2 " << w2.shape()
                              << " disagree: expected x (..., " << in << ") and w2 (C', " << hidden
                              << ")");
  FATHOM_CHECK(
      !b1 || (b1->dim() == 1 && b1->size(0) == hidden),
      "gelu_mlp: b1 " << b1->shape() << " must be (" << hidden << ",) for w1 " << w1.shape());
  FATHOM_CHECK(!b2 || (b2->dim() == 1 && b2->size(0) == out),
               "gelu_mlp: b2 " << b2->shape() << " must be (" << out << ",) for w2 " << w2.shape());
  const std::int64_t rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);
  Tensor<T, D> xv = x.value().contiguous(), w1v = w1.value().contiguous(),
               w2v = w2.value().contiguous();
  Tensor<T, D> b1v = b1 ? b1->value().contiguous() : Tensor<T, D>();
  Tensor<T, D> b2v = b2 ? b2->value().contiguous() : Tensor<T, D>();
  Tensor<T, D> pre(Shape{rows, hidden}), h(Shape{rows, hidden});
  kernels::gemm_gelu(D{},
                     kernels::GemmParams<T>{.a = xv.data(),
                                            .b = w1v.data(),
                                            .c = h.data(),
                                            .bias = b1 ? b1v.data() : nullptr,
                                            .m = rows,
                                            .n = hidden,
                                            .k = in,
                                            .trans_b = true},
                     pre.data());
  Shape out_shape = x.shape();
  out_shape[x.dim() - 1] = out;
  const Tensor<T, D> rv = detail::residual_value("gelu_mlp", add, out_shape);
  Tensor<T, D> y(out_shape);
  kernels::gemm(D{}, kernels::GemmParams<T>{.a = h.data(),
                                            .b = w2v.data(),
                                            .c = y.data(),
                                            .c_in = add.x ? rv.data() : nullptr,
                                            .bias = b2 ? b2v.data() : nullptr,
                                            .m = rows,
                                            .n = out,
                                            .k = hidden,
                                            .trans_b = true,
                                            .beta = add.x ? add.scale : 0.0});

  auto gx = grad_target(x), gw1 = grad_target(w1), gw2 = grad_target(w2);
  auto gb1 = b1 ? grad_target(*b1) : nullptr, gb2 = b2 ? grad_target(*b2) : nullptr;
  auto gr = add.x ? grad_target(*add.x) : nullptr;
  const bool needs = gx || gw1 || gw2 || gb1 || gb2 || gr;
  return Var<T, D>::make_result(
      std::move(y), needs,
      [gx, gw1, gb1, gw2, gb2, gr, r_scale = add.scale, xv, w1v, w2v, pre, h, rows, in, hidden,
       out](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, out)
        detail::residual_backward(gr, gy, r_scale);
        if (gw2) {  // dW2 += dY^T H (and db2 += column sums of dY)
          const auto d = gw2->write_target();
          const kernels::GemmParams<T> p{.a = gy.data(),
                                         .b = h.data(),
                                         .c = d.data,
                                         .m = out,
                                         .n = hidden,
                                         .k = rows,
                                         .trans_a = true,
                                         .beta = d.accumulate ? 1.0 : 0.0};
          if (gb2) {
            const auto db = gb2->write_target();
            kernels::gemm_bias_grad(D{}, p, db.data, db.accumulate);
          } else {
            kernels::gemm(D{}, p);
          }
        } else if (gb2) {
          detail::bias_backward(gb2, gy, rows, out);
        }
        if (!gx && !gw1 && !gb1) return;
        // dPre = (dY W2) * gelu'(pre), and db1 = its column sums.
        Tensor<T, D> dpre(Shape{rows, hidden});
        Tensor<T, D> db1 = gb1 ? Tensor<T, D>(Shape{hidden}) : Tensor<T, D>();
        kernels::gemm_dgelu(D{},
                            kernels::GemmParams<T>{.a = gy.data(),
                                                   .b = w2v.data(),
                                                   .c = dpre.data(),
                                                   .m = rows,
                                                   .n = hidden,
                                                   .k = out},
                            pre.data(), gb1 ? db1.data() : nullptr);
        if (gb1 && !gb1->lend(db1))
          kernels::axpy(D{},
                        kernels::AxpyParams<T>{db1.data(), gb1->accumulator().data(), hidden, 1.0});
        if (gw1) {  // dW1 += dPre^T X
          const auto d = gw1->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = dpre.data(),
                                                    .b = xv.data(),
                                                    .c = d.data,
                                                    .m = hidden,
                                                    .n = in,
                                                    .k = rows,
                                                    .trans_a = true,
                                                    .beta = d.accumulate ? 1.0 : 0.0});
        }
        if (gx) {  // dX += dPre W1
          const auto d = gx->write_target();
          kernels::gemm(D{}, kernels::GemmParams<T>{.a = dpre.data(),
                                                    .b = w1v.data(),
                                                    .c = d.data,
                                                    .m = rows,
                                                    .n = in,
                                                    .k = hidden,
                                                    .beta = d.accumulate ? 1.0 : 0.0});
        }
      });
}

}  // namespace fathom::autograd
