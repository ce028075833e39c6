// What the CPU and CUDA tests of autograd::linear_fp8 share: two layers reading one input x, with
// x quantized once for both (quantize_fp8_input) or by each layer on its own; and Llama's fp8 MLP,
// fused (swiglu_mlp_fp8) or composed of linear_fp8 and swiglu_stacked.
#pragma once

#include <fathom/autograd/ops/activation.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/linear_fp8.hpp>
#include <fathom/autograd/ops/reduce.hpp>

#include <cstdint>
#include <memory>
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

// Llama's fp8 MLP on seeded random x (batch, seq, C), gate and up (F, C) each, down (C, F) and a
// residual stream r (batch, seq, C): autograd::swiglu_mlp_fp8 when `fused`, else
// linear_fp8(swiglu_stacked(linear_fp8(x, gate | up)), down) with the residual added in the down
// projection's epilogue (residual_scale 0: no residual). `steps` forward and backward passes of
// sum(y * y) on the same inputs (gradients accumulating), with delayed scaling's histories
// (length 4) when `delayed`. Returns y of the last step, then the gradients of x, gate | up, down
// and r, then, when delayed, the four histories' amaxes, all flattened in that order.
template <class T, DeviceTag D>
std::vector<float> swiglu_mlp_fp8_case(bool fused, bool delayed, int steps, double residual_scale,
                                       std::int64_t batch, std::int64_t seq, std::int64_t C,
                                       std::int64_t F, std::uint64_t seed) {
  namespace ag = fathom::autograd;
  FreshTape tape;
  Var<T, D> x(Tensor<T, D>::randn(Shape{batch, seq, C}, seed), true);
  Var<T, D> gate_up(Tensor<T, D>::randn(Shape{2 * F, C}, seed + 1, 0.2), true);
  Var<T, D> down(Tensor<T, D>::randn(Shape{C, F}, seed + 2, 0.2), true);
  Var<T, D> r(Tensor<T, D>::randn(Shape{batch, seq, C}, seed + 3), true);
  auto history = [&] { return delayed ? std::make_shared<ag::Fp8History<D>>(4) : nullptr; };
  const ag::Fp8LinearScaling<D> gu_scaling{history(), history()},
      down_scaling{history(), history()};
  const ag::Residual<T, D> add{residual_scale != 0 ? &r : nullptr, residual_scale};
  Var<T, D> y;
  for (int step = 0; step < steps; ++step) {
    if (fused) {
      y = ag::swiglu_mlp_fp8(x, gate_up, down, &gu_scaling, &down_scaling, add);
    } else {
      const Var<T, D> h = ag::swiglu_stacked(ag::linear_fp8(x, gate_up, nullptr, &gu_scaling));
      y = ag::linear_fp8(h, down, nullptr, &down_scaling, add);
    }
    ag::backward(ag::sum(y * y));
  }
  std::vector<float> all;
  auto put = [&all](const Tensor<T, D>& t) {
    for (T v : t.to_vector()) all.push_back(scalar_cast<float>(v));
  };
  put(y.value());
  for (const auto* v : {&x, &gate_up, &down}) put(v->grad());
  if (add.x) put(r.grad());
  if (delayed) {
    const std::shared_ptr<ag::Fp8History<D>> histories[] = {
        gu_scaling.input, gu_scaling.grad_output, down_scaling.input, down_scaling.grad_output};
    for (const auto& h : histories)
      for (float a : h->amax().to_vector()) all.push_back(a);
  }
  return all;
}

}  // namespace fathom::test
