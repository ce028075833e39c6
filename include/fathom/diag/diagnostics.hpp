// Curse-of-depth diagnostics on held-out batches: the variance of each block's output and of each
// sub-layer's branch, per-layer gradient norms, the angular distance between layer inputs
// d(x_l, x_{l+n}) = arccos(cos_sim(x_l, x_{l+n})) / pi averaged over tokens, and layer removal
// (the loss with each block skipped, no retraining). Works on any LanguageModel, any device.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/autograd/var.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/nn/language_model.hpp"

namespace fathom::diag {

// Variance of all elements (population variance, in double).
template <class T>
double variance(const std::vector<T>& v) {
  if (v.empty()) return NAN;
  double mean = 0.0;
  for (const T& x : v) mean += static_cast<double>(scalar_cast<double>(x));
  mean /= static_cast<double>(v.size());
  double ss = 0.0;
  for (const T& x : v) {
    const double d = static_cast<double>(scalar_cast<double>(x)) - mean;
    ss += d * d;
  }
  return ss / static_cast<double>(v.size());
}

// Mean over rows (tokens) of arccos(cos_sim(a_row, b_row)) / pi, for two (rows, C) arrays in
// row-major order. Identical rows give 0, opposite rows 1. A zero row against a non-zero one counts
// as orthogonal (0.5); two zero rows as identical (0).
template <class T>
double angular_distance(const std::vector<T>& a, const std::vector<T>& b, std::int64_t C) {
  FATHOM_CHECK(a.size() == b.size() && C > 0 && a.size() % static_cast<std::size_t>(C) == 0,
               "angular_distance: expected two arrays of equal size divisible by C = "
                   << C << ", got " << a.size() << " and " << b.size());
  const std::size_t rows = a.size() / static_cast<std::size_t>(C);
  double sum = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    double dot = 0, na = 0, nb = 0;
    for (std::size_t c = 0; c < static_cast<std::size_t>(C); ++c) {
      const double x = scalar_cast<double>(a[r * static_cast<std::size_t>(C) + c]);
      const double y = scalar_cast<double>(b[r * static_cast<std::size_t>(C) + c]);
      dot += x * y;
      na += x * x;
      nb += y * y;
    }
    double d;
    if (na == 0 && nb == 0)
      d = 0.0;
    else if (na == 0 || nb == 0)
      d = 0.5;
    else
      d = std::acos(std::clamp(dot / std::sqrt(na * nb), -1.0, 1.0)) / std::numbers::pi;
    sum += d;
  }
  return rows ? sum / static_cast<double>(rows) : NAN;
}

struct DiagnosticsOptions {
  bool variance = true;
  bool angular = true;
  bool gradients = true;
  bool layer_removal = true;
};

// Everything averaged over the batches given. Blocks are 0-based here (block i is layer l = i + 1).
struct Diagnostics {
  int layers = 0;
  std::int64_t batches = 0;
  double loss = NAN;                          // mean loss of the intact model
  std::vector<double> block_output_variance;  // (L)
  std::vector<double> attn_branch_variance;   // (L)
  std::vector<double> mlp_branch_variance;    // (L)
  std::vector<double> input_variance;  // (L + 1): x_0 (embeddings) .. x_L (last block's output)
  std::vector<std::vector<double>> angular_distance;  // [l][n]: d(x_l, x_{l+n}), n = 0 .. L - l
  std::vector<double> grad_norm;           // (L) L2 norm of each block's parameter gradients
  std::vector<double> loss_without_block;  // (L) loss with block i skipped
  std::vector<double> loss_increase;       // (L) loss_without_block - loss

  template <class = void>  // instantiated where called (docs/performance.md, Compile time)
  nlohmann::json to_json() const {
    return {{"layers", layers},
            {"batches", batches},
            {"loss", loss},
            {"block_output_variance", block_output_variance},
            {"attn_branch_variance", attn_branch_variance},
            {"mlp_branch_variance", mlp_branch_variance},
            {"input_variance", input_variance},
            {"angular_distance", angular_distance},
            {"grad_norm", grad_norm},
            {"loss_without_block", loss_without_block},
            {"loss_increase", loss_increase}};
  }
};

// Per-block output variance of one forward (cheap: what fathom-train logs every N steps).
template <class T, DeviceTag D>
std::vector<double> block_output_variance(const nn::LanguageModel<T, D>& model,
                                          const Tensor<std::int32_t, D>& x,
                                          const Tensor<std::int32_t, D>& y) {
  autograd::NoGradGuard no_grad;
  std::vector<double> out(static_cast<std::size_t>(model.config().layers), NAN);
  nn::ForwardOptions<T, D> options;
  options.observer = [&](int block, nn::Site site, const Var<T, D>& v) {
    if (site == nn::Site::block_output && block >= 0 && block < static_cast<int>(out.size()))
      out[static_cast<std::size_t>(block)] = variance(v.value().to_vector());
  };
  model.loss(x, y, options);
  return out;
}

