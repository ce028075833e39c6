// Optimizer<Rule, T, D>: binds an update rule to a model's named parameters, with per-tensor state,
// fp32 master weights when T is narrower (bf16), parameter groups for weight decay, and the state
// as named tensors for checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/optim/param_group.hpp"
#include "fathom/optim/rules.hpp"

namespace fathom::optim {

template <class Rule, class T, DeviceTag D>
class Optimizer {
 public:
  using A = accum_t<T>;
  using State = typename Rule::template State<T, D>;
  static constexpr bool needs_master = !std::is_same_v<T, A>;

  // decay_filter(name, rank) decides which parameters get the rule's weight decay; by default
  // matrices of linear layers do, norms, biases and embeddings do not.
  Optimizer(Rule rule, std::vector<NamedParameter<T, D>> params,
            bool (*decay_filter)(const std::string&, int) = &decays_by_default)
      : rule_(rule), params_(std::move(params)) {
    entries_.reserve(params_.size());
    for (auto& p : params_) {
      FATHOM_CHECK(p.var.requires_grad(),
                   "optimizer: parameter " << p.name << " does not require a gradient");
      Entry e{State(p.var.shape()), Tensor<A, D>(), 0.0};
      if constexpr (needs_master) e.master = p.var.value().template cast<A>();
      e.weight_decay = decay_filter(p.name, p.var.dim()) ? weight_decay_of(rule_) : 0.0;
      entries_.push_back(std::move(e));
    }
  }

  const Rule& rule() const { return rule_; }
  const std::vector<NamedParameter<T, D>>& parameters() const { return params_; }
  std::int64_t step_count() const { return step_; }

  // One update with learning rate lr. Gradients are multiplied by grad_scale (or by the float at
  // grad_scale_device, read on the device) first; parameters without a gradient are skipped.
  void step(double lr, double grad_scale = 1.0, const float* grad_scale_device = nullptr) {
    ++step_;
    std::vector<kernels::OptimizerSlot<T>> slots;
    slots.reserve(params_.size());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto& var = params_[i].var;
      if (!var.has_grad()) continue;
      kernels::OptimizerSlot<T> s;
      s.param = var.mutable_value().data();
      s.grad = var.grad().data();
      s.master = needs_master ? entries_[i].master.data() : nullptr;
      s.n = var.numel();
      s.weight_decay = entries_[i].weight_decay;
      entries_[i].state.bind(s);
      slots.push_back(s);
    }
    rule_.template apply<T, D>(slots, lr, step_, grad_scale, grad_scale_device);
  }

  void zero_grad() {
    for (auto& p : params_) p.var.zero_grad();
  }

  // The state as named tensors: "<param>.<state>" and, for mixed precision, "<param>.master".
  std::vector<std::pair<std::string, Tensor<A, D>*>> named_state() {
    std::vector<std::pair<std::string, Tensor<A, D>*>> out;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      for (auto& [key, t] : entries_[i].state.tensors())
        out.emplace_back(params_[i].name + "." + key, t);
      if constexpr (needs_master)
        out.emplace_back(params_[i].name + ".master", &entries_[i].master);
    }
    return out;
  }

  void set_step_count(std::int64_t s) { step_ = s; }

  // Re-reads the master weights from the parameters (after loading a checkpoint of the model only).
  void sync_master_from_params() {
    if constexpr (needs_master)
      for (std::size_t i = 0; i < params_.size(); ++i)
        entries_[i].master = params_[i].var.value().template cast<A>();
  }

 private:
  struct Entry {
    State state;
    Tensor<A, D> master;
    double weight_decay;
  };
  static double weight_decay_of(const Rule& r) { return r.weight_decay; }

  Rule rule_;
  std::vector<NamedParameter<T, D>> params_;
  std::vector<Entry> entries_;
  std::int64_t step_ = 0;
};

}  // namespace fathom::optim
