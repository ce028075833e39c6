// One optimizer step of training, as a reusable object: TrainStep runs forward and backward over
// the micro-batches of a step (gradient accumulation), then hands the gradients to a
// ParameterUpdate (clipping with the factor computed on the device, the optimizer step) and zeroes
// them. Nothing in a step waits for the device: losses stay on the device until take_losses() reads
// them, which the loop does only when a log line, an evaluation or a checkpoint is due.
//
// Seams for a layer above (data parallelism): StepHooks are called before and after the backward
// of every micro-batch (a gradient all-reduce starts there); ParameterUpdate can be replaced (a
// sharded optimizer: reduce-scatter, a local step on the shard, all-gather); rank_rows() gives each
// rank its disjoint rows of a global batch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/nn/language_model.hpp"
#include "fathom/optim/clip.hpp"
#include "fathom/optim/optimizer.hpp"
#include "fathom/train/options.hpp"

namespace fathom::train {

// What turns accumulated gradients into new weights. The default is LocalUpdate; a sharded
// optimizer implements the same interface.
template <class T, DeviceTag D>
class ParameterUpdate {
 public:
  using A = accum_t<T>;
  virtual ~ParameterUpdate() = default;
  // One update at learning rate lr from the gradients as they are (clipping included). Must not
  // wait for the device.
  virtual void step(double lr) = 0;
  // The global gradient norm seen by the last step (reads the device); NaN when not computed.
  virtual double last_grad_norm() const = 0;
  // Updates made so far (Adam's bias correction counts them); restored from checkpoints.
  virtual std::int64_t step_count() const = 0;
  virtual void set_step_count(std::int64_t steps) = 0;
  // The state as named tensors for checkpoints: "<param>.<state>" and, for mixed precision,
  // "<param>.master".
  virtual std::vector<std::pair<std::string, Tensor<A, D>*>> named_state() = 0;
};

// Clipping to max_norm (0: none) with the factor computed on the device, then Optimizer<Rule>.
template <class Rule, class T, DeviceTag D>
class LocalUpdate final : public ParameterUpdate<T, D> {
 public:
  using A = accum_t<T>;
  LocalUpdate(Rule rule, const std::vector<nn::NamedParameter<T, D>>& params, double max_norm)
      : optimizer_(rule, params),
        max_norm_(max_norm),
        factor_(Tensor<float, D>::full(Shape{}, 1.0f)),
        sum_squares_(Tensor<A, D>::zeros(Shape{})) {}

  void step(double lr) override {
    if (max_norm_ > 0) {
      optim::clip_factor_on_device<T, D>(optimizer_.parameters(), max_norm_, factor_, sum_squares_);
      optimizer_.step(lr, 1.0, factor_.data());
    } else {
      optimizer_.step(lr);
    }
  }
  double last_grad_norm() const override {
    return max_norm_ > 0 ? std::sqrt(static_cast<double>(sum_squares_.item())) : NAN;
  }
  std::int64_t step_count() const override { return optimizer_.step_count(); }
  void set_step_count(std::int64_t steps) override { optimizer_.set_step_count(steps); }
  std::vector<std::pair<std::string, Tensor<A, D>*>> named_state() override {
    return optimizer_.named_state();
  }
  optim::Optimizer<Rule, T, D>& optimizer() { return optimizer_; }

