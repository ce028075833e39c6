// A small language model written with autograd ops, for the data-parallel tests: a tied embedding
// (used by the lookup and the output layer), a GELU MLP with a residual, and one parameter the
// forward never uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fathom/autograd/ops/activation.hpp"
#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/autograd/ops/embedding.hpp"
#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/ops/softmax.hpp"
#include "fathom/optim/param_group.hpp"

namespace fathom::test {

template <class T>
struct ToyModel {
  static constexpr std::int64_t vocab = 13, width = 6, hidden = 9;
  std::vector<optim::NamedParameter<T, Cpu>> params;

  explicit ToyModel(std::uint64_t seed) {
    auto make = [&](const std::string& name, Shape s, double std) {
      params.push_back({name, Var<T>(Tensor<T>::randn(s, seed + params.size(), std), true)});
    };
    make("unused.weight", Shape{5}, 1.0);
    make("embed.weight", Shape{vocab, width}, 0.5);
    make("mlp.up.weight", Shape{hidden, width}, 0.4);
    make("mlp.up.bias", Shape{hidden}, 0.1);
    make("mlp.down.weight", Shape{width, hidden}, 0.3);
  }

  std::vector<Var<T>> vars() const {
    std::vector<Var<T>> out;
    for (const auto& p : params) out.push_back(p.var);
    return out;
  }

  // Mean cross-entropy of predicting targets from tokens, both (B, L).
  Var<accum_t<T>> loss(const Tensor<std::int32_t>& tokens,
                       const Tensor<std::int32_t>& targets) const {
    const auto& emb = params[1].var;
    auto x = autograd::embedding(tokens, emb);                                   // (B, L, C)
    auto h = autograd::gelu(autograd::linear(x, params[2].var, params[3].var));  // (B, L, H)
    auto y = autograd::add(x, autograd::linear(h, params[4].var));               // (B, L, C)
    auto logits = autograd::linear(y, emb);                                      // (B, L, V)
    return autograd::cross_entropy(logits, targets);
  }
};

// Batch `index` of a fixed stream: rows [index * batch, (index + 1) * batch) of token sequences.
inline Tensor<std::int32_t> toy_tokens(std::int64_t index, std::int64_t batch, std::int64_t len,
                                       std::uint64_t salt) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(batch * len));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<std::int32_t>(
               rng::uniform(97 + salt, static_cast<std::uint64_t>(index * batch * len) + i) * 13) %
           13;
  return Tensor<std::int32_t>::from_vector(Shape{batch, len}, v);
}

}  // namespace fathom::test
