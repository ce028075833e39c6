// Var<T, D>: a tensor that takes part in reverse-mode differentiation, the tape that records the
// backward of every op, backward(), and the no-grad scope.
//
// How it works. A Var holds its value (a Tensor) and a shared GradSlot where its gradient
// accumulates. Each differentiable op computes its value and, when gradients are enabled and some
// input requires them, pushes one closure on the thread's tape. The closure holds the slots of
// the inputs (to accumulate into), the tensors the backward needs (and nothing else), and the
// output's slot. backward(loss) seeds d loss / d loss = 1 and runs the tape in
// reverse; each closure is destroyed once run, releasing what it saved. Because input gradients
// accumulate (+=), a Var used by several ops (residual fan-in) needs no special case.
//
// Documented behaviours:
// - backward() consumes the tape: a second backward() of the same loss throws fathom::Error
//   (run the forward again). Gradients of leaves accumulate across backward() calls until
//   zero_grad(), which is how gradient accumulation over micro-batches works.
// - Gradients of intermediate Vars are freed once used, unless retain_grad() was called.
// - Under NoGradGuard nothing is recorded and results do not require gradients.
// - A leaf may carry an on_final callback (set_on_final): backward() calls it once, as soon as
//   no node left on the tape can add to that leaf's gradient (data-parallel training starts a
//   bucket's all-reduce from it while the rest of the backward runs). A leaf the forward did not
//   use is not called back.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::autograd {

// Where a backward writes one input's gradient: data, and whether the kernel must add to what is
// there (accumulate) or may overwrite it (a buffer just allocated, whose contents are garbage).
template <class T>
struct GradWrite {
  T* data = nullptr;
  bool accumulate = true;
  explicit operator bool() const { return data != nullptr; }
};

namespace detail {

struct Tape {
  std::vector<std::function<void()>> nodes;  // backward closures, in forward order
  // on_final callbacks of the leaves the recorded nodes use, each with the index of the first
  // node that uses its leaf (no node below that index touches the leaf's gradient).
  std::vector<std::pair<std::size_t, std::function<void()>>> final_hooks;
  bool grad_enabled = true;
  std::uint64_t epoch = 0;  // incremented by every backward(): marks which graph a Var belongs to
};

inline Tape& tape() {
  thread_local Tape t;
  return t;
}

template <class T, class D>
struct GradSlot {
  Tensor<T, D> grad;  // undefined until something is written into it
  Shape shape;
  bool requires_grad = false;
  bool is_leaf = true;
  bool retain = false;
  // grad is a buffer lent by another slot (see lend): read it freely, but copy before writing.
  bool borrowed = false;
  std::uint64_t epoch = 0;
  std::string name;
  // Leaves only: called by backward() once this gradient is final (see set_on_final), and the
  // tape epoch in which the callback was last queued (it is queued once per recorded graph).
  std::function<void()> on_final;
  std::uint64_t on_final_epoch = ~std::uint64_t{0};

  // The gradient buffer to add into (+=), zero-filled when first needed.
  Tensor<T, D>& accumulator() {
    if (!grad.defined()) grad = Tensor<T, D>::zeros(shape);
    own();
    return grad;
  }

  // For kernels that can either overwrite or add: the first write to a slot gets a buffer that is
  // not zero-filled and accumulate == false, so no memset and no read of zeros; later writes add.
  GradWrite<T> write_target() {
    if (!grad.defined()) {
      grad = Tensor<T, D>(shape);
      return {grad.data(), false};
    }
    own();
    return {grad.data(), true};
  }

  // Passes g on as this slot's gradient. When nothing is there yet, g itself becomes the gradient,
  // shared without a copy (an add or a reshape passes its output's gradient to its inputs this
  // way); returns false when a gradient is already there, and the caller adds g into accumulator().
  bool lend(const Tensor<T, D>& g) {
    if (grad.defined()) return false;
    grad = g;
    borrowed = true;
    return true;
  }

  // Makes a lent gradient this slot's own before it is written: a copy while another slot (or
  // anything else) still holds the buffer, the buffer itself once this slot is its only holder
  // (the usual case for a residual stream: the add that lent it has run and dropped its own
  // reference, so the norm's backward adds into it in place, with no copy).
  void own() {
    if (!borrowed) return;
    if (grad.storage_use_count() != 1) grad = grad.clone();
    borrowed = false;
  }
};

}  // namespace detail

