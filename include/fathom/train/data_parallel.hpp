// Data-parallel training: train() (trainer.hpp) on every rank of a communicator (dist/), each
// rank reading its own rows of every global batch, gradients summed in buckets from inside the
// backward pass, and, with ZeRO-1, the optimizer state sharded over the ranks.
//
//   dist::InProcessCommunicator / dist::NcclCommunicator comm = ...;
//   auto result = train::train_data_parallel<T, D>(options, model, comm, {.zero = 1});
//
// The global batch is options.batch x ranks x options.grad_accum sequences, and the data of a step
// does not depend on how it is split: 2 ranks with batch B train as 1 rank with batch B and
// grad_accum 2 (bit for bit on the in-process backend). Checkpoints are those of one process
// (written by rank 0, the optimizer state gathered), so a run resumes on any number of ranks that
// keeps batch x ranks x grad_accum.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/dist/buckets.hpp"
#include "fathom/dist/communicator.hpp"
#include "fathom/dist/zero.hpp"
#include "fathom/train/step.hpp"
#include "fathom/train/trainer.hpp"

namespace fathom::train {

struct DataParallelOptions {
  int zero = 0;  // ZeRO stage: 0 replicates the optimizer state on every rank, 1 shards it
  std::size_t bucket_bytes = dist::GradReducer<float, Cpu>::default_bucket_bytes;
};

// ZeRO-1's ParameterUpdate: clipping by the norm summed over the shards, a step of this rank's
// shard, the weights all-gathered. named_state() gathers the whole state (every rank calls it, for
// checkpoints); what is written into it (resuming) is taken back into the shards at the next step.
template <class Rule, class T, DeviceTag D>
class ShardedUpdate final : public ParameterUpdate<T, D> {
 public:
  using A = accum_t<T>;
  ShardedUpdate(Rule rule, const std::vector<nn::NamedParameter<T, D>>& params,
                dist::GradReducer<T, D>& reducer, double max_norm)
      : optimizer_(rule, params, reducer), max_norm_(max_norm) {}

  void step(double lr) override {
    take_staged();
    last_norm_ = max_norm_ > 0 ? optimizer_.global_grad_norm() : NAN;
    optimizer_.step(lr, max_norm_ > 0 ? optim::clip_factor(last_norm_, max_norm_) : 1.0);
  }
  double last_grad_norm() const override { return last_norm_; }
  std::int64_t step_count() const override { return optimizer_.step_count(); }
  void set_step_count(std::int64_t steps) override { optimizer_.set_step_count(steps); }
  std::vector<std::pair<std::string, Tensor<A, D>*>> named_state() override {
    take_staged();
    staged_ = optimizer_.gather_state();
    std::vector<std::pair<std::string, Tensor<A, D>*>> out;
    for (auto& [name, t] : staged_) out.emplace_back(name, &t);
    return out;
  }
  dist::ShardedOptimizer<Rule, T, D>& optimizer() { return optimizer_; }

 private:
  // The gathered state, possibly loaded into since: back into this rank's shard, then dropped.
  void take_staged() {
    if (staged_.empty()) return;
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < staged_.size(); ++i) index.emplace(staged_[i].first, i);
    optimizer_.load_state([&](const std::string& name) { return staged_[index.at(name)].second; });
    staged_.clear();
  }

  dist::ShardedOptimizer<Rule, T, D> optimizer_;
  double max_norm_;
  double last_norm_ = NAN;
  std::vector<std::pair<std::string, Tensor<A, D>>> staged_;
};

// What one rank plugs into train(): the bucketed gradient reduction around each backward, the
// parameter update (replicated, or ZeRO-1), its share of the data, and the losses averaged over
// ranks. Lives as long as the train() call it serves.
template <class T, DeviceTag D>
class DataParallel final : public StepHooks<T, D> {
 public:
  DataParallel(dist::Communicator& comm, DataParallelOptions options = {})
      : comm_(comm), options_(options) {
    FATHOM_CHECK(options.zero == 0 || options.zero == 1,
                 "data parallel: ZeRO stage " << options.zero << " is not supported (0 or 1)");
  }

  TrainHooks<T, D> hooks(PeriodicHook periodic = {}) {
    TrainHooks<T, D> h;
    h.periodic = std::move(periodic);
    h.step = this;
    h.shard = {comm_.rank(), comm_.world_size()};
    h.make_update = [this](std::vector<nn::NamedParameter<T, D>>& params, const TrainOptions& o) {
      return make_update(params, o);
    };
    h.combine_losses = [this](std::vector<double>& losses) { combine(losses); };
    h.share_fp8_histories = [this](const std::vector<nn::NamedFp8History<D>>& histories) {
      share_fp8_histories(histories);
    };
    return h;
  }

  void before_backward(std::int64_t k, std::int64_t n) override {
    reducer().begin_micro_batch(k + 1 == n);
  }
  void after_backward(std::int64_t k, std::int64_t n) override {
    if (k + 1 < n) {
      reducer().end_micro_batch();
    } else {
      reducer().finish();
      // After the step's last backward: every rank's histories become their maximum over the
      // ranks, so the next step scales the same on every rank and a checkpoint's set is each's.
      if (fp8_amax_.defined()) dist::all_reduce(comm_, fp8_amax_, dist::ReduceOp::max);
    }
  }
  double gradient_seed(std::int64_t n) const override {
    return 1.0 / (static_cast<double>(comm_.world_size()) * static_cast<double>(n));
  }

