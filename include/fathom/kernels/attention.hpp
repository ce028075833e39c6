// Multi-head scaled dot-product attention (causal or full): the Params structs and the CPU
// reference, forward and backward side by side. The CUDA kernels are in kernels/cuda/attention.cuh.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/kernels/rope.hpp"

namespace fathom::kernels {

// Layout shared by forward and backward. q, k, v, o hold B * T rows of C = heads * head_dim
// features; head h owns columns [h * head_dim, (h + 1) * head_dim) of a row ((B, T, H, hd) inside
// C). Row t of batch b starts at ptr + (b * seq + t) * row_stride, so a row stride above C reads
// q, k and v in place from a fused (B, T, 3C) projection. Strides are in elements.
//
// Forward: o = softmax(scale * q k^T + mask) v per (b, h), where the causal mask hides key s > t
// from query t. It also writes lse[b, h, t] = log sum_s exp(scale * q_t . k_s) (over visible s),
// which the backward uses to recompute the probabilities without storing them.
template <class T>
struct AttentionParams {
  const T* q = nullptr;       // (B, T, C) rows of q_stride
  const T* k = nullptr;       // (B, T, C) rows of k_stride
  const T* v = nullptr;       // (B, T, C) rows of v_stride
  T* o = nullptr;             // (B, T, C) rows of o_stride, written
  accum_t<T>* lse = nullptr;  // (B, H, T) contiguous, written
  std::int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  std::int64_t q_stride = 0, k_stride = 0, v_stride = 0, o_stride = 0;
  bool causal = true;
  double scale = 1.0;  // usually 1 / sqrt(head_dim)
};

// Backward: given d_o = dL/do, ACCUMULATES (+=) dL/dq, dL/dk, dL/dv into dq, dk, dv. Any of the
// three may be null (that gradient is not wanted). With P = softmax(S), S = scale * q k^T:
//   dP = d_o v^T, dS = P * (dP - rowsum(d_o * o)), dq = scale dS k, dk = scale dS^T q, dv = P^T
//   d_o.
// o and lse are the forward's outputs.
template <class T>
struct AttentionBackwardParams {
  const T* q = nullptr;             // (B, T, C) rows of q_stride
  const T* k = nullptr;             // (B, T, C) rows of k_stride
  const T* v = nullptr;             // (B, T, C) rows of v_stride
  const T* o = nullptr;             // (B, T, C) rows of o_stride
  const T* d_o = nullptr;           // (B, T, C) rows of do_stride
  const accum_t<T>* lse = nullptr;  // (B, H, T)
  T* dq = nullptr;                  // (B, T, C) rows of dq_stride, accumulated (see accumulate)
  T* dk = nullptr;                  // (B, T, C) rows of dk_stride, accumulated (see accumulate)
  T* dv = nullptr;                  // (B, T, C) rows of dv_stride, accumulated (see accumulate)
  std::int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  std::int64_t q_stride = 0, k_stride = 0, v_stride = 0, o_stride = 0, do_stride = 0;
  std::int64_t dq_stride = 0, dk_stride = 0, dv_stride = 0;
  bool causal = true;
  double scale = 1.0;
  bool accumulate = true;  // false: overwrite dq, dk and dv (buffers just allocated for them)
  // rope_theta > 0: q and k were turned by RoPE (kernels/rope.hpp, theta rope_theta, row t of a
  // sequence at position rope_pos0 + t) before attention read them. dq and dk are then turned
  // back by the inverse rotation before they are stored, so they are the gradients with respect
  // to the unturned q and k: the backward of rope and attention in one pass. Needs an even
  // head_dim, and a backend for which attention_backward_turns_rope(D, p) is true.
  double rope_theta = 0.0;
  std::int64_t rope_pos0 = 0;
};

// Whether attention_backward(Cpu, p) honors p.rope_theta: always (the CPU reference turns its
// gathered gradients before adding them to the outputs).
template <class T>
bool attention_backward_turns_rope(Cpu, const AttentionBackwardParams<T>&) {
  return true;
}

namespace detail {

// RoPE's inverse turn of one (b, h)'s gathered gradient g (T, hd) in place: pair (i, i + hd/2) of
// row t by -angle(pos0 + t, i), as rope_backward turns it.
template <class A>
void unturn_rope_rows(std::vector<A>& g, std::int64_t seq, std::int64_t hd, double theta,
                      std::int64_t pos0) {
  const std::int64_t half = hd / 2;
  for (std::int64_t t = 0; t < seq; ++t) {
    for (std::int64_t i = 0; i < half; ++i) {
      const A angle = static_cast<A>(pos0 + t) * rope_inv_freq<A>(theta, i, hd);
      const A cos = std::cos(angle), sin = -std::sin(angle);
      A* row = g.data() + t * hd;
      const A x1 = row[i], x2 = row[i + half];
      row[i] = x1 * cos - x2 * sin;
      row[i + half] = x2 * cos + x1 * sin;
    }
  }
}

}  // namespace detail

// ---- CPU reference -------------------------------------------------------------------------

template <class T>
void attention(Cpu, const AttentionParams<T>& p) {
  using A = accum_t<T>;
  const std::int64_t Tn = p.seq, hd = p.head_dim;
  const A scale = static_cast<A>(p.scale);
  std::vector<A> s(static_cast<std::size_t>(Tn));  // scores of one query row
  std::vector<A> acc(static_cast<std::size_t>(hd));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      for (std::int64_t t = 0; t < Tn; ++t) {
        const T* qt = p.q + (b * Tn + t) * p.q_stride + h * hd;  // (hd)
        const std::int64_t visible = p.causal ? t + 1 : Tn;
        A mx = -std::numeric_limits<A>::infinity();
        for (std::int64_t j = 0; j < visible; ++j) {
          const T* kj = p.k + (b * Tn + j) * p.k_stride + h * hd;
          A dot = 0;
          for (std::int64_t d = 0; d < hd; ++d)
            dot += static_cast<A>(qt[d]) * static_cast<A>(kj[d]);
          s[static_cast<std::size_t>(j)] = dot * scale;
          if (s[static_cast<std::size_t>(j)] > mx) mx = s[static_cast<std::size_t>(j)];
        }
        A sum = 0;
        for (std::int64_t j = 0; j < visible; ++j) {
          A e = std::exp(s[static_cast<std::size_t>(j)] - mx);
          s[static_cast<std::size_t>(j)] = e;
          sum += e;
        }
        for (auto& a : acc) a = 0;
        for (std::int64_t j = 0; j < visible; ++j) {
          const T* vj = p.v + (b * Tn + j) * p.v_stride + h * hd;
          const A w = s[static_cast<std::size_t>(j)] / sum;
          for (std::int64_t d = 0; d < hd; ++d)
            acc[static_cast<std::size_t>(d)] += w * static_cast<A>(vj[d]);
        }
        T* ot = p.o + (b * Tn + t) * p.o_stride + h * hd;
        for (std::int64_t d = 0; d < hd; ++d)
          ot[d] = scalar_cast<T>(acc[static_cast<std::size_t>(d)]);
        p.lse[(b * p.heads + h) * Tn + t] = mx + std::log(sum);
      }
    }
  }
}

