// linear_fp8(x, weight, bias): y = x W^T + b with its three GEMMs in fp8 (current per-tensor
// scaling), the transformer blocks' linear layers under --precision fp8. One node, as linear.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/var.hpp"
#include "fathom/core/fp8.hpp"
#include "fathom/kernels/fp8.hpp"
#include "fathom/kernels/gemm.hpp"
#if defined(__CUDACC__)
// Declared before the op below so that kernels::gemm_fp8(Cuda{}, ...) and the others resolve.
#include "fathom/kernels/cuda/fp8.cuh"
#include "fathom/kernels/cuda/gemm.cuh"
#endif

namespace fathom::autograd {

namespace detail {

// A tensor quantized to F with the current scaling recipe: scale[0] = 1 / scale (the
// dequantization factor the GEMM reads) and scale[4] = amax, both on the tensor's device and each
// 16-byte aligned (cuBLASLt declines its fp8 kernels for a scale pointer that is not); `codes`
// (rows, cols) and/or `codes_t` (cols, rows).
template <class F, DeviceTag D>
struct Fp8Tensor {
  Tensor<F, D> codes, codes_t;
  Tensor<float, D> scale;  // (8): scale_inv, 3 unused, amax, 3 unused
  const float* scale_inv() const { return scale.data(); }
};

// x (rows, cols), contiguous, quantized on its device with no host synchronization: the amax of x,
// then the codes (and the transposed codes when asked) with scale = max(F) / amax.
template <class F, class T, DeviceTag D>
Fp8Tensor<F, D> quantize_current(const Tensor<T, D>& x, std::int64_t rows, std::int64_t cols,
                                 bool plain, bool transposed) {
  Fp8Tensor<F, D> q;
  q.scale = Tensor<float, D>(Shape{8});
  if (plain) q.codes = Tensor<F, D>(Shape{rows, cols});
  if (transposed) q.codes_t = Tensor<F, D>(Shape{cols, rows});
  kernels::amax(D{}, kernels::AmaxParams<T>{x.data(), rows * cols, q.scale.data() + 4});
  kernels::quantize_fp8(
      D{}, kernels::QuantizeFp8Params<T, F>{.x = x.data(),
                                            .out = plain ? q.codes.data() : nullptr,
                                            .out_t = transposed ? q.codes_t.data() : nullptr,
                                            .rows = rows,
                                            .cols = cols,
                                            .amax = q.scale.data() + 4,
                                            .scale_inv = q.scale.data()});
  return q;
}

}  // namespace detail

// X quantized once (E4M3, current scaling) for every linear layer that reads it: SwiGLU's gate
// and up read one normalized input (attention's q, k and v are one GEMM against their stacked
// weights instead). Holds X^T as well when gradients are being recorded (for dW). Make it with
// quantize_fp8_input; pass it to linear_fp8.
template <class T, DeviceTag D>
struct Fp8Input {
  Var<T, D> x;                       // (..., in)
  detail::Fp8Tensor<fp8_e4m3, D> q;  // codes (rows, in), codes_t (in, rows) or undefined
  std::int64_t rows = 0, in = 0;
};

// x quantized for linear_fp8, with the transposed copy for dW when `transposed`.
template <class T, DeviceTag D>
Fp8Input<T, D> quantize_fp8_input(const Var<T, D>& x, bool transposed) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, float>,
                "quantize_fp8_input: fp8 GEMMs read bf16 or float inputs");
  FATHOM_CHECK(x.dim() >= 1, "linear_fp8: x must be (..., in_features), got " << x.shape());
  Fp8Input<T, D> r;
  r.x = x;
  r.in = x.size(-1);
  r.rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);
  r.q = detail::quantize_current<fp8_e4m3>(x.value().contiguous(), r.rows, r.in, true, transposed);
  return r;
}

// x quantized once for several linear_fp8 calls; the transposed copy is made while gradients are
// recorded (outside NoGradGuard).
template <class T, DeviceTag D>
Fp8Input<T, D> quantize_fp8_input(const Var<T, D>& x) {
  return quantize_fp8_input(x, grad_enabled());
}

