// Gradient buckets for data-parallel training: BucketPlan groups the parameters into flat buffers
// of about 50 MiB in reverse order of registration (the order their gradients become final in the
// backward pass), and GradReducer reduces each bucket over the ranks as soon as its gradients are
// final, while the rest of the backward runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "fathom/autograd/var.hpp"
#include "fathom/dist/communicator.hpp"
#include "fathom/kernels/elementwise.hpp"
#if defined(__CUDACC__)
#include "fathom/kernels/cuda/elementwise.cuh"
#endif

namespace fathom::dist {

// Where each parameter lives in the flat buckets. Bucket b holds its parameters back to back
// (numel() elements), then zeros up to padded() = shard() * world elements, so that it splits into
// world equal shards: rank r owns elements [r * shard(), (r + 1) * shard()) of every bucket, which
// is how ZeRO-1 handles parameter counts that do not divide by the number of ranks.
struct BucketPlan {
  struct Entry {
    std::size_t param = 0;    // index in the registration order
    std::int64_t offset = 0;  // first element in the bucket
    std::int64_t numel = 0;
  };
  struct Bucket {
    std::vector<Entry> entries;  // reverse registration order
    std::int64_t numel = 0;      // elements of parameters
    std::int64_t shard = 0;      // elements per rank: ceil(numel / world)
    std::int64_t padded() const { return shard * world; }
    int world = 1;
  };
  struct Location {
    std::size_t bucket = 0;
    std::size_t entry = 0;
  };

  std::vector<Bucket> buckets;
  std::vector<Location> where;  // for each parameter, in registration order
  int world = 1;

  // Parameters with `numels` (registration order) of `element_bytes` each, in buckets that are
  // closed once they reach `bucket_bytes` (a parameter larger than that gets a bucket of its own).
  static BucketPlan make(const std::vector<std::int64_t>& numels, std::size_t element_bytes,
                         std::size_t bucket_bytes, int world) {
    FATHOM_CHECK(world >= 1, "bucket plan: expected at least 1 rank, got " << world);
    FATHOM_CHECK(element_bytes >= 1 && bucket_bytes >= 1,
                 "bucket plan: expected a positive bucket size, got " << bucket_bytes << " bytes");
    BucketPlan plan;
    plan.world = world;
    plan.where.resize(numels.size());
    Bucket current;
    current.world = world;
    auto close = [&] {
      if (current.entries.empty()) return;
      current.shard = (current.numel + world - 1) / world;
      plan.buckets.push_back(std::move(current));
      current = Bucket{};
      current.world = world;
    };
    for (std::size_t k = numels.size(); k-- > 0;) {
      FATHOM_CHECK(numels[k] >= 0,
                   "bucket plan: parameter " << k << " has " << numels[k] << " elements");
      plan.where[k] = {plan.buckets.size(), current.entries.size()};
      current.entries.push_back({k, current.numel, numels[k]});
      current.numel += numels[k];
      if (static_cast<std::size_t>(current.numel) * element_bytes >= bucket_bytes) close();
    }
    close();
    return plan;
  }

  // Total elements of the shards rank r owns, and where bucket b's shard starts among them.
  std::int64_t shard_numel() const {
    std::int64_t n = 0;
    for (const auto& b : buckets) n += b.shard;
    return n;
  }
  std::int64_t shard_offset(std::size_t bucket) const {
    std::int64_t n = 0;
    for (std::size_t b = 0; b < bucket; ++b) n += buckets[b].shard;
    return n;
  }
};

// GradReducer: sums the gradients of every rank's parameters, bucket by bucket, starting each
// bucket's collective from the backward pass as soon as its last gradient is final.
//
// Per optimizer step, with grad_accum micro-batches:
//   reducer.begin_micro_batch(last);   // before each micro-batch's forward (last: the final one)
//   ... forward, autograd::backward(loss, seed) ...
//   reducer.finish();                  // after the last backward: the reduced gradients are ready
// Each micro-batch's gradients are computed in fresh buffers and added into the buckets in
// micro-batch order (so 2 ranks with batch B give the same sums as 1 rank with 2 micro-batches of
// B); after the last one, the buckets are summed over ranks in bucket order. Scale the loss by
// 1 / (world * grad_accum) (gradient_seed) to average.
//
// Mode::all_reduce: after finish() every parameter's gradient is a read-only view of its bucket.
// Mode::reduce_scatter (ZeRO-1): after finish() shard_gradients() holds this rank's shard of every
// bucket (BucketPlan's layout), and parameters have no gradient.
template <class T, DeviceTag D>
class GradReducer {
 public:
  enum class Mode { all_reduce, reduce_scatter };
  static constexpr std::size_t default_bucket_bytes = std::size_t{50} << 20;

