// DecoderLM<Arch, Policy, T, D>: a decoder-only language model: token (and, for GPT-2, position)
// embeddings, L blocks normalized by Policy, an optional final norm and the LM head (tied or not).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/ops/softmax.hpp"
#include "fathom/core/error.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/block.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/embedding.hpp"
#include "fathom/nn/linear.hpp"
#include "fathom/nn/norm.hpp"
#include "fathom/nn/parameter.hpp"
#include "fathom/policy/init.hpp"
#include "fathom/policy/norm_policy.hpp"
#include "fathom/policy/traits.hpp"

namespace fathom::nn {

template <class T, DeviceTag D>
struct ForwardOptions {
  Observer<T, D> observer;  // see block.hpp for the sites it is called at; empty: none
  // skip[i] true: block i (0-based) passes its input through unchanged (layer-removal studies).
  // Shorter than L: the missing entries are false.
  std::vector<bool> skip;
};

template <class Arch, class Policy, FloatingScalar T = float, DeviceTag D = Cpu>
class DecoderLM {
  static_assert(
      Architecture<Arch>,
      "DecoderLM<Arch, ...>: Arch must be an architecture trait such as fathom::nn::Llama "
      "or fathom::nn::Gpt2 (see fathom/nn/arch.hpp)");
  static_assert(policy::NormPolicyCheck<Policy>::value);

 public:
  using Var = fathom::Var<T, D>;
  using LossVar = fathom::Var<accum_t<T>, D>;
  using BlockType = Block<Policy, T, D>;
  using Parameter = NamedParameter<T, D>;
  static constexpr int norms_per_sublayer = policy::PolicyTraits<Policy>::norms_per_sublayer;

  // Parameters are allocated (zeros) but not drawn: call init(seed), or load a checkpoint.
  explicit DecoderLM(ModelConfig config, Policy policy = Policy{})
      : config_(std::move(config)), policy_(std::move(policy)) {
    config_.validate();
    FATHOM_CHECK(config_.arch == Arch::kind, "DecoderLM: the architecture type is "
                                                 << to_string(Arch::kind) << " but the config ('"
                                                 << config_.name << "') is for "
                                                 << to_string(config_.arch));
    constexpr ArchSpec spec = Arch::spec;
    const ModelConfig& c = config_;
    // Refuse a model whose weights alone cannot fit before allocating any of them.
    const std::int64_t n = count_parameters(c, norms_per_sublayer,
                                            policy::PolicyTraits<Policy>::has_final_norm(policy_));
    memory::require_available<D>(memory::saturating_bytes(static_cast<std::uint64_t>(n), sizeof(T)),
                                 "a model of " + std::to_string(n) + " parameters ('" + c.name +
                                     "', " + std::to_string(c.layers) + " layers, d_model " +
                                     std::to_string(c.d_model) + ")");
    wte_ = Embedding<T, D>(Arch::embedding(), c.vocab, c.d_model, policy::ParamRole::embedding,
                           params_);
    if (!spec.rope)
      wpe_ = Embedding<T, D>(Arch::positions(), c.max_seq, c.d_model,
                             policy::ParamRole::position_embedding, params_);
    blocks_.reserve(static_cast<std::size_t>(c.layers));
    for (int i = 0; i < c.layers; ++i)
      blocks_.emplace_back(c, Arch::block(i, norms_per_sublayer), i + 1, params_);
    if (policy::PolicyTraits<Policy>::has_final_norm(policy_))
      final_norm_.emplace(spec.norm, Arch::final_norm(), c.d_model, c.norm_eps, 0, c.layers,
                          params_);
    if (!c.tied) {
      policy::ParamInfo head;
      head.role = policy::ParamRole::lm_head;
      head.depth = c.layers;
      head.fan_in = c.d_model;
      head.fan_out = c.vocab;
      lm_head_ = Linear<T, D>(Arch::lm_head(), c.d_model, c.vocab, false, {head}, params_);
    }
  }

  // tokens (B, T) int32 -> logits (B*T, V)
  Var forward(const Tensor<std::int32_t, D>& tokens,
              const ForwardOptions<T, D>& options = {}) const {
    FATHOM_CHECK(tokens.dim() == 2,
                 "DecoderLM::forward: expected tokens of shape (B, T), got " << tokens.shape());
    const std::int64_t B = tokens.size(0), Tn = tokens.size(1);
    FATHOM_CHECK(Tn <= config_.max_seq, "DecoderLM::forward: sequence length "
                                            << Tn << " exceeds max_seq " << config_.max_seq);
    Var x = wte_.forward(tokens);  // (B, T, C)
    if (wpe_.weight().defined()) x = x + wpe_.forward(position_ids(B, Tn));
    const Observer<T, D>* observer = options.observer ? &options.observer : nullptr;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      if (i < options.skip.size() && options.skip[i]) {
        if (observer) {
          (*observer)(static_cast<int>(i), Site::block_input, x);
          (*observer)(static_cast<int>(i), Site::block_output, x);
        }
        continue;
      }
      x = blocks_[i].forward(policy_, x, observer);
    }
    if (final_norm_) {
      x = final_norm_->forward(x);
      if (observer) (*observer)(config_.layers, Site::final_norm, x);
    }
    Var flat =
        autograd::reshape(x, {B * Tn, static_cast<std::int64_t>(config_.d_model)});  // (B*T, C)
    return autograd::linear(flat, lm_head_weight());                                 // (B*T, V)
  }

