// Normalization kernels over the last dimension: RMSNorm and LayerNorm with a learned gain (and
// bias) and a fixed output scale, forward and backward. CPU reference here; CUDA in cuda/norm.cuh.
//
// The output scale is what lets a normalization policy (LNS: 1/sqrt(l)) cost nothing: it is
// folded into the same pass that applies the gain, forward and backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = (w * x * rstd) * out_scale, rstd = 1 / sqrt(mean(x^2) + eps), per row of C.
// The mean of squares is taken in accum_t<T> (fp32 for bf16).

template <class T>
struct RmsNormParams {
  const T* x = nullptr;        // (N, C)
  const T* w = nullptr;        // (C)
  T* y = nullptr;              // (N, C)
  accum_t<T>* rstd = nullptr;  // (N) saved for backward; nullptr when no backward will run
  std::int64_t rows = 0;       // N
  std::int64_t cols = 0;       // C
  double eps = 1e-6;
  double out_scale = 1.0;
};

// dx (+)= rstd * (g - xhat * mean(g * xhat)), g = dy * w * out_scale, xhat = x * rstd;
// dw += out_scale * sum over rows of dy * xhat. dw always accumulates (a parameter gradient);
// dx accumulates unless accumulate_dx is false (a buffer just allocated for it).
template <class T>
struct RmsNormBackwardParams {
  const T* dy = nullptr;             // (N, C)
  const T* x = nullptr;              // (N, C)
  const T* w = nullptr;              // (C)
  const accum_t<T>* rstd = nullptr;  // (N) from the forward
  T* dx = nullptr;                   // (N, C) nullptr: not wanted
  T* dw = nullptr;                   // (C)    nullptr: not wanted
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  double out_scale = 1.0;
  bool accumulate_dx = true;
};

// ---------------------------------------------------------------------------------------------
// LayerNorm: y = (w * xhat + b) * out_scale, xhat = (x - mean) * rstd,
// rstd = 1 / sqrt(var + eps) with the biased variance, per row of C. b may be nullptr (no bias).

template <class T>
struct LayerNormParams {
  const T* x = nullptr;        // (N, C)
  const T* w = nullptr;        // (C)
  const T* b = nullptr;        // (C) nullptr: no bias
  T* y = nullptr;              // (N, C)
  accum_t<T>* mean = nullptr;  // (N) saved for backward; nullptr when no backward will run
  accum_t<T>* rstd = nullptr;  // (N) saved for backward; nullptr when no backward will run
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  double eps = 1e-5;
  double out_scale = 1.0;
};

// dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w * out_scale;
// dw += out_scale * sum dy * xhat, db += out_scale * sum dy (over rows).
template <class T>
struct LayerNormBackwardParams {
  const T* dy = nullptr;             // (N, C)
  const T* x = nullptr;              // (N, C)
  const T* w = nullptr;              // (C)
  const accum_t<T>* mean = nullptr;  // (N) from the forward
  const accum_t<T>* rstd = nullptr;  // (N) from the forward
  T* dx = nullptr;                   // (N, C) nullptr: not wanted
  T* dw = nullptr;                   // (C)    nullptr: not wanted
  T* db = nullptr;                   // (C)    nullptr: not wanted
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  double out_scale = 1.0;
  bool accumulate_dx = true;
};

// ---------------------------------------------------------------------------------------------
// CPU reference.

template <class T>
void rms_norm(Cpu, const RmsNormParams<T>& p) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(p.out_scale);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.cols;  // (C)
    T* y = p.y + r * p.cols;        // (C)
    A sum_sq = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A v = scalar_cast<A>(x[c]);
      sum_sq += v * v;
    }
    const A rstd = A(1) / std::sqrt(sum_sq / static_cast<A>(p.cols) + static_cast<A>(p.eps));
    if (p.rstd) p.rstd[r] = rstd;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      y[c] = scalar_cast<T>(scalar_cast<A>(p.w[c]) * (scalar_cast<A>(x[c]) * rstd) * scale);
    }
  }
}