  GradReducer(Communicator& comm, std::vector<Var<T, D>> params, Mode mode = Mode::all_reduce,
              std::size_t bucket_bytes = default_bucket_bytes)
      : comm_(&comm),
        params_(std::move(params)),
        mode_(mode),
        state_(std::make_shared<HookState>()) {
    std::vector<std::int64_t> numels;
    for (const auto& p : params_) {
      FATHOM_CHECK(p.defined() && p.requires_grad() && p.is_leaf(),
                   "GradReducer: every parameter must be a leaf that requires a gradient");
      numels.push_back(p.numel());
    }
    plan_ = BucketPlan::make(numels, sizeof(T), bucket_bytes, comm.world_size());
    for (const auto& b : plan_.buckets) {
      buffers_.push_back(Tensor<T, D>::zeros(Shape{b.padded()}));
      pending_.push_back(0);
    }
    if (mode_ == Mode::reduce_scatter)
      shard_grads_ = Tensor<T, D>::zeros(Shape{std::max<std::int64_t>(plan_.shard_numel(), 1)});
    fired_.assign(params_.size(), false);
    // The hooks hold a weak reference, so a parameter that outlives the reducer calls nothing.
    for (std::size_t k = 0; k < params_.size(); ++k) {
      std::weak_ptr<HookState> weak = state_;
      params_[k].set_on_final([weak, k] {
        if (auto s = weak.lock()) s->owner->on_final(k);
      });
    }
    state_->owner = this;
  }
  ~GradReducer() {
    for (auto& p : params_) p.set_on_final({});
  }
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  const BucketPlan& plan() const { return plan_; }
  Mode mode() const { return mode_; }
  Communicator& communicator() const { return *comm_; }
  // The backward seed that makes the reduced gradient the mean over ranks and micro-batches.
  double gradient_seed(std::int64_t grad_accum) const {
    return 1.0 / (static_cast<double>(comm_->world_size()) * static_cast<double>(grad_accum));
  }

  // Before a micro-batch's forward. Releases the parameters' gradients (the next backward writes
  // fresh buffers); `last` says whether its backward completes the step.
  void begin_micro_batch(bool last) {
    FATHOM_CHECK(!in_micro_batch_,
                 "GradReducer: begin_micro_batch twice without a backward in between "
                 "(end_micro_batch or finish)");
    in_micro_batch_ = true;
    last_ = last;
    std::fill(fired_.begin(), fired_.end(), false);
    for (auto& p : params_) p.zero_grad(true);
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b)
      pending_[b] = static_cast<std::int64_t>(plan_.buckets[b].entries.size());
    next_launch_ = 0;
    if (last) launched_in_backward_ = 0;
  }

  // After the last micro-batch's backward: adds gradients that no hook delivered (parameters the
  // forward did not use count as zero), launches the buckets not launched yet, and makes fathom's
  // stream wait for them. Then the reduced gradients are where Mode says.
  void finish() {
    FATHOM_CHECK(in_micro_batch_ && last_,
                 "GradReducer: finish() after a begin_micro_batch(true) and its backward");
    finishing_ = true;
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (!fired_[k]) on_final(k);
    finishing_ = false;
    in_micro_batch_ = false;
    micro_ = 0;
    comm_->wait();
    if (mode_ == Mode::all_reduce) {
      for (std::size_t k = 0; k < params_.size(); ++k) {
        const auto& loc = plan_.where[k];
        const auto& e = plan_.buckets[loc.bucket].entries[loc.entry];
        auto& slot = *params_[k].slot();
        slot.grad = buffers_[loc.bucket]
                        .slice(0, e.offset, e.offset + e.numel)
                        .reshape(shape_dims(params_[k].shape()));
        slot.borrowed = true;  // a view of the bucket: whoever writes to it gets a copy
      }
    }
  }

