// Reductions, CPU reference: sum (and mean through its scale) with its backward, and the sum of
// squares over a list of tensors that global-norm gradient clipping needs. CUDA: cuda/reduce.cuh.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// out[0] = scale * sum(x), accumulated in accum_t<T> (mean: scale = 1 / n).
template <class T>
struct SumParams {
  const T* x;  // (n)
  T* out;      // (1), on the same device as x
  std::int64_t n;
  double scale;
};

template <class T>
void sum(Cpu, const SumParams<T>& p) {
  using A = accum_t<T>;
  A total = 0;
  for (std::int64_t i = 0; i < p.n; ++i) total += scalar_cast<A>(p.x[i]);
  p.out[0] = scalar_cast<T>(static_cast<A>(p.scale) * total);
}

// dx[i] += scale * dy[0]   (dy lives on the device, so no host round trip)
template <class T>
struct SumBackwardParams {
  const T* dy;  // (1)
  T* dx;        // (n)
  std::int64_t n;
  double scale;
};

template <class T>
void sum_backward(Cpu, const SumBackwardParams<T>& p) {
  using A = accum_t<T>;
  const A g = static_cast<A>(p.scale) * scalar_cast<A>(p.dy[0]);
  for (std::int64_t i = 0; i < p.n; ++i) p.dx[i] = scalar_cast<T>(scalar_cast<A>(p.dx[i]) + g);
}

// A contiguous array of n elements: one tensor of a list.
template <class T>
struct Span {
  const T* data;
  std::int64_t n;
};

// sum over every tensor t and element i of t[i]^2, in accum_t<T>: the squared global L2 norm of a
// list of gradients. Not differentiable. The CUDA version reduces the whole list in one launch.
template <class T>
struct SumSquaresParams {
  std::vector<Span<T>> tensors;
};

// Writes the total to *out (host memory for Cpu, device memory for Cuda).
template <class T>
void sum_squares(Cpu, const SumSquaresParams<T>& p, accum_t<T>* out) {
  using A = accum_t<T>;
  A total = 0;
  for (const Span<T>& t : p.tensors) {
    A part = 0;  // per tensor first: keeps small tensors from vanishing into a large total
    for (std::int64_t i = 0; i < t.n; ++i) {
      const A v = scalar_cast<A>(t.data[i]);
      part += v * v;
    }
    total += part;
  }
  *out = total;
}

// The total, returned on the host.
// *factor = the gradient-clipping factor for a gradient whose squared norm is *sum_squares:
// max_norm / (norm + 1e-6) when norm > max_norm > 0, else 1 (NaN norms give 1: the step's own
// non-finite check decides about those). Pointers are device memory on CUDA.
template <class A>
void clip_factor(Cpu, const A* sum_squares, double max_norm, float* factor) {
  const double norm = std::sqrt(static_cast<double>(*sum_squares));
  *factor =
      (max_norm > 0.0 && norm > max_norm) ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

template <class T>
accum_t<T> sum_squares(Cpu, const SumSquaresParams<T>& p) {
  accum_t<T> total;
  sum_squares(Cpu{}, p, &total);
  return total;
}

}  // namespace fathom::kernels