template <class T>
void rms_norm_backward(Cpu, const RmsNormBackwardParams<T>& p) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(p.out_scale);
  const A inv_cols = A(1) / static_cast<A>(p.cols);
  std::vector<A> dw(p.dw ? static_cast<std::size_t>(p.cols) : 0, A(0));  // (C) summed over rows
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.cols;    // (C)
    const T* dy = p.dy + r * p.cols;  // (C)
    const A rstd = p.rstd[r];
    A sum_gx = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A g = scalar_cast<A>(dy[c]) * scalar_cast<A>(p.w[c]) * scale;
      sum_gx += g * (scalar_cast<A>(x[c]) * rstd);
    }
    const A mean_gx = sum_gx * inv_cols;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      const A xhat = scalar_cast<A>(x[c]) * rstd;
      if (p.dx) {
        A g = scalar_cast<A>(dy[c]) * scalar_cast<A>(p.w[c]) * scale;
        A d = rstd * (g - xhat * mean_gx);
        T& out = p.dx[r * p.cols + c];
        out = scalar_cast<T>(p.accumulate_dx ? scalar_cast<A>(out) + d : d);
      }
      if (p.dw) dw[static_cast<std::size_t>(c)] += scalar_cast<A>(dy[c]) * xhat;
    }
  }
  if (p.dw) {
    for (std::int64_t c = 0; c < p.cols; ++c) {
      p.dw[c] = scalar_cast<T>(scalar_cast<A>(p.dw[c]) + scale * dw[static_cast<std::size_t>(c)]);
    }
  }
}

template <class T>
void layer_norm(Cpu, const LayerNormParams<T>& p) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(p.out_scale);
  const A inv_cols = A(1) / static_cast<A>(p.cols);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.cols;  // (C)
    T* y = p.y + r * p.cols;        // (C)
    A sum = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) sum += scalar_cast<A>(x[c]);
    const A mean = sum * inv_cols;
    A sum_sq = 0;  // around the mean: exact even when |mean| >> std
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A d = scalar_cast<A>(x[c]) - mean;
      sum_sq += d * d;
    }
    const A rstd = A(1) / std::sqrt(sum_sq * inv_cols + static_cast<A>(p.eps));
    if (p.mean) p.mean[r] = mean;
    if (p.rstd) p.rstd[r] = rstd;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A v = scalar_cast<A>(p.w[c]) * ((scalar_cast<A>(x[c]) - mean) * rstd);
      if (p.b) v += scalar_cast<A>(p.b[c]);
      y[c] = scalar_cast<T>(v * scale);
    }
  }
}

template <class T>
void layer_norm_backward(Cpu, const LayerNormBackwardParams<T>& p) {
  using A = accum_t<T>;
  const A scale = static_cast<A>(p.out_scale);
  const A inv_cols = A(1) / static_cast<A>(p.cols);
  std::vector<A> dw(p.dw ? static_cast<std::size_t>(p.cols) : 0, A(0));  // (C) summed over rows
  std::vector<A> db(p.db ? static_cast<std::size_t>(p.cols) : 0, A(0));  // (C)
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.cols;    // (C)
    const T* dy = p.dy + r * p.cols;  // (C)
    const A mean = p.mean[r], rstd = p.rstd[r];
    A sum_g = 0, sum_gx = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A g = scalar_cast<A>(dy[c]) * scalar_cast<A>(p.w[c]) * scale;
      sum_g += g;
      sum_gx += g * ((scalar_cast<A>(x[c]) - mean) * rstd);
    }
    const A mean_g = sum_g * inv_cols, mean_gx = sum_gx * inv_cols;
    for (std::int64_t c = 0; c < p.cols; ++c) {
      const A xhat = (scalar_cast<A>(x[c]) - mean) * rstd;
      if (p.dx) {
        A g = scalar_cast<A>(dy[c]) * scalar_cast<A>(p.w[c]) * scale;
        A d = rstd * (g - mean_g - xhat * mean_gx);
        T& out = p.dx[r * p.cols + c];
        out = scalar_cast<T>(p.accumulate_dx ? scalar_cast<A>(out) + d : d);
      }
      if (p.dw) dw[static_cast<std::size_t>(c)] += scalar_cast<A>(dy[c]) * xhat;
      if (p.db) db[static_cast<std::size_t>(c)] += scalar_cast<A>(dy[c]);
    }
  }
  for (std::int64_t c = 0; c < p.cols; ++c) {
    const auto k = static_cast<std::size_t>(c);
    if (p.dw) p.dw[c] = scalar_cast<T>(scalar_cast<A>(p.dw[c]) + scale * dw[k]);
    if (p.db) p.db[c] = scalar_cast<T>(scalar_cast<A>(p.db[c]) + scale * db[k]);
  }
}

}  // namespace fathom::kernels
