// Softmax over the last dimension and the fused softmax cross-entropy with integer targets and an
// ignore index, forward and backward. CPU reference here; CUDA in cuda/softmax.cuh.
//
// Cross-entropy never stores a probability matrix: the forward keeps one logsumexp per row, and
// the gradient (softmax - onehot) is recomputed from the logits and that logsumexp in one read,
// either in the backward or, when the caller knows d loss already, in the forward pass itself.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// ---------------------------------------------------------------------------------------------
// Softmax: y = exp(x - max) / sum(exp(x - max)) per row, computed in accum_t<T>.

template <class T>
struct SoftmaxParams {
  const T* x = nullptr;  // (N, C)
  T* y = nullptr;        // (N, C)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};

// dx (+)= y * (dy - sum(dy * y)) per row.
template <class T>
struct SoftmaxBackwardParams {
  const T* y = nullptr;   // (N, C) the forward's output
  const T* dy = nullptr;  // (N, C)
  T* dx = nullptr;        // (N, C)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  bool accumulate = true;  // false: overwrite dx (a buffer just allocated for it)
};

// ---------------------------------------------------------------------------------------------
// Cross-entropy: loss = mean over rows with target != ignore_index of lse_i - logits[i, target_i],
// lse_i = log(sum_j exp(logits[i, j])). When every row is ignored the loss is 0 and so is the
// gradient (never NaN). All pointers live on the kernel's device.
//
// A target outside [0, V) that is not ignore_index is an error: the CPU kernel throws
// fathom::Error naming the row, the target and V; the CUDA kernel (which cannot throw) makes that
// row's loss NaN, so the mean is NaN and the mistake shows.
template <class T>
struct CrossEntropyParams {
  const T* logits = nullptr;              // (N, V)
  const std::int32_t* targets = nullptr;  // (N)
  accum_t<T>* loss = nullptr;             // () the mean loss
  accum_t<T>* lse = nullptr;              // (N) saved for backward; nullptr: not saved
  std::int32_t* valid_rows = nullptr;     // () number of rows not ignored; nullptr: not saved
  std::int64_t rows = 0;                  // N
  std::int64_t vocab = 0;                 // V
  int ignore_index = -100;
  // Fused gradient (optional): when dlogits is set, the same pass also writes
  // dlogits (+)= grad_scale * d loss / d logits, for callers that know d loss before the backward
  // (grad_scale is that d loss, e.g. 1 / gradient-accumulation steps). dlogits may be logits
  // itself (accumulate false): each row is read whole before any of it is overwritten.
  T* dlogits = nullptr;  // (N, V)
  double grad_scale = 1.0;
  bool accumulate = false;  // true: dlogits += ; false: dlogits =
};

// dlogits (+)= dloss / valid_rows * (softmax(logits) - onehot(target)), zero for ignored rows.
template <class T>
struct CrossEntropyBackwardParams {
  const T* logits = nullptr;                 // (N, V)
  const std::int32_t* targets = nullptr;     // (N)
  const accum_t<T>* lse = nullptr;           // (N) from the forward
  const std::int32_t* valid_rows = nullptr;  // () from the forward
  const accum_t<T>* dloss = nullptr;         // () gradient of the mean loss
  T* dlogits = nullptr;                      // (N, V)
  std::int64_t rows = 0;
  std::int64_t vocab = 0;
  int ignore_index = -100;
  bool accumulate = true;  // false: overwrite dlogits
};

// dst (+)= g * (dloss / seed): a gradient the fused forward computed for the backward seed `seed`,
// brought to the seed the backward got (dloss, on the device). In place (dst == g, accumulate
// false) with dloss == seed it writes nothing; on CUDA it then reads nothing but dloss.
template <class T>
struct CrossEntropyRescaleParams {
  const T* g = nullptr;               // (n)
  T* dst = nullptr;                   // (n), may be g
  const accum_t<T>* dloss = nullptr;  // ()
  accum_t<T> seed = 1;                // nonzero
  std::int64_t n = 0;
  bool accumulate = false;  // true: dst += ; false: dst =
};

// ---------------------------------------------------------------------------------------------
// CPU reference.

template <class T>
void softmax(Cpu, const SoftmaxParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.cols;  // (C)
    T* y = p.y + r * p.cols;        // (C)
    A max = -std::numeric_limits<A>::infinity();
    for (std::int64_t c = 0; c < p.cols; ++c) max = std::max(max, scalar_cast<A>(x[c]));
    A sum = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) sum += std::exp(scalar_cast<A>(x[c]) - max);
    const A inv = A(1) / sum;
    for (std::int64_t c = 0; c < p.cols; ++c)
      y[c] = scalar_cast<T>(std::exp(scalar_cast<A>(x[c]) - max) * inv);
  }
}

