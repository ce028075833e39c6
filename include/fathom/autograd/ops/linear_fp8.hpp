// linear_fp8(x, weight, bias): y = x W^T + b with its three GEMMs in fp8 (per-tensor scaling,
// current or delayed: Fp8History), the transformer blocks' linear layers under --precision fp8.
// One node, as linear.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

// What a quantization reads: a tensor (TensorValues), or values computed as the pass goes
// (SwigluValues: SwiGLU's output or gradient, kernels::SwigluFp8Source). amax(out) writes the
// values' amax to out; quantize(p) runs the quantize pass with p's outputs and scale.
template <class T, DeviceTag D>
struct TensorValues {
  using value_type = T;
  const T* x = nullptr;  // (n), contiguous
  std::int64_t n = 0;
  void amax(float* out) const { kernels::amax(D{}, kernels::AmaxParams<T>{x, n, out}); }
  template <class F>
  void quantize(kernels::QuantizeFp8Params<T, F> p) const {
    p.x = x;
    kernels::quantize_fp8(D{}, p);
  }
};
template <class T, DeviceTag D>
struct SwigluValues {
  using value_type = T;
  kernels::SwigluFp8Source<T> source;
  std::int64_t rows = 0;
  void amax(float* out) const { kernels::amax_swiglu(D{}, source, rows, out); }
  template <class F>
  void quantize(const kernels::QuantizeFp8Params<T, F>& p) const {
    kernels::quantize_fp8_swiglu(D{}, p, source);
  }
};

// Values (rows, cols) quantized on their device with no host synchronization: their amax, then
// the codes (and the transposed codes when asked) with scale = max(F) / amax.
// An Fp8Tensor's buffers for (rows, cols) codes: the scale, and the codes and/or their transpose.
template <class F, DeviceTag D>
Fp8Tensor<F, D> fp8_tensor_for(std::int64_t rows, std::int64_t cols, bool plain, bool transposed) {
  Fp8Tensor<F, D> q;
  q.scale = Tensor<float, D>(Shape{8});
  if (plain) q.codes = Tensor<F, D>(Shape{rows, cols});
  if (transposed) q.codes_t = Tensor<F, D>(Shape{cols, rows});
  return q;
}

template <class F, DeviceTag D, class Values>
Fp8Tensor<F, D> quantize_values_current(const Values& v, std::int64_t rows, std::int64_t cols,
                                        bool plain, bool transposed) {
  auto q = fp8_tensor_for<F, D>(rows, cols, plain, transposed);
  v.amax(q.scale.data() + 4);
  v.template quantize<F>(kernels::QuantizeFp8Params<typename Values::value_type, F>{
      .out = plain ? q.codes.data() : nullptr,
      .out_t = transposed ? q.codes_t.data() : nullptr,
      .rows = rows,
      .cols = cols,
      .amax = q.scale.data() + 4,
      .scale_inv = q.scale.data()});
  return q;
}

// x (rows, cols), contiguous, quantized by its own amax (quantize_values_current).
template <class F, class T, DeviceTag D>
Fp8Tensor<F, D> quantize_current(const Tensor<T, D>& x, std::int64_t rows, std::int64_t cols,
                                 bool plain, bool transposed) {
  return quantize_values_current<F, D>(TensorValues<T, D>{x.data(), rows * cols}, rows, cols, plain,
                                       transposed);
}

}  // namespace detail

// Delayed scaling's state for one tensor that is quantized again at every step (a linear layer's
// input, or the gradient of its output): the amaxes of its last `length` quantizations, in a ring
// on the device, and how many there have been. The first quantization has no history and scales
// by its own amax (current scaling), which becomes the first entry; every later one scales by the
// largest amax in the ring but the two slots it writes (kernels::QuantizeFp8Params), so the
// tensor is read once instead of twice. Only finite amaxes enter the ring. Quantizations outside
// training (no gradients recorded: evaluation, generation) scale by the history without adding to
// it, so they change nothing. `margin` leaves 2^margin of headroom below the format's largest
// value (scale = max(F) / (amax * 2^margin)): a tensor whose amax grows faster than the history
// follows saturates less, at the price of that many binades at the bottom of the range.
template <DeviceTag D>
class Fp8History {
 public:
  static constexpr int default_length = 16;
  explicit Fp8History(int length = default_length, int margin = 0)
      : length_(length), margin_(margin) {
    FATHOM_CHECK(length >= 3 && length <= kernels::max_fp8_history,
                 "Fp8History: the amax history holds 3 to " << kernels::max_fp8_history
                                                            << " entries, got " << length);
    FATHOM_CHECK(margin >= 0 && margin <= max_margin,
                 "Fp8History: the margin is 0 to " << max_margin << " binades, got " << margin);
    amax_ = Tensor<float, D>::zeros(Shape{length});
  }
  static constexpr int max_margin = 8;

