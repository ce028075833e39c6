// Rotary position embedding (RoPE) in the Hugging Face Llama convention, forward and backward, on
// a (B, T, C) tensor (rope) or in place on the q and k thirds of a fused (B, T, 3C) projection
// (rope_qkv). CPU reference here; CUDA in cuda/rope.cuh.
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

// Both thirds of qkv (B, T, 3C) that hold q and k, turned in place by +angle (the forward) or, with
// inverse, by -angle (the backward of the forward, applied to qkv's gradient). Each third is
// rotated exactly as rope() rotates a (B, T, C) tensor of n_heads heads; the v third
// (columns [2C, 3C)) is neither read nor written.
template <class T>
struct RopeQkvParams {
  T* qkv = nullptr;  // (B, T, 3C), C = n_heads * hd: q in [0, C), k in [C, 2C), v in [2C, 3C)
  std::int64_t batch = 0;
  std::int64_t seq = 0;
  std::int64_t channels = 0;  // C, one third of the last dimension
  int n_heads = 1;
  double theta = 10000.0;
  std::int64_t pos0 = 0;
  bool inverse = false;  // false: y = R x (forward); true: dx = R^-1 dy (backward)
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

// inv_freq_i of the first Half pairs of a head (rope_inv_freq, computed on the host), passed to a
// kernel by value: the GPU's rope pass and the attention backward's inverse turn then use the CPU's
// frequencies bit for bit, and no kernel computes a double pow. Pairs past head_dim / 2 stay 0.
template <class A, int Half>
struct RopeFreqTable {
  A inv_freq[Half];
};
template <class A, int Half>
RopeFreqTable<A, Half> rope_freq_table(double theta, std::int64_t head_dim) {
  RopeFreqTable<A, Half> table{};
  for (std::int64_t i = 0; i < Half && i < head_dim / 2; ++i)
    table.inv_freq[i] = rope_inv_freq<A>(theta, i, head_dim);
  return table;
}

namespace detail {

// Rotates every pair of the n_heads heads of size head_dim at the start of each row of `in` (rows
// in_stride elements apart) into `out` (rows out_stride apart) by +angle (sign 1) or -angle
// (sign -1). `in` may be `out` (each pair is read before it is written, by the same iteration).
template <class T>
void rope_rotate(const T* in, T* out, std::int64_t batch, std::int64_t seq, std::int64_t head_dim,
                 int n_heads, std::int64_t in_stride, std::int64_t out_stride, double theta,
                 std::int64_t pos0, int sign, bool accumulate) {
  using A = accum_t<T>;
  const std::int64_t half = head_dim / 2;
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 0; t < seq; ++t) {
      const std::int64_t row = b * seq + t;  // token (b, t)
      for (std::int64_t i = 0; i < half; ++i) {
        const A angle = static_cast<A>(pos0 + t) * rope_inv_freq<A>(theta, i, head_dim);
        const A cos = std::cos(angle), sin = static_cast<A>(sign) * std::sin(angle);
        for (std::int64_t h = 0; h < n_heads; ++h) {
          const std::int64_t i1 = row * in_stride + h * head_dim + i, i2 = i1 + half;
          const std::int64_t o1 = row * out_stride + h * head_dim + i, o2 = o1 + half;
          const A x1 = scalar_cast<A>(in[i1]), x2 = scalar_cast<A>(in[i2]);
          A y1 = x1 * cos - x2 * sin, y2 = x2 * cos + x1 * sin;
          if (accumulate) {
            y1 += scalar_cast<A>(out[o1]);
            y2 += scalar_cast<A>(out[o2]);
          }
          out[o1] = scalar_cast<T>(y1);
          out[o2] = scalar_cast<T>(y2);
        }
      }
    }
  }
}

}  // namespace detail

template <class T>
void rope(Cpu, const RopeParams<T>& p) {
  detail::rope_rotate(p.x, p.y, p.batch, p.seq, p.channels / p.n_heads, p.n_heads, p.channels,
                      p.channels, p.theta, p.pos0, 1, false);
}

template <class T>
void rope_backward(Cpu, const RopeBackwardParams<T>& p) {
  detail::rope_rotate(p.dy, p.dx, p.batch, p.seq, p.channels / p.n_heads, p.n_heads, p.channels,
                      p.channels, p.theta, p.pos0, -1, p.accumulate);
}

// The q and k thirds side by side are 2 n_heads heads at the start of rows 3C apart: the angles
// depend on the position and the pair index only, so one pass turns both as rope() turns each.
template <class T>
void rope_qkv(Cpu, const RopeQkvParams<T>& p) {
  detail::rope_rotate(p.qkv, p.qkv, p.batch, p.seq, p.channels / p.n_heads, 2 * p.n_heads,
                      3 * p.channels, 3 * p.channels, p.theta, p.pos0, p.inverse ? -1 : 1, false);
}

}  // namespace fathom::kernels
