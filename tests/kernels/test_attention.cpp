// Tests for the CPU attention kernels (include/fathom/kernels/attention.hpp): forward and backward
// against a naive formula that materializes the (T, T) matrices in double, strided (fused
// projection) rows, and the causal mask as a property (no output depends on a future key).
#include <fathom/kernels/attention.hpp>
#include <fathom/kernels/rope.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::accum_t;
using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;

using namespace fathom::test;

namespace {

struct Dims {
  std::int64_t B, T, H, hd;
  std::int64_t C() const { return H * hd; }
  std::size_t n() const { return static_cast<std::size_t>(B * T * H * hd); }
};

// First element where |got - want| > atol + rtol * |want|, as "name[b, t, c]: got x, want y", or
// an empty string. idx(i) turns a flat index into the "[b, t, c]" text.
template <class Idx>
std::string first_mismatch(const std::string& name, const std::vector<double>& got,
                           const std::vector<double>& want, double rtol, double atol, Idx idx) {
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    if (!(err <= atol + rtol * std::abs(want[i]))) {
      std::ostringstream s;
      s << name << idx(i) << ": got " << got[i] << ", want " << want[i] << " (|diff| " << err
        << ")";
      return s.str();
    }
  }
  return {};
}

auto btc(const Dims& d) {
  return [d](std::size_t i) {
    const auto C = static_cast<std::size_t>(d.C()), T = static_cast<std::size_t>(d.T);
    std::ostringstream s;
    s << "[b " << i / (T * C) << ", t " << i / C % T << ", c " << i % C << "]";
    return s.str();
  };
}
auto bht(const Dims& d) {
  return [d](std::size_t i) {
    const auto H = static_cast<std::size_t>(d.H), T = static_cast<std::size_t>(d.T);
    std::ostringstream s;
    s << "[b " << i / (T * H) << ", h " << i / T % H << ", t " << i % T << "]";
    return s.str();
  };
}

// The textbook formula: P = softmax(scale q k^T + mask) as a full (T, T) matrix per (b, h), in
// double. Returns o (B, T, C) and lse (B, H, T); with d_o, also dq, dk, dv.
struct Naive {
  std::vector<double> o, lse, dq, dk, dv;
};

Naive naive_attention(const Dims& d, const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v, bool causal, const std::vector<double>* d_o) {
  const std::int64_t T = d.T, C = d.C(), hd = d.hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  Naive r;
  r.o.assign(d.n(), 0.0);
  r.lse.assign(static_cast<std::size_t>(d.B * d.H * T), 0.0);
  if (d_o) {
    r.dq.assign(d.n(), 0.0);
    r.dk.assign(d.n(), 0.0);
    r.dv.assign(d.n(), 0.0);
  }
  auto at = [&](std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t c) {
    return static_cast<std::size_t>((b * T + t) * C + h * hd + c);
  };
  const auto TT = static_cast<std::size_t>(T * T);
  std::vector<double> P(TT), dP(TT);
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t h = 0; h < d.H; ++h) {
      for (std::int64_t i = 0; i < T; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < T; ++j) {
          double s = 0;
          for (std::int64_t c = 0; c < hd; ++c) s += q[at(b, i, h, c)] * k[at(b, j, h, c)];
          s = (causal && j > i) ? -std::numeric_limits<double>::infinity() : s * scale;
          P[static_cast<std::size_t>(i * T + j)] = s;
          mx = std::max(mx, s);
        }
        double sum = 0;
        for (std::int64_t j = 0; j < T; ++j)
          sum += std::exp(P[static_cast<std::size_t>(i * T + j)] - mx);
        r.lse[static_cast<std::size_t>((b * d.H + h) * T + i)] = mx + std::log(sum);
        for (std::int64_t j = 0; j < T; ++j) {
          auto& pij = P[static_cast<std::size_t>(i * T + j)];
          pij = std::exp(pij - mx) / sum;
          for (std::int64_t c = 0; c < hd; ++c) r.o[at(b, i, h, c)] += pij * v[at(b, j, h, c)];
        }
      }
      if (!d_o) continue;
      const auto& g = *d_o;
      for (std::int64_t i = 0; i < T; ++i) {
        double delta = 0;  // sum_j P_ij dP_ij = rowsum(d_o * o)
        for (std::int64_t j = 0; j < T; ++j) {
          double dp = 0;
          for (std::int64_t c = 0; c < hd; ++c) dp += g[at(b, i, h, c)] * v[at(b, j, h, c)];
          dP[static_cast<std::size_t>(i * T + j)] = dp;
          delta += P[static_cast<std::size_t>(i * T + j)] * dp;
        }
        for (std::int64_t j = 0; j < T; ++j) {
          const double pij = P[static_cast<std::size_t>(i * T + j)];
          const double ds = pij * (dP[static_cast<std::size_t>(i * T + j)] - delta);
          for (std::int64_t c = 0; c < hd; ++c) {
            r.dq[at(b, i, h, c)] += scale * ds * k[at(b, j, h, c)];
            r.dk[at(b, j, h, c)] += scale * ds * q[at(b, i, h, c)];
            r.dv[at(b, j, h, c)] += pij * g[at(b, i, h, c)];
          }
        }
      }
    }
  }
  return r;
}