  int length() const { return length_; }
  int margin() const { return margin_; }
  // Quantizations recorded so far (0: the next one scales by its own amax).
  std::int64_t uses() const { return uses_; }
  const Tensor<float, D>& amax() const { return amax_; }

  // The state as one tensor, for checkpoints: the ring, then -1 before the first recorded
  // quantization or else uses() % length() (all that the next scale depends on).
  Tensor<float, Cpu> state() const {
    std::vector<float> v = amax_.to_vector();
    v.push_back(uses_ == 0 ? -1.0f : static_cast<float>(uses_ % length_));
    return Tensor<float, Cpu>::from_vector(Shape{length_ + 1}, v);
  }
  // Restores state() of a history of the same length; `source` names it in errors.
  void load_state(const Tensor<float, Cpu>& s, const std::string& source) {
    FATHOM_CHECK(s.dim() == 1 && s.size(0) == length_ + 1,
                 source << ": an fp8 amax history of " << length_ << " entries is stored as "
                        << length_ + 1 << " floats, got shape " << s.shape());
    std::vector<float> v = s.to_vector();
    const float slot = v.back();
    FATHOM_CHECK(slot == -1.0f || (slot >= 0.0f && slot < static_cast<float>(length_) &&
                                   slot == static_cast<float>(static_cast<int>(slot))),
                 source << ": the fp8 amax history's position " << slot
                        << " is neither -1 nor a slot in [0, " << length_ << ")");
    v.pop_back();
    amax_.copy_(Tensor<float, D>::from_vector(Shape{length_}, v));  // in place: see move_into
    // Any count with the same remainder (and not 0 after a first use) continues the same way.
    uses_ = slot < 0 ? 0 : length_ + static_cast<std::int64_t>(slot);
  }

  // Keeps the ring in `storage` from now on (length() contiguous floats on D, the ring copied
  // there), e.g. a slice of one buffer that holds every history of a model, so that a single
  // collective can reduce them all (train::DataParallel takes their maximum over the ranks).
  void move_into(Tensor<float, D> storage) {
    FATHOM_CHECK(storage.dim() == 1 && storage.size(0) == length_ && storage.is_contiguous(),
                 "Fp8History::move_into: expected " << length_ << " contiguous floats, got shape "
                                                    << storage.shape());
    storage.copy_(amax_);
    amax_ = std::move(storage);
  }

  // Quantizes x (rows, cols) to F with this history's scale (see the class comment); `record`:
  // this quantization's amax joins the history.
  template <class F, class T>
  detail::Fp8Tensor<F, D> quantize(const Tensor<T, D>& x, std::int64_t rows, std::int64_t cols,
                                   bool plain, bool transposed, bool record) {
    return quantize_values<F>(detail::TensorValues<T, D>{x.data(), rows * cols}, rows, cols, plain,
                              transposed, record);
  }
  // The same for values (rows, cols) computed as they are quantized (detail::SwigluValues).
  template <class F, class Values>
  detail::Fp8Tensor<F, D> quantize_values(const Values& v, std::int64_t rows, std::int64_t cols,
                                          bool plain, bool transposed, bool record) {
    if (uses_ == 0 && !record)
      return detail::quantize_values_current<F, D>(v, rows, cols, plain, transposed);
    auto q = detail::fp8_tensor_for<F, D>(rows, cols, plain, transposed);
    kernels::QuantizeFp8Params<typename Values::value_type, F> p{
        .out = plain ? q.codes.data() : nullptr,
        .out_t = transposed ? q.codes_t.data() : nullptr,
        .rows = rows,
        .cols = cols,
        .scale_inv = q.scale.data()};
    p.margin = margin_;
    p.history = amax_.data();
    p.history_len = length_;
    p.record = static_cast<int>(uses_ % length_);
    p.record_amax = record;
    if (uses_ == 0) {  // the first entry: current scaling (and its amax starts the history)
      v.amax(q.scale.data() + 4);
      p.amax = q.scale.data() + 4;
    }
    v.template quantize<F>(p);
    if (record) ++uses_;
    return q;
  }