template <class T>
void attention_backward(Cpu, const AttentionBackwardParams<T>& p) {
  using A = accum_t<T>;
  const std::int64_t Tn = p.seq, hd = p.head_dim;
  const A scale = static_cast<A>(p.scale);
  const auto n = static_cast<std::size_t>(Tn * hd);
  FATHOM_CHECK(p.rope_theta <= 0 || hd % 2 == 0,
               "attention_backward: RoPE's inverse turn needs an even head_dim, got " << hd);
  // One (b, h) at a time, gradients gathered in A and added to the outputs once.
  std::vector<A> dq(n), dk(n), dv(n);  // (T, hd) each
  auto at = [hd](std::vector<A>& buf, std::int64_t t) { return buf.data() + t * hd; };
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      std::fill(dq.begin(), dq.end(), A(0));
      std::fill(dk.begin(), dk.end(), A(0));
      std::fill(dv.begin(), dv.end(), A(0));
      auto row = [&](const T* base, std::int64_t stride, std::int64_t t) {
        return base + (b * Tn + t) * stride + h * hd;
      };
      for (std::int64_t i = 0; i < Tn; ++i) {
        const T* qi = row(p.q, p.q_stride, i);
        const T* oi = row(p.o, p.o_stride, i);
        const T* doi = row(p.d_o, p.do_stride, i);
        const A lse = p.lse[(b * p.heads + h) * Tn + i];
        A delta = 0;  // rowsum(d_o * o)
        for (std::int64_t d = 0; d < hd; ++d)
          delta += static_cast<A>(doi[d]) * static_cast<A>(oi[d]);
        const std::int64_t visible = p.causal ? i + 1 : Tn;
        for (std::int64_t j = 0; j < visible; ++j) {
          const T* kj = row(p.k, p.k_stride, j);
          const T* vj = row(p.v, p.v_stride, j);
          A s = 0, dp = 0;
          for (std::int64_t d = 0; d < hd; ++d) {
            s += static_cast<A>(qi[d]) * static_cast<A>(kj[d]);
            dp += static_cast<A>(doi[d]) * static_cast<A>(vj[d]);
          }
          const A pij = std::exp(s * scale - lse);
          const A ds = pij * (dp - delta) * scale;
          A* dqi = at(dq, i);
          A* dkj = at(dk, j);
          A* dvj = at(dv, j);
          for (std::int64_t d = 0; d < hd; ++d) {
            dqi[d] += ds * static_cast<A>(kj[d]);
            dkj[d] += ds * static_cast<A>(qi[d]);
            dvj[d] += pij * static_cast<A>(doi[d]);
          }
        }
      }
      auto add = [&](T* out, std::int64_t stride, std::vector<A>& g) {
        if (!out) return;
        for (std::int64_t t = 0; t < Tn; ++t) {
          T* r = out + (b * Tn + t) * stride + h * hd;
          const A* gt = at(g, t);
          for (std::int64_t d = 0; d < hd; ++d)
            r[d] = scalar_cast<T>(p.accumulate ? static_cast<A>(r[d]) + gt[d] : gt[d]);
        }
      };
      if (p.rope_theta > 0) {
        if (p.dq) detail::unturn_rope_rows(dq, Tn, hd, p.rope_theta, p.rope_pos0);
        if (p.dk) detail::unturn_rope_rows(dk, Tn, hd, p.rope_theta, p.rope_pos0);
      }
      add(p.dq, p.dq_stride, dq);
      add(p.dk, p.dk_stride, dk);
      add(p.dv, p.dv_stride, dv);
    }
  }
}

}  // namespace fathom::kernels