  // Mean cross-entropy of predicting targets (B, T) from tokens (B, T); targets equal to -100 are
  // ignored. In accum_t<T> (float for bf16).
  LossVar loss(const Tensor<std::int32_t, D>& tokens, const Tensor<std::int32_t, D>& targets,
               const ForwardOptions<T, D>& options = {}) const {
    FATHOM_CHECK(targets.shape() == tokens.shape(),
                 "DecoderLM::loss: tokens " << tokens.shape() << " and targets " << targets.shape()
                                            << " must have the same shape");
    return autograd::cross_entropy(forward(tokens, options), targets.reshape({-1}));
  }

  // loss() for a backward seeded with gradient_seed (a training step's 1 / micro-batches): the same
  // value, with d loss / d logits computed in the same pass over the logits
  // (autograd::cross_entropy_fused), so the backward starts at the LM head.
  LossVar training_loss(const Tensor<std::int32_t, D>& tokens,
                        const Tensor<std::int32_t, D>& targets, double gradient_seed,
                        const ForwardOptions<T, D>& options = {}) const {
    FATHOM_CHECK(targets.shape() == tokens.shape(), "DecoderLM::training_loss: tokens "
                                                        << tokens.shape() << " and targets "
                                                        << targets.shape()
                                                        << " must have the same shape");
    return autograd::cross_entropy_fused(forward(tokens, options), targets.reshape({-1}),
                                         gradient_seed);
  }

  // Every parameter once, in checkpoint order (a tied LM head is the embedding, listed once).
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  std::int64_t num_parameters() const { return count_elements(params_); }
  // The parameter named `name`, or null.
  const Parameter* find(std::string_view name) const {
    for (const auto& p : params_)
      if (p.name == name) return &p;
    return nullptr;
  }

  // Draws every parameter with the policy's own init (PolicyTraits<Policy>::init) or `init`.
  // Same seed, same weights, on every device and every run.
  void init(std::uint64_t seed) { init(seed, policy::PolicyTraits<Policy>::init(policy_)); }
  template <policy::InitPolicy I>
  void init(std::uint64_t seed, const I& init_policy) {
    initialize(params_, seed, [&](const policy::ParamInfo& p) { return init_policy.spec(p); });
  }

  void zero_grad() {
    for (auto& p : params_) p.var.zero_grad();
  }

  // The precision of the GEMMs of the blocks' linear layers (attention projections, MLP):
  // LinearPrecision::fp8 runs them through autograd::linear_fp8. The embeddings, the norms, the
  // attention itself and the LM head keep T. A setting of the model object, not of its weights
  // (checkpoints do not record it); `recipe` says how fp8 layers scale (delayed scaling starts
  // with empty histories).
  void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    for (auto& b : blocks_) b.set_linear_precision(p, recipe);
    linear_precision_ = p;
    fp8_recipe_ = recipe;
  }
  LinearPrecision linear_precision() const { return linear_precision_; }
  const Fp8Recipe& fp8_recipe() const { return fp8_recipe_; }
  // Every delayed-scaling amax history, in block order, by name (empty without delayed scaling).
  std::vector<NamedFp8History<D>> fp8_histories() const {
    std::vector<NamedFp8History<D>> out;
    for (const auto& b : blocks_) b.append_fp8_histories(out);
    return out;
  }

  const ModelConfig& config() const { return config_; }
  const Policy& policy() const { return policy_; }
  bool has_final_norm() const { return final_norm_.has_value(); }
  const std::vector<BlockType>& blocks() const { return blocks_; }
  const Norm<T, D>* final_norm() const { return final_norm_ ? &*final_norm_ : nullptr; }
  const Var& lm_head_weight() const { return config_.tied ? wte_.weight() : lm_head_.weight(); }
  const Embedding<T, D>& token_embedding() const { return wte_; }

 private:
  // (B, T): row b is 0, 1, ..., T-1. Kept for the next forward of the same shape: a copy from the
  // host waits for the device, which would stall every training step.
  const Tensor<std::int32_t, D>& position_ids(std::int64_t B, std::int64_t Tn) const {
    if (!position_ids_.defined() || position_ids_.size(0) != B || position_ids_.size(1) != Tn) {
      std::vector<std::int32_t> ids(static_cast<std::size_t>(B * Tn));
      for (std::size_t i = 0; i < ids.size(); ++i)
        ids[i] = static_cast<std::int32_t>(static_cast<std::int64_t>(i) % Tn);
      position_ids_ = Tensor<std::int32_t, D>::from_vector(Shape{B, Tn}, ids);
    }
    return position_ids_;
  }

  ModelConfig config_;
  Policy policy_;
  std::vector<Parameter> params_;
  Embedding<T, D> wte_;
  Embedding<T, D> wpe_;                           // learned positions only
  mutable Tensor<std::int32_t, D> position_ids_;  // the last position_ids(B, T), see there
  std::vector<BlockType> blocks_;
  std::optional<Norm<T, D>> final_norm_;
  Linear<T, D> lm_head_;  // untied only
  LinearPrecision linear_precision_ = LinearPrecision::native;
  Fp8Recipe fp8_recipe_;
};

}  // namespace fathom::nn
