// Activation kernels, CPU reference: GELU (tanh form), SiLU and the fused SwiGLU (gate and up
// separate, or the two halves of one tensor's rows), forward and backward. The scalar formulas
// are host/device functions shared with cuda/activation.cuh.
#pragma once

#include <cmath>
#include <cstdint>

#include "fathom/core/config.hpp"
#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

namespace detail {

template <class A>
FATHOM_HOST_DEVICE inline A activation_tanh(A x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == sizeof(float))
    return tanhf(x);
  else
    return tanh(x);
#else
  return std::tanh(x);
#endif
}

template <class A>
FATHOM_HOST_DEVICE inline A activation_exp(A x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == sizeof(float))
    return expf(x);
  else
    return exp(x);
#else
  return std::exp(x);
#endif
}

// gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
template <class A>
FATHOM_HOST_DEVICE inline A gelu(A x) {
  const A k = A(0.7978845608028654), c = A(0.044715);
  return A(0.5) * x * (A(1) + activation_tanh(k * (x + c * x * x * x)));
}

// d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u)
template <class A>
FATHOM_HOST_DEVICE inline A gelu_grad(A x) {
  const A k = A(0.7978845608028654), c = A(0.044715);
  const A t = activation_tanh(k * (x + c * x * x * x));
  return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3) * c * x * x);
}

template <class A>
FATHOM_HOST_DEVICE inline A sigmoid(A x) {
  return A(1) / (A(1) + activation_exp(
                            -x));  // exp overflows to inf for x << 0: sigmoid -> 0, as it should
}

// silu(x) = x s and d silu / dx = s (1 + x (1 - s)), given s = sigmoid(x): a kernel that wants
// both computes the sigmoid (an exponential and a division) once; silu and silu_grad below are
// these with a sigmoid each, so both ways give the same values.
template <class A>
FATHOM_HOST_DEVICE inline A silu_given(A x, A s) {
  return x * s;
}
template <class A>
FATHOM_HOST_DEVICE inline A silu_grad_given(A x, A s) {
  return s * (A(1) + x * (A(1) - s));
}

template <class A>
FATHOM_HOST_DEVICE inline A silu(A x) {
  return silu_given(x, sigmoid(x));
}

template <class A>
FATHOM_HOST_DEVICE inline A silu_grad(A x) {
  return silu_grad_given(x, sigmoid(x));
}

}  // namespace detail

// y = f(x) for an element-wise activation f (gelu, silu).
template <class T>
struct ActivationParams {
  const T* x;  // (n)
  T* y;        // (n), may alias x
  std::int64_t n;
};

// dx += dy * f'(x), or dx = dy * f'(x) without accumulate (a buffer just allocated for dx).
template <class T>
struct ActivationBackwardParams {
  const T* x;   // (n)
  const T* dy;  // (n)
  T* dx;        // (n)
  std::int64_t n;
  bool accumulate = true;
};

template <class T>
void gelu(Cpu, const ActivationParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i)
    p.y[i] = scalar_cast<T>(detail::gelu(scalar_cast<A>(p.x[i])));
}

template <class T>
void gelu_backward(Cpu, const ActivationBackwardParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i)
    p.dx[i] = scalar_cast<T>((p.accumulate ? scalar_cast<A>(p.dx[i]) : A(0)) +
                             scalar_cast<A>(p.dy[i]) * detail::gelu_grad(scalar_cast<A>(p.x[i])));
}

template <class T>
void silu(Cpu, const ActivationParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i)
    p.y[i] = scalar_cast<T>(detail::silu(scalar_cast<A>(p.x[i])));
}

template <class T>
void silu_backward(Cpu, const ActivationBackwardParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i)
    p.dx[i] = scalar_cast<T>((p.accumulate ? scalar_cast<A>(p.dx[i]) : A(0)) +
                             scalar_cast<A>(p.dy[i]) * detail::silu_grad(scalar_cast<A>(p.x[i])));
}