template <class T>
fathom::kernels::AttentionParams<T> forward_params(const Dims& d, const std::vector<T>& q,
                                                   const std::vector<T>& k, const std::vector<T>& v,
                                                   std::vector<T>& o, std::vector<accum_t<T>>& lse,
                                                   bool causal) {
  fathom::kernels::AttentionParams<T> p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o.data();
  p.lse = lse.data();
  p.batch = d.B;
  p.seq = d.T;
  p.heads = d.H;
  p.head_dim = d.hd;
  p.q_stride = p.k_stride = p.v_stride = p.o_stride = d.C();
  p.causal = causal;
  p.scale = 1.0 / std::sqrt(static_cast<double>(d.hd));
  return p;
}

// The backward of the forward fp (packed (B, T, C) rows): d_o and the gradients it adds to, any
// of which may be null (not wanted).
template <class T>
fathom::kernels::AttentionBackwardParams<T> backward_params(
    const fathom::kernels::AttentionParams<T>& fp, const T* d_o, T* dq, T* dk, T* dv) {
  fathom::kernels::AttentionBackwardParams<T> bp;
  bp.q = fp.q;
  bp.k = fp.k;
  bp.v = fp.v;
  bp.o = fp.o;
  bp.d_o = d_o;
  bp.lse = fp.lse;
  bp.dq = dq;
  bp.dk = dk;
  bp.dv = dv;
  bp.batch = fp.batch;
  bp.seq = fp.seq;
  bp.heads = fp.heads;
  bp.head_dim = fp.head_dim;
  const std::int64_t C = fp.heads * fp.head_dim;
  bp.q_stride = bp.k_stride = bp.v_stride = bp.o_stride = bp.do_stride = C;
  bp.dq_stride = bp.dk_stride = bp.dv_stride = C;
  bp.causal = fp.causal;
  bp.scale = fp.scale;
  return bp;
}

// Gradient tolerances: the backward sums T products, and dS = P (dP - delta) cancels, so the
// absolute floor is wider than for the forward.
template <class T>
constexpr double grad_tol() {
  if constexpr (std::is_same_v<T, double>)
    return 1e-10;
  else if constexpr (std::is_same_v<T, float>)
    return 2e-4;
  else
    return 3e-2;
}

}  // namespace

