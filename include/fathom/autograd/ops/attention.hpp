// attention(q, k, v, n_heads, causal): multi-head scaled dot-product attention as one
// differentiable op; backward recomputes the probabilities from the saved log-sum-exp. Also
// attention_qkv on a fused (B, T, 3C) projection, and rope_attention_qkv, which turns its q and k
// by RoPE first and undoes the turn inside the attention backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/attention.hpp"
#include "fathom/kernels/elementwise.hpp"
#include "fathom/kernels/rope.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::attention(Cuda{}, ...) resolves (a qualified call
// sees only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/attention.cuh"
#include "fathom/kernels/cuda/elementwise.cuh"
#include "fathom/kernels/cuda/rope.cuh"
#endif

namespace fathom::autograd {

namespace detail {

// A (B, T, C) tensor as the attention kernels read it: rows of `row_stride` elements. Views whose
// rows are evenly spaced (a slice of the last dimension of a fused (B, T, 3C) projection) are
// used in place; anything else is made contiguous first.
template <class T, class D>
struct AttentionRows {
  Tensor<T, D> tensor;
  std::int64_t row_stride = 0;

  explicit AttentionRows(const Tensor<T, D>& t) : tensor(t) {
    const auto& s = t.strides();
    const std::int64_t C = t.size(2), rows = t.size(1);
    const bool in_place = s[2] == 1 && s[1] >= C && (t.size(0) <= 1 || s[0] == rows * s[1]);
    if (!in_place) tensor = t.contiguous();
    row_stride = in_place ? s[1] : C;
  }
};

// The forward parameters that follow from the outputs o (B, T, C) and lse (B, H, T): the shape, the
// packed output and the softmax scale. The caller points q, k and v at its inputs.
template <class T, class D>
kernels::AttentionParams<T> attention_params(const Tensor<T, D>& o,
                                             const Tensor<accum_t<T>, D>& lse, bool causal) {
  const std::int64_t C = o.size(2), heads = lse.size(1), hd = C / heads;
  return {.o = o.data(),
          .lse = lse.data(),
          .batch = o.size(0),
          .seq = o.size(1),
          .heads = heads,
          .head_dim = hd,
          .o_stride = C,
          .causal = causal,
          .scale = 1.0 / std::sqrt(static_cast<double>(hd))};
}

// The backward of the forward fp: d_o packed, the gradients at dq, dk, dv with rows of grad_stride.
template <class T>
kernels::AttentionBackwardParams<T> attention_backward_params(const kernels::AttentionParams<T>& fp,
                                                              const T* d_o, GradWrite<T> dq,
                                                              GradWrite<T> dk, GradWrite<T> dv,
                                                              std::int64_t grad_stride,
                                                              bool accumulate) {
  kernels::AttentionBackwardParams<T> bp;
  bp.q = fp.q;
  bp.k = fp.k;
  bp.v = fp.v;
  bp.o = fp.o;
  bp.d_o = d_o;
  bp.lse = fp.lse;
  bp.dq = dq.data;
  bp.dk = dk.data;
  bp.dv = dv.data;
  bp.batch = fp.batch;
  bp.seq = fp.seq;
  bp.heads = fp.heads;
  bp.head_dim = fp.head_dim;
  bp.q_stride = fp.q_stride;
  bp.k_stride = fp.k_stride;
  bp.v_stride = fp.v_stride;
  bp.o_stride = bp.do_stride = fp.o_stride;
  bp.dq_stride = bp.dk_stride = bp.dv_stride = grad_stride;
  bp.causal = fp.causal;
  bp.scale = fp.scale;
  bp.accumulate = accumulate;
  return bp;
}

}  // namespace detail

// q, k, v: (B, T, C) with C = n_heads * head_dim and head h at columns [h * hd, (h + 1) * hd).
// Returns softmax(q k^T / sqrt(hd) + mask) v per head, (B, T, C); with causal, query t sees keys
// s <= t. q, k and v may be views with a row stride above C (slices of a fused projection).
template <class T, DeviceTag D>
Var<T, D> attention(const Var<T, D>& q, const Var<T, D>& k, const Var<T, D>& v, int n_heads,
                    bool causal = true) {
  FATHOM_CHECK(q.dim() == 3, "attention: expected q of shape (B, T, C), got " << q.shape());
  FATHOM_CHECK(k.shape() == q.shape(), "attention: q " << q.shape() << " and k " << k.shape()
                                                       << " must have the same shape");
  FATHOM_CHECK(v.shape() == q.shape(), "attention: q " << q.shape() << " and v " << v.shape()
                                                       << " must have the same shape");
  FATHOM_CHECK(n_heads > 0, "attention: expected n_heads > 0, got " << n_heads);
  const std::int64_t B = q.size(0), Tn = q.size(1), C = q.size(2);
  FATHOM_CHECK(C % n_heads == 0,
               "attention: C = " << C << " (q " << q.shape()
                                 << ") is not divisible by n_heads = " << n_heads);

  detail::AttentionRows<T, D> qr(q.value()), kr(k.value()), vr(v.value());
  Tensor<T, D> o(Shape{B, Tn, C});
  Tensor<accum_t<T>, D> lse(Shape{B, n_heads, Tn});
  auto fp = detail::attention_params(o, lse, causal);
  fp.q = qr.tensor.data(), fp.k = kr.tensor.data(), fp.v = vr.tensor.data();
  fp.q_stride = qr.row_stride, fp.k_stride = kr.row_stride, fp.v_stride = vr.row_stride;
  if (o.numel() > 0) kernels::attention(D{}, fp);

  return Var<T, D>::make_result(
      o, any_requires_grad(q, k, v),
      [gq = grad_target(q), gk = grad_target(k), gv = grad_target(v), qr, kr, vr, o, lse,
       fp](const Tensor<T, D>& gy) {
        if (o.numel() == 0) return;
        Tensor<T, D> g = gy.contiguous();
        // One flag covers the three outputs: fresh buffers are written only when all three are,
        // and are three different buffers (one Var may serve as q, k and v).
        GradWrite<T> dq, dk, dv;
        const bool distinct = (!gq || (gq != gk && gq != gv)) && (!gk || gk != gv);
        const bool all_fresh = distinct && (!gq || !gq->grad.defined()) &&
                               (!gk || !gk->grad.defined()) && (!gv || !gv->grad.defined());
        if (all_fresh) {
          if (gq) dq = gq->write_target();
          if (gk) dk = gk->write_target();
          if (gv) dv = gv->write_target();
        } else {
          if (gq) dq = {gq->accumulator().data(), true};
          if (gk) dk = {gk->accumulator().data(), true};
          if (gv) dv = {gv->accumulator().data(), true};
        }
        // Gradients are contiguous (B, T, C).
        const auto bp =
            detail::attention_backward_params(fp, g.data(), dq, dk, dv, fp.o_stride, !all_fresh);
        kernels::attention_backward(D{}, bp);
      });
}

namespace detail {

// Attention over a contiguous (B, T, 3C) projection x (q, k and v side by side in each row, read
// in place): the output (B, T, C), the log-sum-exp, and the forward parameters the backward needs.
template <class T, class D>
struct QkvAttention {
  Tensor<T, D> o;
  Tensor<accum_t<T>, D> lse;
  kernels::AttentionParams<T> fp;
};
template <class T, class D>
QkvAttention<T, D> qkv_attention(const Tensor<T, D>& x, int n_heads, bool causal) {
  const std::int64_t B = x.size(0), Tn = x.size(1), C = x.size(2) / 3;
  Tensor<T, D> o(Shape{B, Tn, C});
  Tensor<accum_t<T>, D> lse(Shape{B, n_heads, Tn});
  auto fp = attention_params(o, lse, causal);
  fp.q = x.data(), fp.k = x.data() + C, fp.v = x.data() + 2 * C;
  fp.q_stride = fp.k_stride = fp.v_stride = 3 * C;
  if (o.numel() > 0) kernels::attention(D{}, fp);
  return {std::move(o), std::move(lse), fp};
}

// The backward of qkv_attention's fp: dq, dk and dv into the thirds of one (B, T, 3C) gradient.
template <class T>
kernels::AttentionBackwardParams<T> qkv_backward_params(const kernels::AttentionParams<T>& fp,
                                                        const T* d_o, GradWrite<T> to) {
  const std::int64_t C = fp.o_stride;
  return attention_backward_params(fp, d_o, to, {to.data + C, to.accumulate},
                                   {to.data + 2 * C, to.accumulate}, 3 * C, to.accumulate);
}

}  // namespace detail

// qkv (B, T, 3C): q, k and v side by side in the last dimension (the output of a fused (3C, C)
// projection) -> (B, T, C). The same result as attention(q, k, v) on split_last(qkv, 3), but the
// kernels read q, k and v in place and the backward writes their gradients straight into qkv's
// gradient: no copies, no separate gradient buffers, no adds.
template <class T, DeviceTag D>
Var<T, D> attention_qkv(const Var<T, D>& qkv, int n_heads, bool causal = true) {
  FATHOM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0,
               "attention_qkv: expected qkv of shape (B, T, 3C), got " << qkv.shape());
  FATHOM_CHECK(n_heads > 0, "attention_qkv: expected n_heads > 0, got " << n_heads);
  const std::int64_t C = qkv.size(2) / 3;
  FATHOM_CHECK(C % n_heads == 0,
               "attention_qkv: C = " << C << " (qkv " << qkv.shape()
                                     << ") is not divisible by n_heads = " << n_heads);
  Tensor<T, D> x = qkv.value().contiguous();
  const auto a = detail::qkv_attention(x, n_heads, causal);
  return Var<T, D>::make_result(
      a.o, qkv.requires_grad(),
      [g = grad_target(qkv), x, o = a.o, lse = a.lse, fp = a.fp](const Tensor<T, D>& gy) {
        if (o.numel() == 0) return;
        Tensor<T, D> d_o = gy.contiguous();
        kernels::attention_backward(D{},
                                    detail::qkv_backward_params(fp, d_o.data(), g->write_target()));
      });
}

