// What the autograd tests share: random leaves in double for gradcheck, and a fresh tape per test.
#pragma once

#include <cstdint>

#include <fathom/autograd/var.hpp>
#include <fathom/tensor/tensor.hpp>

namespace fathom::test {

// A Var<double> that requires a gradient, filled with N(mean, std^2) values from `seed`.
inline Var<double> leaf(const Shape& shape, std::uint64_t seed, double std = 1.0,
                        double mean = 0.0) {
  return Var<double>(Tensor<double>::randn(shape, seed, std, mean), true);
}

// Clears the tape when a test starts and when it ends, whatever an earlier test left behind.
struct FreshTape {
  FreshTape() { autograd::clear_tape(); }
  ~FreshTape() { autograd::clear_tape(); }
};

}  // namespace fathom::test