TEMPLATE_TEST_CASE("attention forward matches the naive formula", "[kernels][attention]", double,
                   float, bf16) {
  using T = TestType;
  auto [B, Tn, H, hd] = GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
      {{1, 1, 1, 4}, {2, 7, 3, 4}, {1, 33, 2, 16}, {3, 5, 1, 1}, {2, 17, 4, 8}}));
  const bool causal = GENERATE(true, false);
  const Dims d{B, Tn, H, hd};
  INFO("B " << B << " T " << Tn << " H " << H << " hd " << hd << " causal " << causal << " "
            << Precision<T>::name);
  auto q = normal_values<T>(d.n(), 11), k = normal_values<T>(d.n(), 12),
       v = normal_values<T>(d.n(), 13);
  std::vector<T> o(d.n(), scalar_cast<T>(123.0));
  std::vector<accum_t<T>> lse(static_cast<std::size_t>(B * H * Tn), accum_t<T>(123));
  fathom::kernels::attention(Cpu{}, forward_params(d, q, k, v, o, lse, causal));

  auto ref = naive_attention(d, to_double(q), to_double(k), to_double(v), causal, nullptr);
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("o", to_double(o), ref.o, rtol, atol, btc(d)) == "");
  CHECK(first_mismatch("lse", to_double(lse), ref.lse, rtol, atol, bht(d)) == "");
}

TEMPLATE_TEST_CASE("attention backward matches the naive formula and accumulates",
                   "[kernels][attention]", double, float, bf16) {
  using T = TestType;
  auto [B, Tn, H, hd] = GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
      {{1, 1, 1, 4}, {2, 7, 3, 4}, {1, 33, 2, 16}, {2, 17, 4, 8}}));
  const bool causal = GENERATE(true, false);
  const Dims d{B, Tn, H, hd};
  INFO("B " << B << " T " << Tn << " H " << H << " hd " << hd << " causal " << causal << " "
            << Precision<T>::name);
  auto q = normal_values<T>(d.n(), 21), k = normal_values<T>(d.n(), 22),
       v = normal_values<T>(d.n(), 23);
  auto d_o = normal_values<T>(d.n(), 24);
  std::vector<T> o(d.n());
  std::vector<accum_t<T>> lse(static_cast<std::size_t>(B * H * Tn));
  auto fp = forward_params(d, q, k, v, o, lse, causal);
  fathom::kernels::attention(Cpu{}, fp);

  // Gradients start random: the kernel must add to them, not overwrite.
  auto dq = normal_values<T>(d.n(), 31), dk = normal_values<T>(d.n(), 32),
       dv = normal_values<T>(d.n(), 33);
  const auto dq0 = to_double(dq), dk0 = to_double(dk), dv0 = to_double(dv);
  fathom::kernels::attention_backward(
      Cpu{}, backward_params(fp, d_o.data(), dq.data(), dk.data(), dv.data()));

  const auto g = to_double(d_o);
  auto ref = naive_attention(d, to_double(q), to_double(k), to_double(v), causal, &g);
  for (std::size_t i = 0; i < d.n(); ++i) {
    ref.dq[i] += dq0[i];
    ref.dk[i] += dk0[i];
    ref.dv[i] += dv0[i];
  }
  const double tol = grad_tol<T>();
  CHECK(first_mismatch("dq", to_double(dq), ref.dq, tol, tol, btc(d)) == "");
  CHECK(first_mismatch("dk", to_double(dk), ref.dk, tol, tol, btc(d)) == "");
  CHECK(first_mismatch("dv", to_double(dv), ref.dv, tol, tol, btc(d)) == "");
}

TEST_CASE("attention backward skips gradients that are not wanted", "[kernels][attention]") {
  const Dims d{2, 9, 2, 4};
  auto q = normal_values<double>(d.n(), 41), k = normal_values<double>(d.n(), 42);
  auto v = normal_values<double>(d.n(), 43), d_o = normal_values<double>(d.n(), 44);
  std::vector<double> o(d.n()), lse(static_cast<std::size_t>(d.B * d.H * d.T));
  auto fp = forward_params(d, q, k, v, o, lse, true);
  fathom::kernels::attention(Cpu{}, fp);
  std::vector<double> dv(d.n(), 0.0);
  // dq and dk not wanted
  fathom::kernels::attention_backward(
      Cpu{}, backward_params<double>(fp, d_o.data(), nullptr, nullptr, dv.data()));
  auto ref = naive_attention(d, q, k, v, true, &d_o);
  CHECK(first_mismatch("dv", dv, ref.dv, 1e-10, 1e-12, btc(d)) == "");
}

