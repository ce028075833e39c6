// What the kernel tests share, on the CPU and (through kernels/cuda/support.cuh) the GPU:
// reproducible inputs and comparisons that name the first element out of tolerance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fathom/core/rng.hpp>
#include <fathom/core/scalar.hpp>

namespace fathom::test {

// ---- inputs

// N(mean, std^2) values in T from fathom's counter-based RNG.
template <class T>
std::vector<T> normal_values(std::size_t n, std::uint64_t seed, double std = 1.0,
                             double mean = 0.0) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scalar_cast<T>(mean + std * rng::normal(seed, i));
  return v;
}

// N(mean, std^2) values rounded to bf16 and held in double: float and bf16 runs and a double
// reference all see the same inputs.
inline std::vector<double> bf16_values(std::size_t n, std::uint64_t seed, double std = 1.0,
                                       double mean = 0.0) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(bf16(static_cast<float>(mean + std * rng::normal(seed, i))));
  return v;
}

// Uniform in [0, 1) from a 64-bit hash of (seed, i): fast enough for the tens of millions of
// elements of an LM head.
inline double hashed_uniform(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

// Uniform values in [-1, 1), never zero-filled, from hashed_uniform.
template <class T>
std::vector<T> uniform_values(std::size_t n, std::uint64_t seed) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scalar_cast<T>(2.0 * hashed_uniform(seed, i) - 1.0);
  return v;
}

// Uniform values in [-1, 1) from fathom's counter-based rng::uniform: random, never zero-filled.
template <class T>
std::vector<T> rng_uniform_values(std::size_t n, std::uint64_t seed) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scalar_cast<T>(2.0 * rng::uniform(seed, i) - 1.0);
  return v;
}

// ---- conversions

template <class T>
std::vector<T> cast_to(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = scalar_cast<T>(v[i]);
  return out;
}

template <class T>
double to_double(T v) {
  return scalar_cast<double>(v);
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = scalar_cast<double>(v[i]);
  return out;
}

// ---- comparisons

template <class T>
requires std::is_trivially_copyable_v<T>
bool same_bits(const T& x, const T& y) { return std::memcmp(&x, &y, sizeof(T)) == 0; }
template <class T>
bool same_bits(const std::vector<T>& x, const std::vector<T>& y) {
  // memcmp may not be handed the null data() of an empty vector, even for 0 bytes.
  return x.size() == y.size() &&
         (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
}

// "" when every |got - want| <= atol * scale[i] + rtol * |want| (scale 1 where not given); else the
// first element that is not, named `name`[row, col] of a `cols`-wide matrix (cols 0: by index).
inline std::string first_mismatch(const std::string& name, const std::vector<double>& got,
                                  const std::vector<double>& want, double rtol, double atol,
                                  std::int64_t cols = 0,
                                  const std::vector<double>* scale = nullptr) {
  if (got.size() != want.size()) {
    std::ostringstream s;
    s << name << ": " << got.size() << " elements, want " << want.size();
    return s.str();
  }
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    if (!(err <= atol * (scale ? (*scale)[i] : 1.0) + rtol * std::abs(want[i]))) {
      std::ostringstream s;
      s << name << "[";
      if (cols > 0) {
        const auto row = static_cast<std::int64_t>(i) / cols,
                   col = static_cast<std::int64_t>(i) % cols;
        s << "row " << row << ", col " << col;
      } else {
        s << i << " of " << want.size();
      }
      s << "]: got " << got[i] << ", want " << want[i] << " (|diff| " << err << ")";
      return s.str();
    }
  }
  return {};
}

// got (in T) against want within Precision<T>, both tolerances raised to at least `floor` (for a
// reference that is itself approximate).
template <class T, class U>
std::string first_mismatch(const std::vector<T>& got, const std::vector<U>& want,
                           double floor = 0.0) {
  return first_mismatch("got", to_double(got), to_double(want), std::max(Precision<T>::rtol, floor),
                        std::max(Precision<T>::atol, floor));
}

}  // namespace fathom::test