template <class T>
void softmax_backward(Cpu, const SoftmaxBackwardParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* y = p.y + r * p.cols;    // (C)
    const T* dy = p.dy + r * p.cols;  // (C)
    T* dx = p.dx + r * p.cols;        // (C)
    A dot = 0;
    for (std::int64_t c = 0; c < p.cols; ++c) dot += scalar_cast<A>(dy[c]) * scalar_cast<A>(y[c]);
    for (std::int64_t c = 0; c < p.cols; ++c) {
      A d = scalar_cast<A>(y[c]) * (scalar_cast<A>(dy[c]) - dot);
      dx[c] = scalar_cast<T>(p.accumulate ? scalar_cast<A>(dx[c]) + d : d);
    }
  }
}

namespace detail {

// Throws when a row's target is neither ignore_index nor in [0, V).
inline void check_cross_entropy_target(std::int64_t row, std::int32_t target, std::int64_t vocab,
                                       int ignore_index) {
  FATHOM_CHECK(target == ignore_index || (target >= 0 && target < vocab),
               "cross_entropy: row " << row << " has target " << target
                                     << ", expected a class in [0, " << vocab
                                     << ") or the ignore index " << ignore_index);
}

// d loss / d logits for one row: (softmax - onehot) * scale, written or added.
template <class T, class A>
void cross_entropy_row_grad(const T* logits, std::int32_t target, A lse, A scale, T* dlogits,
                            std::int64_t vocab, bool accumulate) {
  for (std::int64_t c = 0; c < vocab; ++c) {
    A g = std::exp(scalar_cast<A>(logits[c]) - lse) * scale;
    if (c == target) g -= scale;
    dlogits[c] = scalar_cast<T>(accumulate ? scalar_cast<A>(dlogits[c]) + g : g);
  }
}

}  // namespace detail

template <class T>
void cross_entropy(Cpu, const CrossEntropyParams<T>& p) {
  using A = accum_t<T>;
  std::int64_t valid = 0;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    detail::check_cross_entropy_target(r, p.targets[r], p.vocab, p.ignore_index);
    if (p.targets[r] != p.ignore_index) ++valid;
  }
  // Ignored rows get a zero gradient; the others 1 / valid of it (the loss is a mean).
  const A grad_scale = valid ? static_cast<A>(p.grad_scale) / static_cast<A>(valid) : A(0);
  A total = 0;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.logits + r * p.vocab;  // (V)
    A max = -std::numeric_limits<A>::infinity();
    for (std::int64_t c = 0; c < p.vocab; ++c) max = std::max(max, scalar_cast<A>(x[c]));
    A sum = 0;
    for (std::int64_t c = 0; c < p.vocab; ++c) sum += std::exp(scalar_cast<A>(x[c]) - max);
    const A lse = max + std::log(sum);
    if (p.lse) p.lse[r] = lse;
    const std::int32_t target = p.targets[r];
    const bool ignored = target == p.ignore_index;
    if (!ignored) total += lse - scalar_cast<A>(x[target]);
    if (p.dlogits) {
      detail::cross_entropy_row_grad(x, target, lse, ignored ? A(0) : grad_scale,
                                     p.dlogits + r * p.vocab, p.vocab, p.accumulate);
    }
  }
  *p.loss = valid ? total / static_cast<A>(valid) : A(0);
  if (p.valid_rows) *p.valid_rows = static_cast<std::int32_t>(valid);
}

template <class T>
void cross_entropy_backward(Cpu, const CrossEntropyBackwardParams<T>& p) {
  using A = accum_t<T>;
  const std::int32_t valid = *p.valid_rows;
  const A scale = valid ? *p.dloss / static_cast<A>(valid) : A(0);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const std::int32_t target = p.targets[r];
    const bool ignored = target == p.ignore_index;
    detail::cross_entropy_row_grad(p.logits + r * p.vocab, target, p.lse[r], ignored ? A(0) : scale,
                                   p.dlogits + r * p.vocab, p.vocab, p.accumulate);
  }
}

template <class T>
void cross_entropy_rescale(Cpu, const CrossEntropyRescaleParams<T>& p) {
  using A = accum_t<T>;
  const A dloss = *p.dloss;
  if (!p.accumulate && p.dst == p.g && dloss == p.seed) return;
  const A ratio = dloss / p.seed;
  for (std::int64_t i = 0; i < p.n; ++i) {
    const A v = scalar_cast<A>(p.g[i]) * ratio;
    p.dst[i] = scalar_cast<T>(p.accumulate ? scalar_cast<A>(p.dst[i]) + v : v);
  }
}

}  // namespace fathom::kernels