TEMPLATE_TEST_CASE("attention reads strided rows of a fused projection in place",
                   "[kernels][attention]", float, bf16) {
  using T = TestType;
  const Dims d{2, 13, 3, 8};
  const std::int64_t C = d.C(), qkv_stride = 3 * C + 8, o_stride = C + 5;
  const auto rows = static_cast<std::size_t>(d.B * d.T);
  // (B, T, 3C + 8): q, k, v side by side, then padding that nothing may read.
  auto fused = normal_values<T>(rows * static_cast<std::size_t>(qkv_stride), 51);
  std::vector<T> q(d.n()), k(d.n()), v(d.n());
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < C; ++c) {
      const auto dst = r * static_cast<std::size_t>(C) + static_cast<std::size_t>(c);
      const auto src = r * static_cast<std::size_t>(qkv_stride) + static_cast<std::size_t>(c);
      q[dst] = fused[src];
      k[dst] = fused[src + static_cast<std::size_t>(C)];
      v[dst] = fused[src + 2 * static_cast<std::size_t>(C)];
    }
  }
  std::vector<T> o(d.n());
  std::vector<accum_t<T>> lse(static_cast<std::size_t>(d.B * d.H * d.T));
  fathom::kernels::attention(Cpu{}, forward_params(d, q, k, v, o, lse, true));

  const T sentinel = scalar_cast<T>(-7.0);
  std::vector<T> o_wide(rows * static_cast<std::size_t>(o_stride), sentinel);
  std::vector<accum_t<T>> lse2(lse.size());
  auto p = forward_params(d, q, k, v, o_wide, lse2, true);
  p.q = fused.data();
  p.k = fused.data() + C;
  p.v = fused.data() + 2 * C;
  p.q_stride = p.k_stride = p.v_stride = qkv_stride;
  p.o_stride = o_stride;
  fathom::kernels::attention(Cpu{}, p);

  for (std::size_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < o_stride; ++c) {
      const T got = o_wide[r * static_cast<std::size_t>(o_stride) + static_cast<std::size_t>(c)];
      const T want =
          c < C ? o[r * static_cast<std::size_t>(C) + static_cast<std::size_t>(c)] : sentinel;
      INFO("row " << r << " column " << c);
      REQUIRE(scalar_cast<double>(got) == scalar_cast<double>(want));
    }
  }
  CHECK(lse2 == lse);
}

TEST_CASE("causal attention: no output depends on a future key or value", "[kernels][attention]") {
  const Dims d{2, 12, 2, 4};
  const std::int64_t t0 = GENERATE(0, 5, 10);
  const bool causal = GENERATE(true, false);
  INFO("perturbing keys and values after t = " << t0 << ", causal " << causal);
  auto q = normal_values<float>(d.n(), 61), k = normal_values<float>(d.n(), 62),
       v = normal_values<float>(d.n(), 63);
  std::vector<float> o1(d.n()), o2(d.n());
  std::vector<float> lse1(static_cast<std::size_t>(d.B * d.H * d.T)), lse2(lse1.size());
  fathom::kernels::attention(Cpu{}, forward_params(d, q, k, v, o1, lse1, causal));
  const auto C = static_cast<std::size_t>(d.C());
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t t = t0 + 1; t < d.T; ++t) {
      for (std::size_t c = 0; c < C; ++c) {
        const auto i = static_cast<std::size_t>(b * d.T + t) * C + c;
        k[i] += 1.5f;
        v[i] -= 2.0f;
      }
    }
  }
  fathom::kernels::attention(Cpu{}, forward_params(d, q, k, v, o2, lse2, causal));
  bool past_same = true, future_changed = true;
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t t = 0; t < d.T; ++t) {
      bool row_same = true;
      for (std::size_t c = 0; c < C; ++c) {
        const auto i = static_cast<std::size_t>(b * d.T + t) * C + c;
        row_same = row_same && o1[i] == o2[i];
      }
      if (t <= t0)
        past_same = past_same && row_same;
      else
        future_changed = future_changed && !row_same;
    }
  }
  if (causal) {
    CHECK(past_same);  // rows t <= t0 are bit-identical
  } else if (t0 + 1 < d.T) {
    CHECK_FALSE(past_same);  // without the mask every row sees the change
  }
  if (t0 + 1 < d.T) CHECK(future_changed);
}