 private:
  optim::Optimizer<Rule, T, D> optimizer_;
  double max_norm_;
  Tensor<float, D> factor_;   // the clip factor, read by the optimizer on the device
  Tensor<A, D> sum_squares_;  // of every gradient, at the last step
};

// The LocalUpdate of `rule` over `params`.
template <class T, DeviceTag D>
std::unique_ptr<ParameterUpdate<T, D>> make_local_update(
    const std::vector<nn::NamedParameter<T, D>>& params, const OptimizerRule& rule,
    double max_norm) {
  return std::visit(
      [&](const auto& r) -> std::unique_ptr<ParameterUpdate<T, D>> {
        using Rule = std::decay_t<decltype(r)>;
        return std::make_unique<LocalUpdate<Rule, T, D>>(r, params, max_norm);
      },
      rule);
}

// Called around the backward of each micro-batch k of n (0-based) of a step. After the backward of
// micro-batch k, gradients hold the sum over micro-batches 0..k (each scaled by 1/n); after that of
// n - 1 the update runs.
template <class T, DeviceTag D>
class StepHooks {
 public:
  virtual ~StepHooks() = default;
  virtual void before_backward(std::int64_t /*k*/, std::int64_t /*n*/) {}
  virtual void after_backward(std::int64_t /*k*/, std::int64_t /*n*/) {}
  // The backward seed of each of the n micro-batch losses: 1 / n averages over micro-batches; a
  // data-parallel reduction that sums over W ranks seeds 1 / (W n).
  virtual double gradient_seed(std::int64_t n) const { return 1.0 / static_cast<double>(n); }
};

// This process's place among the ranks of a data-parallel run. train() reads rank r's own rows of
// every global batch through the sampler (data::SamplerOptions::rank and ranks); rank_rows() cuts
// one host batch into the ranks' rows instead, rank r taking rows [r B / world, (r + 1) B / world).
// Either way the data order does not depend on the number of ranks.
struct Shard {
  int rank = 0;
  int world = 1;
};

// The rows of `global` that belong to `shard` (all of them for one rank).
inline data::Batch rank_rows(const data::Batch& global, const Shard& shard) {
  FATHOM_CHECK(
      shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world,
      "rank_rows: expected 0 <= rank < world, got rank " << shard.rank << " of " << shard.world);
  if (shard.world == 1) return global;
  FATHOM_CHECK_OPTION(
      global.batch % shard.world == 0, "batch",
      "expected a multiple of the number of ranks (" << shard.world << "), got " << global.batch);
  const std::int64_t rows = global.batch / shard.world, first = shard.rank * rows;
  const auto begin = static_cast<std::ptrdiff_t>(first * global.seq_len);
  const auto end = static_cast<std::ptrdiff_t>((first + rows) * global.seq_len);
  data::Batch b;
  b.batch = rows;
  b.seq_len = global.seq_len;
  b.inputs.assign(global.inputs.begin() + begin, global.inputs.begin() + end);
  b.targets.assign(global.targets.begin() + begin, global.targets.begin() + end);
  return b;
}

// A host batch's inputs and targets on device D.
template <DeviceTag D>
std::pair<Tensor<std::int32_t, D>, Tensor<std::int32_t, D>> to_device(const data::Batch& b) {
  return {Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs),
          Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.targets)};
}

// One optimizer step over `micro_batches` micro-batches: call accumulate() for each, then update()
// (or discard() to skip the step). Losses are kept on the device, one per micro-batch, until
// take_losses().
template <class T, DeviceTag D>
class TrainStep {
 public:
  using A = accum_t<T>;

  // Room is made for the losses of `unread_steps` steps between two take_losses() calls; more
  // steps grow it (an allocation, not a wait).
  TrainStep(nn::LanguageModel<T, D>& model, ParameterUpdate<T, D>& update,
            std::int64_t micro_batches, StepHooks<T, D>* hooks = nullptr,
            std::int64_t unread_steps = 16)
      : model_(model),
        update_(update),
        micro_(micro_batches),
        hooks_(hooks),
        capacity_(std::max<std::int64_t>(1, unread_steps)) {
    FATHOM_CHECK_OPTION(micro_batches >= 1, "grad_accum",
                        "expected at least 1, got " << micro_batches);
    losses_ = Tensor<A, D>::zeros(Shape{capacity_ * micro_});
  }

  std::int64_t micro_batches() const { return micro_; }
  nn::LanguageModel<T, D>& model() { return model_; }
  ParameterUpdate<T, D>& parameter_update() { return update_; }

  // Forward and backward of the next micro-batch of this step (tokens and targets (B, T)).
  // Gradients accumulate, scaled by 1 / micro_batches(); the loss is recorded on the device.
  void accumulate(const Tensor<std::int32_t, D>& tokens, const Tensor<std::int32_t, D>& targets) {
    FATHOM_CHECK(next_ > 0 || !complete_,
                 "TrainStep::accumulate: the previous step was neither updated nor discarded");
    if (next_ == 0 && pending_ == capacity_) grow();
    const double seed = hooks_ ? hooks_->gradient_seed(micro_) : 1.0 / static_cast<double>(micro_);
    auto loss = model_.training_loss(tokens, targets, seed);
    const std::int64_t slot = pending_ * micro_ + next_;
    losses_.slice(0, slot, slot + 1).copy_(loss.value().reshape({1}));
    if (!seed_.defined() || seed_.shape() != loss.shape())
      seed_ = Tensor<A, D>::full(loss.shape(), static_cast<A>(seed));
    if (hooks_) hooks_->before_backward(next_, micro_);
    autograd::backward(loss, seed_);
    if (hooks_) hooks_->after_backward(next_, micro_);
    if (++next_ == micro_) {
      next_ = 0;
      ++pending_;
      complete_ = true;
    }
  }

