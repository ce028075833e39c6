// Element-wise kernels, CPU reference: y = alpha*a + beta*b, y += alpha*x, y = s*x, y = a*b with
// its backward, and a row-strided axpy (the backward of a slice). CUDA versions:
// cuda/elementwise.cuh.
#pragma once

#include <cstdint>

#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// Every kernel computes in accum_t<T> (float for bf16) and rounds once when storing. Pointers are
// contiguous arrays of n elements; an output may alias an input of the same index (in place).

// y = alpha * a + beta * b
template <class T>
struct AxpbyParams {
  const T* a;  // (n)
  const T* b;  // (n)
  T* y;        // (n), may alias a or b
  std::int64_t n;
  double alpha;
  double beta;
};

template <class T>
void axpby(Cpu, const AxpbyParams<T>& p) {
  using A = accum_t<T>;
  const A alpha = static_cast<A>(p.alpha), beta = static_cast<A>(p.beta);
  for (std::int64_t i = 0; i < p.n; ++i)
    p.y[i] = scalar_cast<T>(alpha * scalar_cast<A>(p.a[i]) + beta * scalar_cast<A>(p.b[i]));
}

// y += alpha * x   (the usual gradient accumulation)
template <class T>
struct AxpyParams {
  const T* x;  // (n)
  T* y;        // (n)
  std::int64_t n;
  double alpha;
};

template <class T>
void axpy(Cpu, const AxpyParams<T>& p) {
  using A = accum_t<T>;
  const A alpha = static_cast<A>(p.alpha);
  for (std::int64_t i = 0; i < p.n; ++i)
    p.y[i] = scalar_cast<T>(scalar_cast<A>(p.y[i]) + alpha * scalar_cast<A>(p.x[i]));
}

// y = s * x
template <class T>
struct ScaleParams {
  const T* x;  // (n)
  T* y;        // (n), may alias x
  std::int64_t n;
  double s;
};

template <class T>
void scale(Cpu, const ScaleParams<T>& p) {
  using A = accum_t<T>;
  const A s = static_cast<A>(p.s);
  for (std::int64_t i = 0; i < p.n; ++i) p.y[i] = scalar_cast<T>(s * scalar_cast<A>(p.x[i]));
}

// y = a * b
template <class T>
struct MulParams {
  const T* a;  // (n)
  const T* b;  // (n)
  T* y;        // (n), may alias a or b
  std::int64_t n;
};

template <class T>
void mul(Cpu, const MulParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i)
    p.y[i] = scalar_cast<T>(scalar_cast<A>(p.a[i]) * scalar_cast<A>(p.b[i]));
}

// da += dy * b, db += dy * a; either output may be null (not needed).
template <class T>
struct MulBackwardParams {
  const T* a;   // (n)
  const T* b;   // (n)
  const T* dy;  // (n)
  T* da;        // (n) or nullptr
  T* db;        // (n) or nullptr
  std::int64_t n;
};

template <class T>
void mul_backward(Cpu, const MulBackwardParams<T>& p) {
  using A = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i) {
    const A g = scalar_cast<A>(p.dy[i]);
    if (p.da) p.da[i] = scalar_cast<T>(scalar_cast<A>(p.da[i]) + g * scalar_cast<A>(p.b[i]));
    if (p.db) p.db[i] = scalar_cast<T>(scalar_cast<A>(p.db[i]) + g * scalar_cast<A>(p.a[i]));
  }
}

// y[r, c] += alpha * x[r, c] for a (rows, cols) block whose rows start ldx and ldy elements apart:
// the gradient of a slice of the last dimension lands in a strided block of the input's gradient.
template <class T>
struct Axpy2dParams {
  const T* x;  // (rows, cols) with row stride ldx
  T* y;        // (rows, cols) with row stride ldy
  std::int64_t rows;
  std::int64_t cols;
  std::int64_t ldx;
  std::int64_t ldy;
  double alpha;
};

template <class T>
void axpy_2d(Cpu, const Axpy2dParams<T>& p) {
  using A = accum_t<T>;
  const A alpha = static_cast<A>(p.alpha);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.ldx;
    T* y = p.y + r * p.ldy;
    for (std::int64_t c = 0; c < p.cols; ++c)
      y[c] = scalar_cast<T>(scalar_cast<A>(y[c]) + alpha * scalar_cast<A>(x[c]));
  }
}

}  // namespace fathom::kernels
