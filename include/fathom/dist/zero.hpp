// ZeRO-1: the optimizer state (fp32 master weights, Adam moments) sharded over the ranks. Each rank
// steps only its shard of every gradient bucket (GradReducer in reduce_scatter mode gives it the
// summed gradients of that shard), then the updated weights are all-gathered. The update of each
// element is the unsharded optimizer's, so the results are equal bit for bit.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fathom/dist/buckets.hpp"
#include "fathom/kernels/reduce.hpp"
#include "fathom/optim/param_group.hpp"
#include "fathom/optim/rules.hpp"
#if defined(__CUDACC__)
#include "fathom/kernels/cuda/reduce.cuh"
#endif

namespace fathom::dist {

// ShardedOptimizer<Rule, T, D>: what optim::Optimizer<Rule, T, D> does, with this rank holding
// the state of its shard only (about 1 / world of it). Built over the same parameters, in the same
// order, as the GradReducer (Mode::reduce_scatter) whose plan it shares.
template <class Rule, class T, DeviceTag D>
class ShardedOptimizer {
 public:
  using A = accum_t<T>;
  using State = typename Rule::template State<T, D>;
  static constexpr bool needs_master = !std::is_same_v<T, A>;

  ShardedOptimizer(Rule rule, std::vector<optim::NamedParameter<T, D>> params,
                   GradReducer<T, D>& reducer,
                   bool (*decay_filter)(const std::string&, int) = &optim::decays_by_default)
      : rule_(rule),
        params_(std::move(params)),
        reducer_(&reducer),
        plan_(reducer.plan()),
        state_(Shape{std::max<std::int64_t>(plan_.shard_numel(), 1)}) {
    FATHOM_CHECK((reducer.mode() == GradReducer<T, D>::Mode::reduce_scatter),
                 "ShardedOptimizer: the GradReducer must reduce-scatter (Mode::reduce_scatter)");
    FATHOM_CHECK(plan_.where.size() == params_.size(),
                 "ShardedOptimizer: " << params_.size() << " parameters, the reducer has "
                                      << plan_.where.size());
    rank_ = reducer.communicator().rank();
    if constexpr (needs_master)
      master_ = Tensor<A, D>::zeros(Shape{std::max<std::int64_t>(plan_.shard_numel(), 1)});
    for (const auto& p : params_)
      decay_.push_back(decay_filter(p.name, p.var.dim()) ? rule_.weight_decay : 0.0);
    // This rank's pieces: the part of each parameter that falls in its shard of the bucket.
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
      const auto& bucket = plan_.buckets[b];
      const std::int64_t lo = rank_ * bucket.shard, hi = lo + bucket.shard;
      for (const auto& e : bucket.entries) {
        const std::int64_t a = std::max(lo, e.offset), z = std::min(hi, e.offset + e.numel);
        if (a < z) pieces_.push_back({b, e.param, a, z - a, plan_.shard_offset(b) + (a - lo)});
      }
    }
    sync_from_parameters();
  }

  const Rule& rule() const { return rule_; }
  std::int64_t step_count() const { return step_; }
  void set_step_count(std::int64_t s) { step_ = s; }
  // Elements of optimizer state this rank holds (per state tensor).
  std::int64_t shard_numel() const { return plan_.shard_numel(); }

  // Reads the master weights from the parameters: after loading weights into them.
  void sync_from_parameters() {
    if constexpr (needs_master)
      for (const auto& pc : pieces_)
        device_cast(D{}, master_.data() + pc.shard_at, param_data(pc), pc.n);
  }

  // The L2 norm of the whole (reduced) gradient: this rank's shard summed, then summed over ranks.
  double global_grad_norm() {
    const Tensor<T, D>& g = reducer_->shard_gradients();
    kernels::SumSquaresParams<T> p;
    p.tensors.push_back({g.data(), g.numel()});
    auto total =
        Tensor<A, D>::from_vector(Shape{1}, {static_cast<A>(kernels::sum_squares(D{}, p))});
    all_reduce(reducer_->communicator(), total);
    return std::sqrt(static_cast<double>(total.item()));
  }