  // After the step's last accumulate(): the update at learning rate lr, then the gradients are
  // released (see keep_gradient_buffers).
  void update(double lr) {
    require_complete("update");
    update_.step(lr);
    clear_gradients();
    complete_ = false;
  }

  // After the step's last accumulate(): drops its gradients without updating (a skipped step).
  void discard() {
    require_complete("discard");
    clear_gradients();
    complete_ = false;
  }

  // How update() and discard() clear the gradients. By default they release them, as PyTorch's
  // zero_grad(set_to_none=True) does: the next backward writes each gradient fresh, with no fill
  // of zeros and no GEMM that adds its product to zeros, and no gradient buffer is held through
  // the forward. A parameter that gets no gradient in a step then has none, and the optimizer
  // skips it. keep_gradient_buffers(true) zeroes them in place instead (the model's
  // zero_grad()), so that each keeps its address (a CUDA graph that writes them needs that).
  void keep_gradient_buffers(bool keep) { keep_gradients_ = keep; }

  // In place of this step's accumulate() calls: `device_work` replays their device work, captured
  // earlier as a CUDA graph from accumulate() calls on the same (fixed) inputs. Capture right
  // after take_losses() and replay only while no accumulate() runs: the replayed losses land where
  // the captured ones did and are not kept.
  template <class Fn>
  void accumulate_replayed(Fn&& device_work) {
    FATHOM_CHECK(next_ == 0 && !complete_,
                 "TrainStep::accumulate_replayed: the previous step was neither updated "
                 "nor discarded, or is half accumulated");
    device_work();
    complete_ = true;
  }

  // accumulate() over every (tokens, targets) pair, then update(lr).
  void run(const std::vector<std::pair<Tensor<std::int32_t, D>, Tensor<std::int32_t, D>>>& micro,
           double lr) {
    FATHOM_CHECK(static_cast<std::int64_t>(micro.size()) == micro_,
                 "TrainStep::run: expected " << micro_ << " micro-batches, got " << micro.size());
    for (const auto& [x, y] : micro) accumulate(x, y);
    update(lr);
  }

  // The mean loss of every step whose micro-batches all ran since the last call, oldest first
  // (reads the device once). The same sums in the same order as reading each loss as it came.
  std::vector<double> take_losses() {
    std::vector<double> out;
    if (pending_ == 0) return out;
    const auto values = losses_.slice(0, 0, pending_ * micro_).to_vector();
    for (std::int64_t s = 0; s < pending_; ++s) {
      double sum = 0.0;
      for (std::int64_t k = 0; k < micro_; ++k)
        sum += static_cast<double>(values[static_cast<std::size_t>(s * micro_ + k)]);
      out.push_back(sum / static_cast<double>(micro_));
    }
    pending_ = 0;
    return out;
  }

 private:
  void clear_gradients() {
    if (keep_gradients_) {
      model_.zero_grad();
      return;
    }
    nn::release_gradients(model_.parameters());
  }
  void require_complete(const char* what) const {
    FATHOM_CHECK(complete_, "TrainStep::" << what << ": the step's micro-batches have not all run ("
                                          << next_ << " of " << micro_ << ")");
  }
  // More room for losses not yet read (a loop that reads rarely): double it, keeping them.
  void grow() {
    auto bigger = Tensor<A, D>::zeros(Shape{2 * capacity_ * micro_});
    bigger.slice(0, 0, capacity_ * micro_).copy_(losses_);
    losses_ = std::move(bigger);
    capacity_ *= 2;
  }

  nn::LanguageModel<T, D>& model_;
  ParameterUpdate<T, D>& update_;
  std::int64_t micro_;
  StepHooks<T, D>* hooks_;
  std::int64_t capacity_;        // steps whose losses losses_ holds
  Tensor<A, D> seed_;            // 1 / micro_batches: the backward seed of every micro-batch loss
  Tensor<A, D> losses_;          // (capacity_ * micro_) losses not yet read
  std::int64_t pending_ = 0;     // steps whose losses are in losses_
  std::int64_t next_ = 0;        // the next micro-batch of the current step
  bool complete_ = false;        // every micro-batch of the current step ran; not yet updated
  bool keep_gradients_ = false;  // update() and discard() zero gradients in place, not release
};

}  // namespace fathom::train
