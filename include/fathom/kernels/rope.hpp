// Rotary position embedding (RoPE) in the Hugging Face Llama convention, forward and backward.
// CPU reference here; CUDA in cuda/rope.cuh.
//
// Convention (transformers' rotate_half): within each head of hd channels, channel i < hd/2 pairs
// with channel i + hd/2 and both turn by the angle (pos0 + t) * theta^(-2i/hd):
//   y[i]        = x[i] * cos - x[i + hd/2] * sin
//   y[i + hd/2] = x[i + hd/2] * cos + x[i] * sin
// so checkpoints trained with transformers' LlamaForCausalLM work unchanged. The backward is the
// inverse rotation (the same angles, sin negated).
#pragma once

#include <cmath>
#include <cstdint>

#include "fathom/core/config.hpp"
#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

template <class T>
struct RopeParams {
  const T* x = nullptr;  // (B, T, C), C = n_heads * hd
  T* y = nullptr;        // (B, T, C)
  std::int64_t batch = 0;
  std::int64_t seq = 0;
  std::int64_t channels = 0;
  int n_heads = 1;
  double theta = 10000.0;
  std::int64_t pos0 = 0;  // position of t = 0 (decoding with a cache starts past the prompt)
};

// dx (+)= R^-1 dy.
template <class T>
struct RopeBackwardParams {
  const T* dy = nullptr;  // (B, T, C)
  T* dx = nullptr;        // (B, T, C)
  std::int64_t batch = 0;
  std::int64_t seq = 0;
  std::int64_t channels = 0;
  int n_heads = 1;
  double theta = 10000.0;
  std::int64_t pos0 = 0;
  bool accumulate = true;  // false: overwrite dx (a buffer just allocated for it)
};

// inv_freq_i = theta^(-2i/hd), computed in double and rounded once to A, so that the CPU and the
// GPU turn by the same angles. The angle itself is A(pos) * inv_freq in A (fp32 for float and
// bf16), as transformers computes it.
template <class A>
FATHOM_HOST_DEVICE inline A rope_inv_freq(double theta, std::int64_t i, std::int64_t head_dim) {
  const double exponent = 2.0 * static_cast<double>(i) / static_cast<double>(head_dim);
#if defined(__CUDA_ARCH__)
  return static_cast<A>(1.0 / ::pow(theta, exponent));
#else
  return static_cast<A>(1.0 / std::pow(theta, exponent));
#endif
}

namespace detail {

// Rotates every pair of `in` into `out` by +angle (sign 1) or -angle (sign -1).
template <class T>
void rope_rotate(const T* in, T* out, std::int64_t batch, std::int64_t seq, std::int64_t channels,
                 int n_heads, double theta, std::int64_t pos0, int sign, bool accumulate) {
  using A = accum_t<T>;
  const std::int64_t head_dim = channels / n_heads, half = head_dim / 2;
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 0; t < seq; ++t) {
      const std::int64_t base = (b * seq + t) * channels;  // start of token (b, t): (C)
      for (std::int64_t i = 0; i < half; ++i) {
        const A angle = static_cast<A>(pos0 + t) * rope_inv_freq<A>(theta, i, head_dim);
        const A cos = std::cos(angle), sin = static_cast<A>(sign) * std::sin(angle);
        for (std::int64_t h = 0; h < n_heads; ++h) {
          const std::int64_t k1 = base + h * head_dim + i, k2 = k1 + half;
          const A x1 = scalar_cast<A>(in[k1]), x2 = scalar_cast<A>(in[k2]);
          A y1 = x1 * cos - x2 * sin, y2 = x2 * cos + x1 * sin;
          if (accumulate) {
            y1 += scalar_cast<A>(out[k1]);
            y2 += scalar_cast<A>(out[k2]);
          }
          out[k1] = scalar_cast<T>(y1);
          out[k2] = scalar_cast<T>(y2);
        }
      }
    }
  }
}

}  // namespace detail

template <class T>
void rope(Cpu, const RopeParams<T>& p) {
  detail::rope_rotate(p.x, p.y, p.batch, p.seq, p.channels, p.n_heads, p.theta, p.pos0, 1, false);
}

template <class T>
void rope_backward(Cpu, const RopeBackwardParams<T>& p) {
  detail::rope_rotate(p.dy, p.dx, p.batch, p.seq, p.channels, p.n_heads, p.theta, p.pos0, -1,
                      p.accumulate);
}

}  // namespace fathom::kernels