inline bool grad_enabled() { return detail::tape().grad_enabled; }

// While alive, ops record nothing (evaluation, optimizer updates, diagnostics).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(detail::tape().grad_enabled) { detail::tape().grad_enabled = false; }
  ~NoGradGuard() { detail::tape().grad_enabled = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Drops everything recorded since the last backward() (e.g. after a forward that is not needed).
inline void clear_tape() {
  auto& t = detail::tape();
  t.nodes.clear();
  t.final_hooks.clear();
  ++t.epoch;
}

// Number of closures currently recorded (for tests and diagnostics).
inline std::size_t tape_size() { return detail::tape().nodes.size(); }

template <class T, DeviceTag D = Cpu>
class Var {
 public:
  using value_type = T;
  using device_type = D;
  using Slot = detail::GradSlot<T, D>;

  Var() = default;
  // A leaf. Parameters are leaves with requires_grad = true.
  explicit Var(Tensor<T, D> value, bool requires_grad = false, std::string name = {})
      : value_(std::move(value)), slot_(std::make_shared<Slot>()) {
    slot_->shape = value_.shape();
    slot_->requires_grad = requires_grad;
    slot_->name = std::move(name);
    slot_->epoch = detail::tape().epoch;
  }

  bool defined() const { return slot_ != nullptr; }
  const Tensor<T, D>& value() const { return value_; }
  // Mutable access for in-place updates of leaves (optimizers, initialization).
  Tensor<T, D>& mutable_value() { return value_; }
  const Shape& shape() const { return value_.shape(); }
  std::int64_t size(int d) const { return value_.size(d); }
  std::int64_t numel() const { return value_.numel(); }
  int dim() const { return value_.dim(); }

  bool requires_grad() const { return slot_ && slot_->requires_grad; }
  bool is_leaf() const { return slot_->is_leaf; }
  const std::string& name() const { return slot_->name; }
  void set_name(std::string n) { slot_->name = std::move(n); }

  // The accumulated gradient; undefined (defined() == false) if nothing reached this Var.
  const Tensor<T, D>& grad() const { return slot_->grad; }
  bool has_grad() const { return slot_->grad.defined(); }
  Tensor<T, D>& grad_accumulator() { return slot_->accumulator(); }
  // Zero the gradient in place (keeps the buffer) or, with release, free it.
  void zero_grad(bool release = false) {
    if (release) {
      slot_->grad = Tensor<T, D>();
    } else if (slot_->borrowed) {
      slot_->grad = Tensor<T, D>::zeros(slot_->shape);  // never zero a buffer another slot lent
    } else if (slot_->grad.defined()) {
      slot_->grad.zero_();
    }
    slot_->borrowed = false;
  }
  // A leaf's callback for the moment its gradient is final in a backward() (empty: none).
  void set_on_final(std::function<void()> fn) {
    FATHOM_CHECK(slot_ && slot_->is_leaf, "set_on_final: only a leaf Var has a final gradient");
    slot_->on_final = std::move(fn);
    slot_->on_final_epoch = ~std::uint64_t{0};
  }

  // Keep this intermediate Var's gradient after backward (diagnostics).
  Var& retain_grad() {
    slot_->retain = true;
    return *this;
  }

  // The same value, cut from the graph.
  Var detach() const { return Var(value_, false); }

  const std::shared_ptr<Slot>& slot() const { return slot_; }

  // Builds the result of a differentiable op. `backward` is called as backward(out_grad) with the
  // output's gradient; it must accumulate (+=) into the inputs' accumulators. It is recorded only
  // when gradients are enabled and `needs_grad` is true (some input requires a gradient).
  // A backward invocable as backward(out_grad, out_slot) gets the output's slot as well, so that it
  // may take the gradient buffer over and reuse it in place (moving out_slot.grad away) when the
  // slot neither retains it nor borrowed it and nothing else shares it (autograd::rope_qkv).
  template <class Backward>
  static Var make_result(Tensor<T, D> value, bool needs_grad, Backward&& backward) {
    Var out(std::move(value), false);
    auto& tape = detail::tape();
    if (!needs_grad || !tape.grad_enabled) return out;
    out.slot_->requires_grad = true;
    out.slot_->is_leaf = false;
    // The node owns its output's slot (small: a gradient and a shape, never the value), so the
    // slot outlives the consumers that accumulate into it.
    tape.nodes.emplace_back([slot = out.slot_, fn = std::forward<Backward>(backward)]() mutable {
      if (!slot->grad.defined()) return;  // nothing flowed back to this output
      if constexpr (std::is_invocable_v<decltype(fn)&, const Tensor<T, D>&, Slot&>) {
        fn(static_cast<const Tensor<T, D>&>(slot->grad), *slot);
      } else {
        fn(static_cast<const Tensor<T, D>&>(slot->grad));
      }
      if (!slot->retain) {
        slot->grad = Tensor<T, D>();
        slot->borrowed = false;
      }
    });
    return out;
  }

 private:
  Tensor<T, D> value_;
  std::shared_ptr<Slot> slot_;
};

// True when any of the Vars requires a gradient.
template <class... Vs>
bool any_requires_grad(const Vs&... vs) {
  return (false || ... || vs.requires_grad());
}

// The input's gradient slot when it requires a gradient, else nullptr: what backward closures
// hold. A closure writes through slot->write_target() (kernels that can overwrite), slot->lend(g)
// (pass-through), or slot->accumulator() (+=).
// Ops call it before recording their node, so a leaf with an on_final callback is queued here with
// an index no larger than that of the first node that can write its gradient.
template <class T, class D>
std::shared_ptr<detail::GradSlot<T, D>> grad_target(const Var<T, D>& v) {
  if (!v.requires_grad()) return nullptr;
  const auto& slot = v.slot();
  if (slot->on_final) {
    auto& tape = detail::tape();
    if (tape.grad_enabled && slot->on_final_epoch != tape.epoch) {
      slot->on_final_epoch = tape.epoch;
      tape.final_hooks.emplace_back(tape.nodes.size(), slot->on_final);
    }
  }
  return slot;
}

// Runs the tape backwards from `root`, seeding its gradient with `seed` (ones when omitted, which
// requires a single-element root).
template <class T, class D>
void backward(const Var<T, D>& root, Tensor<T, D> seed = Tensor<T, D>()) {
  auto& tape = detail::tape();
  FATHOM_CHECK(root.defined(), "backward: root Var is undefined");
  FATHOM_CHECK(root.requires_grad(),
               "backward: root does not require a gradient (no input of it requires one, or it "
               "was computed under NoGradGuard)");
  FATHOM_CHECK(root.is_leaf() || root.slot()->epoch == tape.epoch,
               "backward: the graph of this Var was already consumed by an earlier backward(); "
               "run the forward again");
  if (!seed.defined()) {
    FATHOM_CHECK(root.numel() == 1, "backward: a root of shape "
                                        << root.shape()
                                        << " needs an explicit seed gradient (only one-element "
                                           "roots default to 1)");
    seed = Tensor<T, D>::full(root.shape(), scalar_cast<T>(1.0));
  }
  FATHOM_CHECK(seed.shape() == root.shape(), "backward: seed shape " << seed.shape()
                                                                     << " differs from root shape "
                                                                     << root.shape());
  root.slot()->accumulator().copy_(seed);
  auto nodes = std::move(tape.nodes);
  tape.nodes.clear();
  auto hooks = std::move(tape.final_hooks);
  tape.final_hooks.clear();
  ++tape.epoch;
  // Hooks by first use, latest first: a hook runs once the node at its index has run.
  std::stable_sort(hooks.begin(), hooks.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::size_t next_hook = 0;
  auto run_hooks_from = [&](std::size_t index) {
    while (next_hook < hooks.size() && hooks[next_hook].first >= index) hooks[next_hook++].second();
  };
  while (!nodes.empty()) {
    auto node = std::move(nodes.back());
    nodes.pop_back();
    node();
    run_hooks_from(nodes.size());
  }
  run_hooks_from(0);
}

}  // namespace fathom::autograd

namespace fathom {
using autograd::Var;
}