 private:
  int length_ = default_length;
  int margin_ = 0;
  std::int64_t uses_ = 0;
  Tensor<float, D> amax_;  // (length)
};

// Delayed scaling for one linear layer: the histories of its input and of its output's gradient,
// each null for current scaling. The weight keeps current scaling: it moves by one optimizer step
// at a time, and it is a small part of what a training step quantizes.
template <DeviceTag D>
struct Fp8LinearScaling {
  std::shared_ptr<Fp8History<D>> input, grad_output;
};

namespace detail {

// Values quantized by `history`, or with current scaling when it is null.
template <class F, DeviceTag D, class Values>
Fp8Tensor<F, D> quantize_values_scaled(const Values& v, std::int64_t rows, std::int64_t cols,
                                       bool plain, bool transposed, Fp8History<D>* history,
                                       bool record) {
  if (!history) return quantize_values_current<F, D>(v, rows, cols, plain, transposed);
  return history->template quantize_values<F>(v, rows, cols, plain, transposed, record);
}

// x quantized by `history`, or with current scaling when it is null.
template <class F, class T, DeviceTag D>
Fp8Tensor<F, D> quantize_scaled(const Tensor<T, D>& x, std::int64_t rows, std::int64_t cols,
                                bool plain, bool transposed, Fp8History<D>* history, bool record) {
  return quantize_values_scaled<F, D>(TensorValues<T, D>{x.data(), rows * cols}, rows, cols, plain,
                                      transposed, history, record);
}

}  // namespace detail

// X quantized once (E4M3) for every linear layer that reads it: SwiGLU's gate
// and up read one normalized input (attention's q, k and v are one GEMM against their stacked
// weights instead). Holds X^T as well when gradients are being recorded (for dW). Make it with
// quantize_fp8_input; pass it to linear_fp8.
template <class T, DeviceTag D>
struct Fp8Input {
  Var<T, D> x;                       // (..., in)
  detail::Fp8Tensor<fp8_e4m3, D> q;  // codes (rows, in), codes_t (in, rows) or undefined
  std::int64_t rows = 0, in = 0;
};

// x quantized for linear_fp8, with the transposed copy for dW when `transposed`; scaled by
// `history` (delayed scaling, recording while gradients are recorded) or, when it is null, by
// x's own amax.
template <class T, DeviceTag D>
Fp8Input<T, D> quantize_fp8_input(const Var<T, D>& x, bool transposed,
                                  Fp8History<D>* history = nullptr) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, float>,
                "quantize_fp8_input: fp8 GEMMs read bf16 or float inputs");
  FATHOM_CHECK(x.dim() >= 1, "linear_fp8: x must be (..., in_features), got " << x.shape());
  Fp8Input<T, D> r;
  r.x = x;
  r.in = x.size(-1);
  r.rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);
  r.q = detail::quantize_scaled<fp8_e4m3>(x.value().contiguous(), r.rows, r.in, true, transposed,
                                          history, grad_enabled());
  return r;
}

// x quantized once for several linear_fp8 calls; the transposed copy is made while gradients are
// recorded (outside NoGradGuard).
template <class T, DeviceTag D>
Fp8Input<T, D> quantize_fp8_input(const Var<T, D>& x, Fp8History<D>* history = nullptr) {
  return quantize_fp8_input(x, grad_enabled(), history);
}