// Runs every diagnostic on `batches` (pairs of inputs and targets, (B, T) each).
template <class T, DeviceTag D>
Diagnostics run_diagnostics(nn::LanguageModel<T, D>& model, const std::vector<data::Batch>& batches,
                            const DiagnosticsOptions& opt = {}) {
  FATHOM_CHECK(!batches.empty(), "diagnostics: expected at least one batch, got none");
  const int L = model.config().layers;
  const std::int64_t C = model.config().d_model;
  const auto uL = static_cast<std::size_t>(L);
  Diagnostics d;
  d.layers = L;
  d.batches = static_cast<std::int64_t>(batches.size());
  d.block_output_variance.assign(uL, 0.0);
  d.attn_branch_variance.assign(uL, 0.0);
  d.mlp_branch_variance.assign(uL, 0.0);
  d.input_variance.assign(uL + 1, 0.0);
  d.angular_distance.assign(uL + 1, {});
  for (std::size_t l = 0; l <= uL; ++l) d.angular_distance[l].assign(uL + 1 - l, 0.0);
  d.grad_norm.assign(uL, 0.0);
  d.loss_without_block.assign(uL, 0.0);
  d.loss = 0.0;
  const double nb = static_cast<double>(batches.size());

  for (const auto& b : batches) {
    auto x = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs);
    auto y = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.targets);

    // One forward with gradients: the stream at every block boundary, branch variances, and
    // (backward) per-block gradient norms.
    std::vector<std::vector<T>> states(uL + 1);
    nn::ForwardOptions<T, D> options;
    options.observer = [&](int block, nn::Site site, const Var<T, D>& v) {
      if (block < 0 || block >= L) return;
      const auto ub = static_cast<std::size_t>(block);
      if (site == nn::Site::block_input)
        states[ub] = v.value().to_vector();
      else if (site == nn::Site::block_output) {
        auto vals = v.value().to_vector();
        d.block_output_variance[ub] += variance(vals) / nb;
        if (block == L - 1) states[uL] = std::move(vals);
      } else if (site == nn::Site::attn_branch)
        d.attn_branch_variance[ub] += variance(v.value().to_vector()) / nb;
      else if (site == nn::Site::mlp_branch)
        d.mlp_branch_variance[ub] += variance(v.value().to_vector()) / nb;
    };
    // Gradients are released before and after (as TrainStep::update leaves them), so that a
    // training step after the diagnostics writes its gradients fresh, as it would without them.
    nn::release_gradients(model.parameters());
    {
      std::optional<autograd::NoGradGuard> no_grad;
      if (!opt.gradients) no_grad.emplace();
      auto loss = model.loss(x, y, options);
      d.loss += static_cast<double>(loss.value().item()) / nb;
      if (opt.gradients) {
        autograd::backward(loss);
        std::vector<double> sq(uL, 0.0);
        for (const auto& p : model.parameters()) {
          const int blk = p.block();
          if (blk < 0 || blk >= L || !p.var.has_grad()) continue;
          for (const T& g : p.var.grad().to_vector()) {
            const double v = scalar_cast<double>(g);
            sq[static_cast<std::size_t>(blk)] += v * v;
          }
        }
        for (std::size_t i = 0; i < uL; ++i) d.grad_norm[i] += std::sqrt(sq[i]) / nb;
        nn::release_gradients(model.parameters());
      }
    }
    for (std::size_t l = 0; l <= uL; ++l) {
      if (opt.variance) d.input_variance[l] += variance(states[l]) / nb;
      if (opt.angular)
        for (std::size_t n = 0; l + n <= uL; ++n)
          d.angular_distance[l][n] += angular_distance(states[l], states[l + n], C) / nb;
    }

    if (opt.layer_removal) {
      autograd::NoGradGuard no_grad;
      for (int i = 0; i < L; ++i) {
        nn::ForwardOptions<T, D> skip;
        skip.skip.assign(uL, false);
        skip.skip[static_cast<std::size_t>(i)] = true;
        d.loss_without_block[static_cast<std::size_t>(i)] +=
            static_cast<double>(model.loss(x, y, skip).value().item()) / nb;
      }
    }
  }
  d.loss_increase.resize(uL);
  for (std::size_t i = 0; i < uL; ++i) d.loss_increase[i] = d.loss_without_block[i] - d.loss;
  if (!opt.layer_removal) d.loss_without_block.clear(), d.loss_increase.clear();
  if (!opt.gradients) d.grad_norm.clear();
  return d;
}

}  // namespace fathom::diag