// linear_fp8(x, weight, bias): the values and gradients of linear(x, weight, bias) computed with
// fp8 GEMMs, each operand scaled by its own current amax just before it is quantized:
//   forward  Y  = X (E4M3) W^T (E4M3)                 + b   (cuBLASLt's fast accumulation)
//   backward dX = dY (E5M2) W (E4M3, transposed copy)
//            dW = dY^T (E5M2, transposed copy) X (E4M3, transposed copy)
//            db = sum of dY over rows (in T, as linear)
// Accumulation in float, results in T (bf16 or float). For the backward the node keeps X^T and
// W^T in fp8 (one byte an element) instead of X and W. x may come quantized already
// (quantize_fp8_input), shared by the layers that read it.
//   x (..., in), weight (out, in), bias (out) or nullptr  -> (..., out)
template <class T, DeviceTag D>
Var<T, D> linear_fp8(const Fp8Input<T, D>& xin, const Var<T, D>& weight,
                     const std::type_identity_t<Var<T, D>>* bias = nullptr) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, float>,
                "linear_fp8: fp8 GEMMs produce bf16 or float; use linear for double");
  const Var<T, D>& x = xin.x;
  detail::check_linear_shapes("linear_fp8", x, weight, bias);
  const std::int64_t in = weight.size(1), out = weight.size(0);
  const std::int64_t rows = xin.rows;
  auto gx = grad_target(x), gw = grad_target(weight);
  auto gbias = bias ? grad_target(*bias) : nullptr;
  FATHOM_CHECK(!gw || !grad_enabled() || xin.q.codes_t.defined(),
               "linear_fp8: the weight needs a gradient but x was quantized without its "
               "transposed copy (quantize_fp8_input under NoGradGuard?)");

  Tensor<T, D> wv = weight.value().contiguous();
  Tensor<T, D> bv = bias ? bias->value().contiguous() : Tensor<T, D>();
  // W for the forward and, transposed, for dX; X^T (in xin) for dW.
  auto wq = detail::quantize_current<fp8_e4m3>(wv, out, in, true, gx != nullptr);
  const auto& xq = xin.q;
  Shape out_shape = x.shape();
  out_shape[x.dim() - 1] = out;
  Tensor<T, D> y(out_shape);  // (rows, out)
  kernels::gemm_fp8(
      D{}, kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, T>{.a = xq.codes.data(),
                                                         .b = wq.codes.data(),
                                                         .c = y.data(),
                                                         .bias = bias ? bv.data() : nullptr,
                                                         .a_scale_inv = xq.scale_inv(),
                                                         .b_scale_inv = wq.scale_inv(),
                                                         .m = rows,
                                                         .n = out,
                                                         .k = in,
                                                         .fast_accum = true});
  // Only what the backward reads is kept: the transposed copies and their scales.
  detail::Fp8Tensor<fp8_e4m3, D> xt;
  if (gw) xt = {Tensor<fp8_e4m3, D>(), xq.codes_t, xq.scale};
  wq.codes = Tensor<fp8_e4m3, D>();

  return Var<T, D>::make_result(
      std::move(y), gx || gw || gbias,
      [gx, gw, gbias, xq = std::move(xt), wq = gx ? wq : detail::Fp8Tensor<fp8_e4m3, D>(), rows, in,
       out](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, out)
        if (gx || gw) {
          // dY in E5M2 (the gradients' range), rows-major for dX and transposed for dW.
          auto gq = detail::quantize_current<fp8_e5m2>(gy, rows, out, gx != nullptr, gw != nullptr);
          if (gx) {  // dX (rows, in) += dY (rows, out) W (out, in); W^T stored (in, out)
            const auto dx = gx->write_target();
            kernels::gemm_fp8(D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{
                                       .a = gq.codes.data(),
                                       .b = wq.codes_t.data(),
                                       .c = dx.data,
                                       .a_scale_inv = gq.scale_inv(),
                                       .b_scale_inv = wq.scale_inv(),
                                       .m = rows,
                                       .n = in,
                                       .k = out,
                                       .beta = dx.accumulate ? 1.0 : 0.0});
          }
          if (gw) {  // dW (out, in) += dY^T (out, rows) X (rows, in); X^T stored (in, rows)
            const auto dw = gw->write_target();
            kernels::gemm_fp8(D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{
                                       .a = gq.codes_t.data(),
                                       .b = xq.codes_t.data(),
                                       .c = dw.data,
                                       .a_scale_inv = gq.scale_inv(),
                                       .b_scale_inv = xq.scale_inv(),
                                       .m = out,
                                       .n = in,
                                       .k = rows,
                                       .beta = dw.accumulate ? 1.0 : 0.0});
          }
        }
        if (gbias) detail::bias_backward(gbias, gy, rows, out);
      });
}

template <class T, DeviceTag D>
Var<T, D> linear_fp8(const Var<T, D>& x, const Var<T, D>& weight,
                     const std::type_identity_t<Var<T, D>>* bias = nullptr) {
  return linear_fp8(quantize_fp8_input(x, grad_target(weight) != nullptr), weight, bias);
}

template <class T, DeviceTag D>
Var<T, D> linear_fp8(const Var<T, D>& x, const Var<T, D>& weight, const Var<T, D>& bias) {
  return linear_fp8(x, weight, &bias);
}

}  // namespace fathom::autograd
