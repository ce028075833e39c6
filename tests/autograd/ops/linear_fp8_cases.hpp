// What the CPU and CUDA tests of autograd::linear_fp8 share: two layers reading one input x, with
// x quantized once for both (quantize_fp8_input) or by each layer on its own.
#pragma once

#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/linear_fp8.hpp>
#include <fathom/autograd/ops/reduce.hpp>

#include <cstdint>
#include <vector>

#include "autograd/support.hpp"

namespace fathom::test {

// y1 = x W1^T, y2 = x W2^T from seeded random x (batch, seq, in), W1 (out1, in), W2 (out2, in);
// backward of sum(y1 * y1) + sum(y2); returns y1, y2 and the gradients of x, W1 and W2, flattened
// in that order.
template <class T, DeviceTag D>
std::vector<T> linear_fp8_two_layers(bool shared, std::int64_t batch, std::int64_t seq,
                                     std::int64_t in, std::int64_t out1, std::int64_t out2,
                                     std::uint64_t seed) {
  namespace ag = fathom::autograd;
  FreshTape tape;
  Var<T, D> x(Tensor<T, D>::randn(Shape{batch, seq, in}, seed), true);
  Var<T, D> w1(Tensor<T, D>::randn(Shape{out1, in}, seed + 1, 0.1), true);
  Var<T, D> w2(Tensor<T, D>::randn(Shape{out2, in}, seed + 2, 0.3), true);
  Var<T, D> y1, y2;
  if (shared) {
    const auto xq = ag::quantize_fp8_input(x);
    y1 = ag::linear_fp8(xq, w1);
    y2 = ag::linear_fp8(xq, w2);
  } else {
    y1 = ag::linear_fp8(x, w1);
    y2 = ag::linear_fp8(x, w2);
  }
  ag::backward(ag::sum(y1 * y1) + ag::sum(y2));
  std::vector<T> all = y1.value().to_vector();
  const auto v2 = y2.value().to_vector();
  all.insert(all.end(), v2.begin(), v2.end());
  for (const auto* v : {&x, &w1, &w2}) {
    const auto g = v->grad().to_vector();
    all.insert(all.end(), g.begin(), g.end());
  }
  return all;
}

}  // namespace fathom::test
