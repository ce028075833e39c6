// Counter-based random numbers (Philox4x32-10). Element i of a stream depends only on (seed,
// offset + i), so CPU and GPU produce the same values, in any order, on any number of threads.
#pragma once

#include <cmath>
#include <cstdint>

#include "fathom/core/config.hpp"

namespace fathom::rng {

struct Philox4x32 {
  std::uint32_t v[4];
};

FATHOM_HOST_DEVICE inline void mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                                       std::uint32_t& lo) {
  std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11), the generator cuRAND and PyTorch use.
FATHOM_HOST_DEVICE inline Philox4x32 philox(std::uint64_t counter, std::uint64_t seed) {
  std::uint32_t c0 = static_cast<std::uint32_t>(counter),
                c1 = static_cast<std::uint32_t>(counter >> 32);
  std::uint32_t c2 = 0, c3 = 0;
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    std::uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 53 random bits, element `index` of stream `seed`.
FATHOM_HOST_DEVICE inline double uniform(std::uint64_t seed, std::uint64_t index) {
  Philox4x32 r = philox(index, seed);
  std::uint64_t bits = (static_cast<std::uint64_t>(r.v[0]) << 21) ^ r.v[1];
  return static_cast<double>(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller in double, element `index` of stream `seed`.
FATHOM_HOST_DEVICE inline double normal(std::uint64_t seed, std::uint64_t index) {
  Philox4x32 r = philox(index, seed);
  std::uint64_t a = ((static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1]) >> 11;
  std::uint64_t b = ((static_cast<std::uint64_t>(r.v[2]) << 32) | r.v[3]) >> 11;
  double u1 = (static_cast<double>(a) + 1.0) * (1.0 / 9007199254740992.0);  // (0, 1]
  double u2 = static_cast<double>(b) * (1.0 / 9007199254740992.0);          // [0, 1)
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

// A seed derived from a parent seed and a stream id (so each parameter gets its own stream).
FATHOM_HOST_DEVICE inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {
  Philox4x32 r = philox(stream, seed ^ 0x5851F42D4C957F2Dull);
  return (static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1];
}

}  // namespace fathom::rng
