// Dropout, CPU reference. The mask is never stored: element i is kept when
// rng::uniform(seed, offset + i) >= p, so forward, backward, CPU and CUDA all draw the same mask.
// CUDA: cuda/dropout.cuh.
#pragma once

#include <cstdint>

#include "fathom/core/config.hpp"
#include "fathom/core/device.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

namespace detail {
// Whether element `index` of stream `seed` survives dropout with probability p of dropping.
FATHOM_HOST_DEVICE inline bool dropout_keeps(std::uint64_t seed, std::uint64_t index, double p) {
  return rng::uniform(seed, index) >= p;
}
}  // namespace detail

// y[i] = x[i] / (1 - p) where kept, else 0.   0 <= p < 1.
template <class T>
struct DropoutParams {
  const T* x;  // (n)
  T* y;        // (n), may alias x
  std::int64_t n;
  double p;
  std::uint64_t seed;
  std::uint64_t offset;  // element i draws stream index offset + i
};

template <class T>
void dropout(Cpu, const DropoutParams<T>& p) {
  using A = accum_t<T>;
  const A keep_scale = static_cast<A>(1.0 / (1.0 - p.p));
  for (std::int64_t i = 0; i < p.n; ++i) {
    const bool keep = detail::dropout_keeps(p.seed, p.offset + static_cast<std::uint64_t>(i), p.p);
    p.y[i] = keep ? scalar_cast<T>(keep_scale * scalar_cast<A>(p.x[i])) : scalar_cast<T>(0.0f);
  }
}

// dx[i] += dy[i] / (1 - p) where kept (the same mask as the forward with these seed and offset).
template <class T>
struct DropoutBackwardParams {
  const T* dy;  // (n)
  T* dx;        // (n)
  std::int64_t n;
  double p;
  std::uint64_t seed;
  std::uint64_t offset;
};

template <class T>
void dropout_backward(Cpu, const DropoutBackwardParams<T>& p) {
  using A = accum_t<T>;
  const A keep_scale = static_cast<A>(1.0 / (1.0 - p.p));
  for (std::int64_t i = 0; i < p.n; ++i) {
    if (detail::dropout_keeps(p.seed, p.offset + static_cast<std::uint64_t>(i), p.p))
      p.dx[i] = scalar_cast<T>(scalar_cast<A>(p.dx[i]) + keep_scale * scalar_cast<A>(p.dy[i]));
  }
}

}  // namespace fathom::kernels