// linear_fp8(x, weight, bias): the values and gradients of linear(x, weight, bias) computed with
// fp8 GEMMs, each operand scaled by its own current amax just before it is quantized:
//   forward  Y  = X (E4M3) W^T (E4M3)                 + b   (cuBLASLt's fast accumulation)
//   backward dX = dY (E5M2) W (E4M3, transposed copy)
//            dW = dY^T (E5M2, transposed copy) X (E4M3, transposed copy)
//            db = sum of dY over rows (in T, as linear)
// Accumulation in float, results in T (bf16 or float). For the backward the node keeps X^T and
// W^T in fp8 (one byte an element) instead of X and W. x may come quantized already
// (quantize_fp8_input), shared by the layers that read it. With `scaling` (delayed scaling), dY
// is scaled by scaling->grad_output and, for a Var x, X by scaling->input (an Fp8Input was scaled
// when it was made); null members, or no `scaling`, scale by the tensor's own amax.
// With `add` (Residual), Y also gets add.scale * add.x in the forward GEMM's epilogue, as in
// linear.
//   x (..., in), weight (out, in), bias (out) or nullptr  -> (..., out)
template <class T, DeviceTag D>
Var<T, D> linear_fp8(const Fp8Input<T, D>& xin, const Var<T, D>& weight,
                     const std::type_identity_t<Var<T, D>>* bias = nullptr,
                     const Fp8LinearScaling<D>* scaling = nullptr,
                     const std::type_identity_t<Residual<T, D>>& add = {}) {
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
  const Tensor<T, D> rv = detail::residual_value("linear_fp8", add, out_shape);
  auto gr = add.x ? grad_target(*add.x) : nullptr;
  Tensor<T, D> y(out_shape);  // (rows, out)
  kernels::gemm_fp8(
      D{}, kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, T>{.a = xq.codes.data(),
                                                         .b = wq.codes.data(),
                                                         .c = y.data(),
                                                         .c_in = add.x ? rv.data() : nullptr,
                                                         .bias = bias ? bv.data() : nullptr,
                                                         .a_scale_inv = xq.scale_inv(),
                                                         .b_scale_inv = wq.scale_inv(),
                                                         .m = rows,
                                                         .n = out,
                                                         .k = in,
                                                         .beta = add.x ? add.scale : 0.0,
                                                         .fast_accum = true});
  // Only what the backward reads is kept: the transposed copies and their scales.
  detail::Fp8Tensor<fp8_e4m3, D> xt;
  if (gw) xt = {Tensor<fp8_e4m3, D>(), xq.codes_t, xq.scale};
  wq.codes = Tensor<fp8_e4m3, D>();

  std::shared_ptr<Fp8History<D>> grad_history = scaling ? scaling->grad_output : nullptr;
  return Var<T, D>::make_result(
      std::move(y), gx || gw || gbias || gr,
      [gx, gw, gbias, gr, r_scale = add.scale, xq = std::move(xt),
       wq = gx ? wq : detail::Fp8Tensor<fp8_e4m3, D>(), rows, in, out,
       grad_history = std::move(grad_history)](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, out)
        detail::residual_backward(gr, gy, r_scale);
        if (gx || gw) {
          // dY in E5M2 (the gradients' range), rows-major for dX and transposed for dW.
          auto gq = detail::quantize_scaled<fp8_e5m2>(gy, rows, out, gx != nullptr, gw != nullptr,
                                                      grad_history.get(), true);
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
                     const std::type_identity_t<Var<T, D>>* bias = nullptr,
                     const Fp8LinearScaling<D>* scaling = nullptr,
                     const std::type_identity_t<Residual<T, D>>& add = {}) {
  return linear_fp8(quantize_fp8_input(x, grad_target(weight) != nullptr,
                                       scaling ? scaling->input.get() : nullptr),
                    weight, bias, scaling, add);
}

template <class T, DeviceTag D>
Var<T, D> linear_fp8(const Var<T, D>& x, const Var<T, D>& weight, const Var<T, D>& bias) {
  return linear_fp8(x, weight, &bias);
}

// swiglu_mlp_fp8(x, gate_up, down): Llama's MLP, down(silu(gate(x)) * up(x)), with its GEMMs in
// fp8 as linear_fp8 runs them (E4M3 forward, E5M2 gradients, the same scaling states) and SwiGLU
// inside the quantize passes around it: the forward quantizes silu(gate) * up straight from the
// gate/up GEMM's output, and the backward quantizes d gate | d up straight from that output and
// dh, the down projection's input gradient. Neither SwiGLU's output nor its gradient is ever
// written in T: two passes over (rows, F) and two over (rows, 2F) fewer a layer than
//   linear_fp8(swiglu_stacked(linear_fp8(x, gate_up, nullptr, gate_up_scaling)), down, nullptr,
//              down_scaling, add)
// whose values and gradients it gives but for those two roundings to T (for T = float, the same
// bits). No biases. Keeps what that composition keeps for the backward: the gate/up output and the
// transposed fp8 copies.
//   x (..., C), gate_up (2F, C): gate's rows then up's, down (C, F) -> (..., C)
template <class T, DeviceTag D>
Var<T, D> swiglu_mlp_fp8(const Var<T, D>& x, const Var<T, D>& gate_up, const Var<T, D>& down,
                         const Fp8LinearScaling<D>* gate_up_scaling = nullptr,
                         const Fp8LinearScaling<D>* down_scaling = nullptr,
                         const std::type_identity_t<Residual<T, D>>& add = {}) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, float>,
                "swiglu_mlp_fp8: fp8 GEMMs produce bf16 or float");
  FATHOM_CHECK(x.dim() >= 1 && gate_up.dim() == 2 && down.dim() == 2,
               "swiglu_mlp_fp8: expected x (..., C), gate_up (2F, C) and down (C, F), got "
                   << x.shape() << ", " << gate_up.shape() << " and " << down.shape());
  const std::int64_t C = x.size(-1), F = down.size(1);
  FATHOM_CHECK(gate_up.size(0) == 2 * F && gate_up.size(1) == C && down.size(0) == C,
               "swiglu_mlp_fp8: x " << x.shape() << ", gate_up " << gate_up.shape() << " and down "
                                    << down.shape()
                                    << " do not fit x (..., C), gate_up (2F, C), down (C, F)");
  const std::int64_t rows = detail::gemm_leading_numel(x.shape(), x.dim() - 1);
  auto gx = grad_target(x), ggu = grad_target(gate_up), gdown = grad_target(down);
  auto gr = add.x ? grad_target(*add.x) : nullptr;
  const bool gh = gx || ggu;  // whether the backward needs dh
  auto history = [](const Fp8LinearScaling<D>* s, bool input) {
    return s ? (input ? s->input : s->grad_output) : nullptr;
  };
  const bool record = grad_enabled();

  // gu = X Gu^T (rows, 2F), as linear_fp8's forward.
  auto xq = detail::quantize_scaled<fp8_e4m3>(x.value().contiguous(), rows, C, true, ggu != nullptr,
                                              history(gate_up_scaling, true).get(), record);
  auto wq_gu = detail::quantize_current<fp8_e4m3>(gate_up.value().contiguous(), 2 * F, C, true,
                                                  gx != nullptr);
  Tensor<T, D> gu(Shape{rows, 2 * F});
  kernels::gemm_fp8(D{},
                    kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, T>{.a = xq.codes.data(),
                                                                  .b = wq_gu.codes.data(),
                                                                  .c = gu.data(),
                                                                  .a_scale_inv = xq.scale_inv(),
                                                                  .b_scale_inv = wq_gu.scale_inv(),
                                                                  .m = rows,
                                                                  .n = 2 * F,
                                                                  .k = C,
                                                                  .fast_accum = true});
  // H = silu(gate) * up, quantized as it is computed; Y = H Down^T (+ the residual).
  auto hq = detail::quantize_values_scaled<fp8_e4m3, D>(
      detail::SwigluValues<T, D>{{gu.data(), nullptr, F, false}, rows}, rows, F, true,
      gdown != nullptr, history(down_scaling, true).get(), record);
  auto wq_down = detail::quantize_current<fp8_e4m3>(down.value().contiguous(), C, F, true, gh);
  Shape out_shape = x.shape();
  const Tensor<T, D> rv = detail::residual_value("swiglu_mlp_fp8", add, out_shape);
  Tensor<T, D> y(out_shape);
  kernels::gemm_fp8(
      D{}, kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, T>{.a = hq.codes.data(),
                                                         .b = wq_down.codes.data(),
                                                         .c = y.data(),
                                                         .c_in = add.x ? rv.data() : nullptr,
                                                         .a_scale_inv = hq.scale_inv(),
                                                         .b_scale_inv = wq_down.scale_inv(),
                                                         .m = rows,
                                                         .n = C,
                                                         .k = F,
                                                         .beta = add.x ? add.scale : 0.0,
                                                         .fast_accum = true});

  // Only what the backward reads is kept: the transposed copies, their scales, and gu.
  auto keep_t = [](detail::Fp8Tensor<fp8_e4m3, D>& q, bool keep) {
    detail::Fp8Tensor<fp8_e4m3, D> t;
    if (keep) t = {Tensor<fp8_e4m3, D>(), q.codes_t, q.scale};
    return t;
  };
  return Var<T, D>::make_result(
      std::move(y), gx || ggu || gdown || gr,
      [gx, ggu, gdown, gr, gh, r_scale = add.scale, xt = keep_t(xq, ggu != nullptr),
       wgu_t = keep_t(wq_gu, gx != nullptr), ht = keep_t(hq, gdown != nullptr),
       wdown_t = keep_t(wq_down, gh), gu = gh ? gu : Tensor<T, D>(), rows, C, F,
       down_grad = history(down_scaling, false),
       gu_grad = history(gate_up_scaling, false)](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (rows, C)
        detail::residual_backward(gr, gy, r_scale);
        if (!gh && !gdown) return;
        // dY in E5M2, rows-major for dh and transposed for dDown.
        auto gq = detail::quantize_scaled<fp8_e5m2>(gy, rows, C, gh, gdown != nullptr,
                                                    down_grad.get(), true);
        if (gdown) {  // dDown (C, F) += dY^T (C, rows) H (rows, F); H^T stored (F, rows)
          const auto dw = gdown->write_target();
          kernels::gemm_fp8(D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{
                                     .a = gq.codes_t.data(),
                                     .b = ht.codes_t.data(),
                                     .c = dw.data,
                                     .a_scale_inv = gq.scale_inv(),
                                     .b_scale_inv = ht.scale_inv(),
                                     .m = C,
                                     .n = F,
                                     .k = rows,
                                     .beta = dw.accumulate ? 1.0 : 0.0});
        }
        if (!gh) return;
        // dh (rows, F) = dY (rows, C) Down (C, F); Down^T stored (F, C).
        Tensor<T, D> dh(Shape{rows, F});
        kernels::gemm_fp8(
            D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{.a = gq.codes.data(),
                                                               .b = wdown_t.codes_t.data(),
                                                               .c = dh.data(),
                                                               .a_scale_inv = gq.scale_inv(),
                                                               .b_scale_inv = wdown_t.scale_inv(),
                                                               .m = rows,
                                                               .n = F,
                                                               .k = C});
        // d gate | d up (rows, 2F), quantized as it is computed from gu and dh.
        auto dq = detail::quantize_values_scaled<fp8_e5m2, D>(
            detail::SwigluValues<T, D>{{gu.data(), dh.data(), F, true}, rows}, rows, 2 * F,
            gx != nullptr, ggu != nullptr, gu_grad.get(), true);
        if (gx) {  // dX (rows, C) += dGu (rows, 2F) Gu (2F, C); Gu^T stored (C, 2F)
          const auto dx = gx->write_target();
          kernels::gemm_fp8(D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{
                                     .a = dq.codes.data(),
                                     .b = wgu_t.codes_t.data(),
                                     .c = dx.data,
                                     .a_scale_inv = dq.scale_inv(),
                                     .b_scale_inv = wgu_t.scale_inv(),
                                     .m = rows,
                                     .n = C,
                                     .k = 2 * F,
                                     .beta = dx.accumulate ? 1.0 : 0.0});
        }
        if (ggu) {  // dGu (2F, C) += dGu^T (2F, rows) X (rows, C); X^T stored (C, rows)
          const auto dw = ggu->write_target();
          kernels::gemm_fp8(D{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, T>{
                                     .a = dq.codes_t.data(),
                                     .b = xt.codes_t.data(),
                                     .c = dw.data,
                                     .a_scale_inv = dq.scale_inv(),
                                     .b_scale_inv = xt.scale_inv(),
                                     .m = 2 * F,
                                     .n = C,
                                     .k = rows,
                                     .beta = dw.accumulate ? 1.0 : 0.0});
        }
      });
}

}  // namespace fathom::autograd
