// LanguageModel<T, D>: a trainable decoder-only language model seen through what training,
// sampling and diagnostics need, so that code above the models is compiled once per element type
// and device, not once per architecture and policy; DecoderModel implements it over DecoderLM.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fathom/nn/config.hpp"
#include "fathom/nn/decoder_lm.hpp"
#include "fathom/nn/parameter.hpp"

namespace fathom::nn {

template <class T, DeviceTag D>
class LanguageModel {
 public:
  using LossVar = Var<accum_t<T>, D>;
  virtual ~LanguageModel() = default;
  // Mean cross-entropy of targets (B, T) given tokens (B, T), in accum_t<T>.
  virtual LossVar loss(const Tensor<std::int32_t, D>& tokens,
                       const Tensor<std::int32_t, D>& targets) const = 0;
  // loss() for a backward seeded with gradient_seed, free to compute the gradient of its logits
  // in the forward (DecoderLM::training_loss); what a training step calls.
  virtual LossVar training_loss(const Tensor<std::int32_t, D>& tokens,
                                const Tensor<std::int32_t, D>& targets,
                                double gradient_seed) const {
    (void)gradient_seed;
    return loss(tokens, targets);
  }
  // Logits (B*T, V) of tokens (B, T).
  virtual Var<T, D> forward(const Tensor<std::int32_t, D>& tokens) const = 0;
  // With the diagnostics hooks: an observer of every block's sites and a per-block skip mask.
  virtual LossVar loss(const Tensor<std::int32_t, D>& tokens,
                       const Tensor<std::int32_t, D>& targets,
                       const ForwardOptions<T, D>& options) const = 0;
  // Every parameter once, in checkpoint order.
  virtual std::vector<NamedParameter<T, D>>& parameters() = 0;
  virtual void init(std::uint64_t seed) = 0;
  virtual void zero_grad() = 0;
  // Whether the Hugging Face layout stores this parameter transposed (GPT-2's Conv1D weights).
  virtual bool hf_transposed(const std::string& name) const = 0;
  virtual const ModelConfig& config() const = 0;
  // The precision of the blocks' linear-layer GEMMs and how fp8 ones scale
  // (DecoderLM::set_linear_precision). A model without fp8 linear layers refuses fp8.
  virtual void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) {
    (void)recipe;
    FATHOM_CHECK(p == LinearPrecision::native, "this model has no fp8 linear layers");
  }
  virtual LinearPrecision linear_precision() const { return LinearPrecision::native; }
  virtual Fp8Recipe fp8_recipe() const { return {}; }
  // The delayed-scaling amax histories (state that training changes besides the parameters, saved
  // with the optimizer's in checkpoints); empty without delayed fp8 scaling.
  virtual std::vector<NamedFp8History<D>> fp8_histories() const { return {}; }
};

// LanguageModel over DecoderLM<Arch, Policy, T, D>.
template <class Arch, class Policy, class T, DeviceTag D>
class DecoderModel final : public LanguageModel<T, D> {
 public:
  using Model = DecoderLM<Arch, Policy, T, D>;
  using LossVar = typename LanguageModel<T, D>::LossVar;
  DecoderModel(const ModelConfig& c, Policy p) : model_(c, std::move(p)) {}
  LossVar loss(const Tensor<std::int32_t, D>& x, const Tensor<std::int32_t, D>& y) const override {
    return model_.loss(x, y);
  }
  LossVar training_loss(const Tensor<std::int32_t, D>& x, const Tensor<std::int32_t, D>& y,
                        double gradient_seed) const override {
    return model_.training_loss(x, y, gradient_seed);
  }
  Var<T, D> forward(const Tensor<std::int32_t, D>& x) const override { return model_.forward(x); }
  LossVar loss(const Tensor<std::int32_t, D>& x, const Tensor<std::int32_t, D>& y,
               const ForwardOptions<T, D>& options) const override {
    return model_.loss(x, y, options);
  }
  std::vector<NamedParameter<T, D>>& parameters() override { return model_.parameters(); }
  void init(std::uint64_t seed) override { model_.init(seed); }
  void zero_grad() override { model_.zero_grad(); }
  bool hf_transposed(const std::string& name) const override { return Arch::hf_transposed(name); }
  const ModelConfig& config() const override { return model_.config(); }
  void set_linear_precision(LinearPrecision p, const Fp8Recipe& recipe = {}) override {
    model_.set_linear_precision(p, recipe);
  }
  LinearPrecision linear_precision() const override { return model_.linear_precision(); }
  Fp8Recipe fp8_recipe() const override { return model_.fp8_recipe(); }
  std::vector<NamedFp8History<D>> fp8_histories() const override { return model_.fp8_histories(); }
  Model& model() { return model_; }
  const Model& model() const { return model_; }

 private:
  Model model_;
};

}  // namespace fathom::nn