// rope_qkv then attention_qkv as one op: qkv (B, T, 3C) -> (B, T, C), q and k turned by RoPE
// (theta, positions pos0 + t; kernels/rope.hpp) before attention reads them. The same values and
// gradients as attention_qkv(rope_qkv(qkv, ...)), with one pass fewer in the backward: the
// attention backward turns dq and dk back by RoPE's inverse in registers before storing them
// (where the kernels support it: the CPU reference, and the bf16 tensor-core kernels on CUDA),
// instead of a rope pass over the gradient afterwards. The forward turns q and k in qkv's own
// buffer when nothing else holds it (pass a temporary, or std::move the Var), as rope_qkv does;
// otherwise it turns a copy and leaves qkv unchanged.
template <class T, DeviceTag D>
Var<T, D> rope_attention_qkv(Var<T, D> qkv, int n_heads, double theta = 10000.0,
                             std::int64_t pos0 = 0, bool causal = true) {
  FATHOM_CHECK(qkv.defined(), "rope_attention_qkv: qkv is undefined (used again after std::move?)");
  FATHOM_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0,
               "rope_attention_qkv: expected qkv of shape (B, T, 3C), got " << qkv.shape());
  FATHOM_CHECK(n_heads > 0, "rope_attention_qkv: expected n_heads > 0, got " << n_heads);
  const std::int64_t B = qkv.size(0), Tn = qkv.size(1), C = qkv.size(2) / 3;
  FATHOM_CHECK(C % n_heads == 0 && (C / n_heads) % 2 == 0,
               "rope_attention_qkv: qkv " << qkv.shape() << " with " << n_heads
                                          << " heads: expected C a multiple of n_heads and an "
                                             "even head size");
  FATHOM_CHECK(theta > 0, "rope_attention_qkv: expected theta > 0, got " << theta);
  const auto turn = [=](T* data, bool inverse) {
    kernels::rope_qkv(D{},
                      kernels::RopeQkvParams<T>{data, B, Tn, C, n_heads, theta, pos0, inverse});
  };
  const Tensor<T, D>& in = qkv.value();
  Tensor<T, D> x = in.storage_use_count() == 1 && in.is_contiguous() ? in : in.clone();
  if (x.numel() > 0) turn(x.data(), false);
  const auto a = detail::qkv_attention(x, n_heads, causal);
  return Var<T, D>::make_result(
      a.o, qkv.requires_grad(),
      [g = grad_target(qkv), x, o = a.o, lse = a.lse, fp = a.fp, theta, pos0,
       turn](const Tensor<T, D>& gy) {
        if (o.numel() == 0) return;
        Tensor<T, D> d_o = gy.contiguous();
        const auto dst = g->write_target();
        auto bp = detail::qkv_backward_params(fp, d_o.data(), dst);
        bp.rope_theta = theta;
        bp.rope_pos0 = pos0;
        if (kernels::attention_backward_turns_rope(D{}, bp)) {
          kernels::attention_backward(D{}, bp);
          return;
        }
        // The kernels cannot turn the gradient themselves: the attention backward into a buffer
        // of its own (qkv's gradient when it is fresh), then the rope pass over it.
        Tensor<T, D> own = dst.accumulate ? Tensor<T, D>(x.shape()) : Tensor<T, D>();
        T* into = dst.accumulate ? own.data() : dst.data;
        kernels::attention_backward(D{},
                                    detail::qkv_backward_params(fp, d_o.data(), {into, false}));
        turn(into, true);
        if (dst.accumulate)
          kernels::axpy(D{}, kernels::AxpyParams<T>{into, dst.data, own.numel(), 1.0});
      });
}

}  // namespace fathom::autograd
