// generate: token ids sampled from a language model after a prompt (temperature sampling, or
// greedy at temperature 0). The model re-runs on the growing sequence (no key-value cache): this is
// for looking at what a model learned, not for serving it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::nn {

struct GenerateOptions {
  int tokens = 100;          // how many ids to sample
  double temperature = 0.8;  // 0: greedy (the most likely id each time)
  std::uint64_t seed = 0;    // the same seed, model and prompt give the same sample
  int vocab_limit = 0;       // draw only ids below this (a tokenizer smaller than the model's
                             // vocab); 0: the model's vocab
};

// Model: DecoderLM<Arch, Policy, T, D> or nn/train's LanguageModel<T, D> (anything with
// config().vocab, config().max_seq and forward(tokens) -> (B*T, V) logits).
// requires: prompt is not empty and its ids are below config().vocab.
// ensures:  returns options.tokens sampled ids (the prompt not included); the context given to
//           the model is the last config().max_seq ids.
template <class Model>
std::vector<std::int32_t> generate(const Model& model, std::vector<std::int32_t> prompt,
                                   const GenerateOptions& options = {}) {
  using D = typename Model::LossVar::device_type;
  FATHOM_CHECK(!prompt.empty(), "generate: the prompt holds no token ids");
  const int vocab = model.config().vocab;
  const int usable = options.vocab_limit > 0 ? std::min(options.vocab_limit, vocab) : vocab;
  for (auto id : prompt)
    FATHOM_CHECK(id >= 0 && id < vocab,
                 "generate: prompt id " << id << " is outside the model's vocab " << vocab);
  const auto max_seq = static_cast<std::ptrdiff_t>(model.config().max_seq);
  autograd::NoGradGuard no_grad;
  std::vector<std::int32_t> ids = std::move(prompt), generated;
  std::vector<double> p(static_cast<std::size_t>(usable));
  for (int i = 0; i < options.tokens; ++i) {
    const auto keep = std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(ids.size()), max_seq);
    std::vector<std::int32_t> ctx(ids.end() - keep, ids.end());
    auto x =
        Tensor<std::int32_t, D>::from_vector(Shape{1, static_cast<std::int64_t>(ctx.size())}, ctx);
    auto logits = model.forward(x).value();  // (T, V)
    auto row = logits.slice(0, logits.size(0) - 1, logits.size(0)).to_vector();
    auto logit = [&](int v) {
      return static_cast<double>(scalar_cast<float>(row[static_cast<std::size_t>(v)]));
    };
    std::int32_t next = 0;
    if (options.temperature <= 0) {
      for (int v = 1; v < usable; ++v)
        if (logit(v) > logit(next)) next = v;
    } else {
      double mx = -INFINITY;
      for (int v = 0; v < usable; ++v) mx = std::max(mx, logit(v));
      double z = 0;
      for (int v = 0; v < usable; ++v)
        z += p[static_cast<std::size_t>(v)] = std::exp((logit(v) - mx) / options.temperature);
      double u = rng::uniform(options.seed, static_cast<std::uint64_t>(i)) * z;
      for (next = 0; next < usable - 1 && (u -= p[static_cast<std::size_t>(next)]) > 0; ++next) {
      }
    }
    ids.push_back(next);
    generated.push_back(next);
  }
  return generated;
}

}  // namespace fathom::nn