// y = silu(gate) * up, fused: one pass, no silu(gate) stored.
//
// Layout. y and dy are contiguous (n elements). gate and up, and the gradients dgate and dup, are
// read as rows of `cols` elements whose starts lie `in_stride` (gate, up) or `grad_stride` (dgate,
// dup) elements apart, so that gate and up can be the two halves of each row of one (rows, 2F)
// tensor: gate = gu, up = gu + F, cols = F, in_stride = 2F (autograd::swiglu_stacked, behind the
// one GEMM of the stacked gate and up weights). cols == 0 (the default) is one contiguous row of n
// elements; a stride of 0 means cols (contiguous rows). n is a multiple of cols.
template <class T>
struct SwigluParams {
  const T* gate;  // (n / cols, cols), rows in_stride apart
  const T* up;    // (n / cols, cols), rows in_stride apart
  T* y;           // (n)
  std::int64_t n;
  std::int64_t cols = 0, in_stride = 0;
};

namespace detail {

// The rows x cols grid of a SwiGLU call and the strides of its row-major views (0 resolved).
struct SwigluRows {
  std::int64_t rows, cols, in_stride, grad_stride;
  // True when every view is contiguous: element i sits at offset i everywhere.
  bool contiguous() const { return rows <= 1 || (in_stride == cols && grad_stride == cols); }
};

inline SwigluRows swiglu_rows(std::int64_t n, std::int64_t cols, std::int64_t in_stride,
                              std::int64_t grad_stride) {
  if (cols <= 0 || n <= 0) return {n > 0 ? 1 : 0, n, n, n};
  return {n / cols, cols, in_stride > 0 ? in_stride : cols, grad_stride > 0 ? grad_stride : cols};
}

}  // namespace detail

template <class T>
void swiglu(Cpu, const SwigluParams<T>& p) {
  using A = accum_t<T>;
  const auto l = detail::swiglu_rows(p.n, p.cols, p.in_stride, 0);
  for (std::int64_t r = 0; r < l.rows; ++r) {
    const T* gate = p.gate + r * l.in_stride;
    const T* up = p.up + r * l.in_stride;
    T* y = p.y + r * l.cols;
    for (std::int64_t c = 0; c < l.cols; ++c)
      y[c] = scalar_cast<T>(detail::silu(scalar_cast<A>(gate[c])) * scalar_cast<A>(up[c]));
  }
}

// dgate += dy * up * silu'(gate), dup += dy * silu(gate); either output may be null. Without
// accumulate_dgate / accumulate_dup that output is overwritten instead (a buffer just allocated).
// Layout as for SwigluParams: dy contiguous, dgate and dup rows grad_stride apart.
template <class T>
struct SwigluBackwardParams {
  const T* gate;  // (n / cols, cols), rows in_stride apart
  const T* up;    // (n / cols, cols), rows in_stride apart
  const T* dy;    // (n)
  T* dgate;       // (n / cols, cols), rows grad_stride apart, or nullptr
  T* dup;         // (n / cols, cols), rows grad_stride apart, or nullptr
  std::int64_t n;
  bool accumulate_dgate = true, accumulate_dup = true;
  std::int64_t cols = 0, in_stride = 0, grad_stride = 0;
};

template <class T>
void swiglu_backward(Cpu, const SwigluBackwardParams<T>& p) {
  using A = accum_t<T>;
  const auto l = detail::swiglu_rows(p.n, p.cols, p.in_stride, p.grad_stride);
  for (std::int64_t r = 0; r < l.rows; ++r) {
    const T* gate = p.gate + r * l.in_stride;
    const T* up = p.up + r * l.in_stride;
    const T* dy = p.dy + r * l.cols;
    T* dgate = p.dgate ? p.dgate + r * l.grad_stride : nullptr;
    T* dup = p.dup ? p.dup + r * l.grad_stride : nullptr;
    for (std::int64_t c = 0; c < l.cols; ++c) {
      const A g = scalar_cast<A>(gate[c]), u = scalar_cast<A>(up[c]), d = scalar_cast<A>(dy[c]);
      if (dgate)
        dgate[c] = scalar_cast<T>((p.accumulate_dgate ? scalar_cast<A>(dgate[c]) : A(0)) +
                                  d * u * detail::silu_grad(g));
      if (dup)
        dup[c] = scalar_cast<T>((p.accumulate_dup ? scalar_cast<A>(dup[c]) : A(0)) +
                                d * detail::silu(g));
    }
  }
}

}  // namespace fathom::kernels