  // One update of this rank's shard with learning rate lr, gradients multiplied by grad_scale,
  // then every rank's updated weights gathered into the parameters (through the reducer's bucket
  // buffers, which are free between the reduce-scatter and the next backward).
  void step(double lr, double grad_scale = 1.0) {
    ++step_;
    const Tensor<T, D>& g = reducer_->shard_gradients();
    std::vector<kernels::OptimizerSlot<T>> slots;
    slots.reserve(pieces_.size());
    for (const auto& pc : pieces_) {
      kernels::OptimizerSlot<T> s;
      state_.bind(s);
      s.param = param_data(pc);
      s.grad = g.data() + pc.shard_at;
      s.master = needs_master ? master_.data() + pc.shard_at : nullptr;
      if (s.state0) s.state0 += pc.shard_at;  // the state is element-wise: the piece's part of it
      if (s.state1) s.state1 += pc.shard_at;
      s.n = pc.n;
      s.weight_decay = decay_[pc.param];
      slots.push_back(s);
    }
    rule_.template apply<T, D>(slots, lr, step_, grad_scale, nullptr);
    for (const auto& pc : pieces_)
      DeviceMemory<D>::copy(reducer_->bucket(pc.bucket).data() + pc.at, param_data(pc),
                            static_cast<std::size_t>(pc.n) * sizeof(T));
    Communicator& comm = reducer_->communicator();
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
      const auto& bucket = plan_.buckets[b];
      if (bucket.shard == 0) continue;
      T* w = reducer_->bucket(b).data();
      comm.all_gather(w + rank_ * bucket.shard, w, static_cast<std::size_t>(bucket.shard),
                      data_type_of<T>());
    }
    comm.wait();
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const auto& loc = plan_.where[k];
      const auto& e = plan_.buckets[loc.bucket].entries[loc.entry];
      if (e.numel > 0)
        DeviceMemory<D>::copy(params_[k].var.mutable_value().data(),
                              reducer_->bucket(loc.bucket).data() + e.offset,
                              static_cast<std::size_t>(e.numel) * sizeof(T));
    }
  }

  // The names optim::Optimizer<Rule, T, D>::named_state() gives, in its order: "<param>.<state>"
  // and, for mixed precision, "<param>.master".
  std::vector<std::string> state_names() const {
    std::vector<std::string> out;
    State probe(Shape{1});
    for (const auto& p : params_) {
      for (auto& [key, t] : probe.tensors()) out.push_back(p.name + "." + key);
      if constexpr (needs_master) out.push_back(p.name + ".master");
    }
    return out;
  }

  // The whole state as optim::Optimizer::named_state() would hold it (full tensors, each
  // parameter's shape), assembled on every rank from all shards: for checkpoints.
  std::vector<std::pair<std::string, Tensor<A, D>>> gather_state() {
    Communicator& comm = reducer_->communicator();
    std::map<std::string, Tensor<A, D>> by_name;
    for (auto& [key, shard] : shard_tensors()) {
      for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
        const auto& bucket = plan_.buckets[b];
        Tensor<A, D> full = Tensor<A, D>::zeros(Shape{std::max<std::int64_t>(bucket.padded(), 1)});
        if (bucket.shard > 0)
          comm.all_gather(shard->data() + plan_.shard_offset(b), full.data(),
                          static_cast<std::size_t>(bucket.shard), data_type_of<A>());
        comm.synchronize();
        for (const auto& e : bucket.entries) {
          Tensor<A, D> t(params_[e.param].var.shape());
          if (e.numel > 0)
            DeviceMemory<D>::copy(t.data(), full.data() + e.offset,
                                  static_cast<std::size_t>(e.numel) * sizeof(A));
          by_name.emplace(params_[e.param].name + "." + key, std::move(t));
        }
      }
    }
    std::vector<std::pair<std::string, Tensor<A, D>>> out;
    for (const auto& name : state_names()) out.emplace_back(name, by_name.at(name));
    return out;
  }

  // Takes this rank's shard of the state from full tensors, one per state_names() entry (in that
  // order), as gather_state() gives them or a checkpoint of the unsharded optimizer holds them.
  void load_state(const std::function<Tensor<A, D>(const std::string& name)>& full_state) {
    for (auto& [key, shard] : shard_tensors()) {
      for (std::size_t k = 0; k < params_.size(); ++k) {
        const std::string name = params_[k].name + "." + key;
        Tensor<A, D> t = full_state(name).contiguous();
        FATHOM_CHECK(t.numel() == params_[k].var.numel(),
                     "optimizer state '" << name << "' has shape " << t.shape() << ", expected "
                                         << params_[k].var.shape());
        for (const auto& pc : pieces_)
          if (pc.param == k) {
            const auto& loc = plan_.where[k];
            const std::int64_t within = pc.at - plan_.buckets[loc.bucket].entries[loc.entry].offset;
            DeviceMemory<D>::copy(shard->data() + pc.shard_at, t.data() + within,
                                  static_cast<std::size_t>(pc.n) * sizeof(A));
          }
      }
    }
  }

 private:
  struct Piece {
    std::size_t bucket = 0;
    std::size_t param = 0;
    std::int64_t at = 0;  // first element in the bucket
    std::int64_t n = 0;
    std::int64_t shard_at = 0;  // first element in this rank's flat shard
  };

  // Where a piece's elements are in its parameter's value.
  T* param_data(const Piece& pc) {
    const auto& loc = plan_.where[pc.param];
    return params_[pc.param].var.mutable_value().data() +
           (pc.at - plan_.buckets[loc.bucket].entries[loc.entry].offset);
  }

  // The flat shard tensors under their state keys ("exp_avg", ..., and "master" when mixed).
  std::vector<std::pair<std::string, Tensor<A, D>*>> shard_tensors() {
    auto out = state_.tensors();
    if constexpr (needs_master) out.emplace_back("master", &master_);
    return out;
  }

  Rule rule_;
  std::vector<optim::NamedParameter<T, D>> params_;
  GradReducer<T, D>* reducer_;
  BucketPlan plan_;
  State state_;
  Tensor<A, D> master_;  // this rank's shard of the fp32 weights (mixed precision)
  std::vector<double> decay_;
  std::vector<Piece> pieces_;
  int rank_ = 0;
  std::int64_t step_ = 0;
};

}  // namespace fathom::dist