  // The model's delayed-scaling histories, moved into one buffer (fp8_amax_) so that one
  // collective reduces them all. They start equal on every rank: new, or loaded later from the
  // one checkpoint a resumed run starts from.
  void share_fp8_histories(const std::vector<nn::NamedFp8History<D>>& histories) {
    std::int64_t total = 0;
    for (const auto& named : histories) total += named.second->length();
    fp8_amax_ = Tensor<float, D>::zeros(Shape{total});
    std::int64_t at = 0;
    for (const auto& named : histories) {
      const std::int64_t len = named.second->length();
      named.second->move_into(fp8_amax_.slice(0, at, at + len));
      at += len;
    }
  }

  dist::GradReducer<T, D>& reducer() {
    FATHOM_CHECK(reducer_,
                 "data parallel: no reducer yet (train() makes it with the parameter update)");
    return *reducer_;
  }

 private:
  std::unique_ptr<ParameterUpdate<T, D>> make_update(std::vector<nn::NamedParameter<T, D>>& params,
                                                     const TrainOptions& o) {
    std::vector<Var<T, D>> vars;
    for (const auto& p : params) vars.push_back(p.var);
    using Mode = typename dist::GradReducer<T, D>::Mode;
    reducer_ = std::make_unique<dist::GradReducer<T, D>>(
        comm_, std::move(vars), options_.zero == 1 ? Mode::reduce_scatter : Mode::all_reduce,
        options_.bucket_bytes);
    if (options_.zero == 0) return make_local_update<T, D>(params, o.optimizer, o.clip);
    return std::visit(
        [&](const auto& rule) -> std::unique_ptr<ParameterUpdate<T, D>> {
          using Rule = std::decay_t<decltype(rule)>;
          return std::make_unique<ShardedUpdate<Rule, T, D>>(rule, params, *reducer_, o.clip);
        },
        o.optimizer);
  }

  // Each rank's mean losses of the same steps -> the mean over ranks, summed in rank order.
  void combine(std::vector<double>& losses) {
    if (comm_.world_size() == 1 || losses.empty()) return;
    auto t =
        Tensor<double, D>::from_vector(Shape{static_cast<std::int64_t>(losses.size())}, losses);
    dist::all_reduce(comm_, t);
    comm_.synchronize();
    losses = t.to_vector();
    for (auto& l : losses) l /= static_cast<double>(comm_.world_size());
  }

  dist::Communicator& comm_;
  DataParallelOptions options_;
  std::unique_ptr<dist::GradReducer<T, D>> reducer_;
  Tensor<float, D> fp8_amax_;  // every fp8 amax history of the model, one after another
};

// A fingerprint of everything that must agree across ranks: the options that shape the run (not
// display ones such as quiet), the element type and the ZeRO stage.
template <class T>
std::uint64_t options_fingerprint(const TrainOptions& o, const DataParallelOptions& dp) {
  nlohmann::json j = {{"model", o.model},
                      {"policy", o.policy},
                      {"policy_options", o.policy_options},
                      {"precision", Precision<T>::name},
                      {"data", o.data},
                      {"val_data", o.val_data},
                      {"seq_len", o.seq_len},
                      {"steps", o.steps},
                      {"batch", o.batch},
                      {"grad_accum", o.grad_accum},
                      {"lr", o.lr},
                      {"clip", o.clip},
                      {"seed", o.seed},
                      {"eval_every", o.eval_every},
                      {"eval_batches", o.eval_batches},
                      {"save_every", o.save_every},
                      {"log_every", o.log_every},
                      {"out", o.out},
                      {"resume", o.resume},
                      {"overwrite", o.overwrite},
                      {"skip_nonfinite", o.skip_nonfinite},
                      {"builtin_tokens", o.builtin_tokens},
                      {"stop_after", o.stop_after},
                      {"zero", dp.zero},
                      {"bucket_bytes", dp.bucket_bytes},
                      {"schedule_kind", o.schedule.index()},
                      {"optimizer_kind", o.optimizer.index()}};
  std::visit(
      [&](const auto& k) {
        if constexpr (requires { k.warmup; }) j["schedule"] = {k.warmup, k.min_lr_ratio};
      },
      o.schedule);
  std::visit(
      [&](const auto& r) {
        if constexpr (requires { r.beta1; })
          j["optimizer"] = {r.beta1, r.beta2, r.eps, r.weight_decay, r.decoupled};
        else
          j["optimizer"] = {r.momentum, r.dampening, r.weight_decay, r.nesterov};
      },
      o.optimizer);
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : j.dump()) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// train() on this rank of `comm`, after checking that every rank was given the same options.
template <class T, DeviceTag D>
TrainResult train_data_parallel(const TrainOptions& o, nn::LanguageModel<T, D>& model,
                                dist::Communicator& comm, DataParallelOptions dp = {},
                                PeriodicHook periodic = {}) {
  dist::require_same_on_all_ranks<D>(comm, options_fingerprint<T>(o, dp),
                                     "configuration (options, precision or ZeRO stage)");
  DataParallel<T, D> parallel(comm, dp);
  return train<T, D>(o, model, parallel.hooks(std::move(periodic)));
}

}  // namespace fathom::train