TEST_CASE("attention backward with rope_theta equals the backward, then rope's backward on dq, dk",
          "[kernels][attention][rope]") {
  auto [B, Tn, H, hd, pos0] =
      GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
          {{1, 1, 1, 2, 0}, {2, 7, 3, 4, 0}, {1, 33, 2, 16, 5}, {2, 17, 4, 8, 1000}}));
  const bool causal = GENERATE(true, false);
  const double theta = GENERATE(10000.0, 300.0);
  const Dims d{B, Tn, H, hd};
  INFO("B " << B << " T " << Tn << " H " << H << " hd " << hd << " pos0 " << pos0 << " theta "
            << theta << " causal " << causal);
  auto q = normal_values<double>(d.n(), 51), k = normal_values<double>(d.n(), 52),
       v = normal_values<double>(d.n(), 53), d_o = normal_values<double>(d.n(), 54);
  std::vector<double> o(d.n());
  std::vector<double> lse(static_cast<std::size_t>(B * H * Tn));
  auto fp = forward_params(d, q, k, v, o, lse, causal);
  fathom::kernels::attention(Cpu{}, fp);
  auto backward = [&](double* dq, double* dk, double* dv, double rope_theta) {
    auto bp = backward_params(fp, d_o.data(), dq, dk, dv);
    bp.rope_theta = rope_theta;
    bp.rope_pos0 = pos0;
    fathom::kernels::attention_backward(Cpu{}, bp);
  };
  // Fused: onto random starting gradients.
  const auto dq0 = normal_values<double>(d.n(), 61), dk0 = normal_values<double>(d.n(), 62),
             dv0 = normal_values<double>(d.n(), 63);
  auto dq = dq0, dk = dk0, dv = dv0;
  backward(dq.data(), dk.data(), dv.data(), theta);
  // Composed: the plain backward into zeros, then rope's backward adding onto the same start.
  std::vector<double> pq(d.n()), pk(d.n()), want_dv = dv0;
  backward(pq.data(), pk.data(), want_dv.data(), 0.0);
  auto want_dq = dq0, want_dk = dk0;
  for (auto [from, to] : {std::pair{&pq, &want_dq}, std::pair{&pk, &want_dk}})
    fathom::kernels::rope_backward(
        Cpu{}, fathom::kernels::RopeBackwardParams<double>{from->data(), to->data(), B, Tn, d.C(),
                                                           static_cast<int>(H), theta, pos0, true});
  CHECK(first_mismatch("dq", dq, want_dq, 1e-12, 1e-12, btc(d)) == "");
  CHECK(first_mismatch("dk", dk, want_dk, 1e-12, 1e-12, btc(d)) == "");
  CHECK(first_mismatch("dv", dv, want_dv, 0.0, 0.0, btc(d)) == "");
  // The turn does something: the fused dq is not the unturned one (dq0 + the plain backward).
  if (Tn > 1 || pos0 > 0) {
    std::vector<double> plain(d.n());
    for (std::size_t i = 0; i < d.n(); ++i) plain[i] = dq0[i] + pq[i];
    CHECK(first_mismatch("dq", dq, plain, 1e-6, 1e-6, btc(d)) != "");
  }
}

TEST_CASE("attention backward names an odd head_dim for RoPE's inverse turn",
          "[kernels][attention][rope]") {
  fathom::kernels::AttentionBackwardParams<double> bp;
  bp.batch = bp.seq = bp.heads = 1;
  bp.head_dim = 3;
  bp.rope_theta = 10000.0;
  CHECK_THROWS_AS(fathom::kernels::attention_backward(Cpu{}, bp), fathom::Error);
}
