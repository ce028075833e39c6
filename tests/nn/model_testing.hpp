// Shared pieces of the nn and policy tests: tiny configs of both architectures, random tokens and
// weights, an observer that records every site, and exact tensor comparison.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fathom/core/rng.hpp"
#include "fathom/nn/decoder_lm.hpp"
#include "support/catch.hpp"

namespace fathom::testing {

// Small enough for finite differences over every parameter: d 8, 2 heads, vocab 11, T <= 4.
inline nn::ModelConfig tiny_config(nn::ArchKind arch, int layers) {
  nn::ModelConfig c;
  c.arch = arch;
  c.layers = layers;
  c.d_model = 8;
  c.heads = 2;
  c.vocab = 11;
  c.max_seq = 4;
  if (arch == nn::ArchKind::llama) {
    c.d_ff = 12;
    c.norm_eps = 1e-6;
  } else {
    c.d_ff = 16;
    c.norm_eps = 1e-5;
    c.tied = true;
    c.bias = true;
  }
  return c;
}

inline Tensor<std::int32_t> random_tokens(std::int64_t B, std::int64_t T, int vocab,
                                          std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  for (std::size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<std::int32_t>(rng::uniform(seed, i) * vocab) % vocab;
  return Tensor<std::int32_t>::from_vector(Shape{B, T}, ids);
}

// Every parameter drawn at random with a spread large enough that the non-linearities matter:
// matrices and embeddings N(0, std^2), norm weights 1 + N(0, std^2), biases N(0, std^2).
template <class Model>
void randomize(Model& m, std::uint64_t seed, double std = 0.5) {
  std::uint64_t k = 0;
  for (auto& p : m.parameters()) {
    using T = typename Model::Var::value_type;
    const double mean = p.parts[0].role == policy::ParamRole::norm_weight ? 1.0 : 0.0;
    p.var.mutable_value().copy_(
        Tensor<T>::randn(p.var.shape(), rng::derive_seed(seed, k++), std, mean));
  }
}

// Sets the attention out-projection and MLP down-projection (weights and biases) to zero, so that
// every sub-layer branch outputs exactly 0.
template <class Model>
void zero_branch_outputs(Model& m) {
  for (const auto& b : m.blocks()) {
    for (const auto* lin : {&b.attention().out_proj(), &b.mlp().down_proj()}) {
      auto w = lin->weight();
      w.mutable_value().zero_();
      if (lin->has_bias()) {
        auto bias = lin->bias();
        bias.mutable_value().zero_();
      }
    }
  }
}

// Records every (block, site) an observer is called with.
template <class T>
struct Recorder {
  std::map<std::pair<int, nn::Site>, Var<T>> values;
  std::vector<std::pair<int, nn::Site>> order;

  nn::ForwardOptions<T, Cpu> options() {
    nn::ForwardOptions<T, Cpu> o;
    o.observer = [this](int block, nn::Site site, const Var<T>& v) {
      values[{block, site}] = v;
      order.emplace_back(block, site);
    };
    return o;
  }
  const Var<T>& at(int block, nn::Site site) const { return values.at({block, site}); }
};

// The largest |a - b| over all elements; the shapes must agree.
template <class T>
double max_abs_diff(const Tensor<T>& a, const Tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  auto av = a.to_vector(), bv = b.to_vector();
  double m = 0.0;
  for (std::size_t i = 0; i < av.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(av[i]) - static_cast<double>(bv[i])));
  return m;
}

template <class T>
bool identical(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

// Root mean square of each row of x (..., C).
template <class T>
std::vector<double> row_rms(const Tensor<T>& x) {
  auto v = x.to_vector();
  const std::size_t C = static_cast<std::size_t>(x.size(-1));
  std::vector<double> out;
  for (std::size_t r = 0; r < v.size() / C; ++r) {
    double s = 0.0;
    for (std::size_t c = 0; c < C; ++c)
      s += static_cast<double>(v[r * C + c]) * static_cast<double>(v[r * C + c]);
    out.push_back(std::sqrt(s / static_cast<double>(C)));
  }
  return out;
}

}  // namespace fathom::testing