  // For gradient accumulation: after a micro-batch's backward that was not the last one.
  void end_micro_batch() {
    FATHOM_CHECK(in_micro_batch_ && !last_,
                 "GradReducer: end_micro_batch() after a begin_micro_batch(false) and its backward "
                 "(the last micro-batch ends with finish())");
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (!fired_[k]) on_final(k);
    in_micro_batch_ = false;
    ++micro_;
  }

  // Mode::reduce_scatter: this rank's shard of every bucket's sum, BucketPlan::shard_offset(b) on.
  const Tensor<T, D>& shard_gradients() const { return shard_grads_; }
  // The flat (padded) buffer of bucket b. Free between finish() and the next begin_micro_batch() in
  // Mode::reduce_scatter (ZeRO-1 gathers the updated weights through it).
  const Tensor<T, D>& bucket(std::size_t b) const { return buffers_[b]; }
  Tensor<T, D>& bucket(std::size_t b) { return buffers_[b]; }
  // Launches every bucket's collective now, as finish() would, over whatever the buckets hold
  // (their sums are then meaningless): benchmarks time the collectives alone with it.
  void launch_all() {
    FATHOM_CHECK(!in_micro_batch_, "GradReducer: launch_all() inside a micro-batch");
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b) launch(b);
    comm_->wait();
  }
  // How many buckets were launched from inside a backward pass (not by finish()) in the last step.
  std::size_t launched_during_backward() const { return launched_in_backward_; }

 private:
  struct HookState {
    GradReducer* owner = nullptr;
  };
  static std::vector<std::int64_t> shape_dims(const Shape& s) {
    std::vector<std::int64_t> d;
    for (int i = 0; i < s.rank(); ++i) d.push_back(s[i]);
    return d;
  }

  // Parameter k's gradient is final in this micro-batch: add it into its bucket, release it, and
  // launch every bucket that is complete, in bucket order.
  void on_final(std::size_t k) {
    if (!in_micro_batch_ || fired_[k]) return;
    fired_[k] = true;
    const auto& loc = plan_.where[k];
    const auto& e = plan_.buckets[loc.bucket].entries[loc.entry];
    T* dst = buffers_[loc.bucket].data() + e.offset;
    auto& p = params_[k];
    if (p.has_grad()) {
      Tensor<T, D> g = p.grad().contiguous();
      if (micro_ == 0)
        DeviceMemory<D>::copy(dst, g.data(), static_cast<std::size_t>(e.numel) * sizeof(T));
      else
        kernels::axpy(D{}, kernels::AxpyParams<T>{g.data(), dst, e.numel, 1.0});
      p.zero_grad(true);
    } else if (micro_ == 0 && e.numel > 0) {
      DeviceMemory<D>::zero(dst, static_cast<std::size_t>(e.numel) * sizeof(T));
    }
    if (!last_) return;
    --pending_[loc.bucket];
    const std::size_t first = next_launch_;
    while (next_launch_ < plan_.buckets.size() && pending_[next_launch_] == 0)
      launch(next_launch_++);
    if (next_launch_ > first && !finishing_) launched_in_backward_ += next_launch_ - first;
  }

  void launch(std::size_t b) {
    const auto& bucket = plan_.buckets[b];
    T* buf = buffers_[b].data();
    if (mode_ == Mode::all_reduce) {
      if (bucket.numel > 0)
        comm_->all_reduce(buf, buf, static_cast<std::size_t>(bucket.numel), data_type_of<T>(),
                          ReduceOp::sum);
    } else if (bucket.shard > 0) {
      comm_->reduce_scatter(buf, shard_grads_.data() + plan_.shard_offset(b),
                            static_cast<std::size_t>(bucket.shard), data_type_of<T>(),
                            ReduceOp::sum);
    }
  }

  Communicator* comm_;
  std::vector<Var<T, D>> params_;
  Mode mode_;
  BucketPlan plan_;
  std::vector<Tensor<T, D>> buffers_;
  Tensor<T, D> shard_grads_;
  std::vector<std::int64_t> pending_;
  std::vector<bool> fired_;
  std::size_t next_launch_ = 0;
  std::int64_t micro_ = 0;
  bool in_micro_batch_ = false, last_ = false, finishing_ = false;
  std::size_t launched_in_backward_ = 0;
  std::shared_ptr<HookState> state_;
};

}  // namespace fathom::dist
