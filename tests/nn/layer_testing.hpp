// Shared pieces of the tests of one Llama block layer (nn::Attention, nn::MLP) on the CPU: its
// parameters filled from fixed seeds, one forward and backward recorded by name, and the check that
// the parameters' gradients add up over two backward passes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "fathom/autograd/ops/reduce.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/parameter.hpp"
#include "support/catch.hpp"

namespace fathom::testing {

struct LayerRun {
  std::vector<double> y;
  std::map<std::string, std::vector<double>> grads;  // "x" and every parameter by name
};

// The layer's parameters filled with N(0, 0.3^2), parameter i from seed first_seed + 1 + i.
template <class T>
void randomize_layer(std::vector<nn::NamedParameter<T, Cpu>>& registry, std::uint64_t first_seed) {
  std::uint64_t seed = first_seed;
  for (auto& p : registry)
    p.var.mutable_value().copy_(Tensor<T, Cpu>::randn(p.var.shape(), ++seed, 0.3));
}

// Layer (nn::Attention or nn::MLP) of block 1 of c, parameters from randomize_layer(first_seed);
// y = forward(layer, registry, x) for x (B, T, C) from seed 7, backward seeded from seed 8.
template <class T, template <class, DeviceTag> class Layer, class Forward>
LayerRun run_layer(const nn::ModelConfig& c, std::int64_t B, std::int64_t Tn,
                   std::uint64_t first_seed, Forward forward) {
  autograd::clear_tape();
  std::vector<nn::NamedParameter<T, Cpu>> registry;
  Layer<T, Cpu> layer(c, nn::Llama::block(0, 1), 1, registry);
  randomize_layer(registry, first_seed);
  Var<T, Cpu> x(Tensor<T, Cpu>::randn(Shape{B, Tn, c.d_model}, 7), true);
  auto y = forward(layer, registry, x);
  autograd::backward(y, Tensor<T, Cpu>::randn(y.shape(), 8));
  LayerRun r;
  for (auto v : y.value().to_vector()) r.y.push_back(static_cast<double>(v));
  auto grad = [](const Var<T, Cpu>& v) {
    std::vector<double> out;
    REQUIRE(v.has_grad());
    for (auto g : v.grad().to_vector()) out.push_back(static_cast<double>(g));
    return out;
  };
  r.grads["x"] = grad(x);
  for (const auto& p : registry) r.grads[p.name] = grad(p.var);
  return r;
}

// A stacked weight's gradient is split into the parameters' own buffers: a second backward of the
// same input adds to them (and never to a buffer another parameter sees), so every gradient is
// twice the first one.
template <template <class, DeviceTag> class Layer>
void check_gradients_add_up(const nn::ModelConfig& c, std::uint64_t first_seed) {
  autograd::clear_tape();
  std::vector<nn::NamedParameter<double, Cpu>> registry;
  Layer<double, Cpu> layer(c, nn::Llama::block(0, 1), 1, registry);
  randomize_layer(registry, first_seed);
  Var<double> x(Tensor<double>::randn(Shape{2, 3, c.d_model}, 9), false);
  autograd::backward(autograd::sum(layer.forward(x)));
  std::vector<std::vector<double>> once;
  for (const auto& p : registry) once.push_back(p.var.grad().to_vector());
  autograd::backward(autograd::sum(layer.forward(x)));
  for (std::size_t i = 0; i < registry.size(); ++i) {
    INFO(registry[i].name);
    const auto twice = registry[i].var.grad().to_vector();
    REQUIRE(twice.size() == once[i].size());
    for (std::size_t j = 0; j < twice.size(); ++j)
      CHECK_THAT(twice[j], WithinAbs(2.0 * once[i][j], 1e-12));
  }
}

}  // namespace fathom::testing
