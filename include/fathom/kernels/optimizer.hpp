// Optimizer update kernels: SGD (momentum, Nesterov) and Adam/AdamW, over a list of parameter
// tensors in one call (one launch on CUDA). State (moments, fp32 master weights) is in accum_t<T>.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// One parameter tensor and its optimizer state.
template <class T>
struct OptimizerSlot {
  T* param = nullptr;            // (n) the weights the model computes with
  const T* grad = nullptr;       // (n)
  accum_t<T>* master = nullptr;  // (n) full-precision weights when T is narrower, else null
  accum_t<T>* state0 = nullptr;  // (n) Adam: first moment m; SGD: momentum buffer (or null)
  accum_t<T>* state1 = nullptr;  // (n) Adam: second moment v
  std::int64_t n = 0;
  double weight_decay = 0.0;  // per tensor: parameter groups set 0 on norms/biases/embeddings
};

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool decoupled = true;  // AdamW: decay the weights directly; Adam: add decay to the gradient
  std::int64_t step = 1;  // 1-based, for bias correction
  // Gradients are multiplied by grad_scale (clipping); on CUDA it may instead be read on the device
  // from grad_scale_device, so clipping needs no host synchronization.
  double grad_scale = 1.0;
  const float* grad_scale_device = nullptr;
};

struct SgdHyper {
  double lr = 1e-2, momentum = 0.0, dampening = 0.0;
  bool nesterov = false;
  bool first_step = true;  // the momentum buffer starts as the first gradient (PyTorch semantics)
  double grad_scale = 1.0;
  const float* grad_scale_device = nullptr;
};

template <class T>
struct AdamParams {
  OptimizerSlot<T>* slots = nullptr;  // host array of slots
  int count = 0;
  AdamHyper hyper;
};

template <class T>
struct SgdParams {
  OptimizerSlot<T>* slots = nullptr;
  int count = 0;
  SgdHyper hyper;
};

// A gradient scale (clipping) given on the host, or, on CUDA, read on the device.
template <class A>
struct GradScale {
  A host = 1;
  const float* device = nullptr;
  FATHOM_HOST_DEVICE A value() const { return device ? static_cast<A>(*device) : host; }
};

// One step of Adam(W) in A, made once per step from AdamHyper and applied to every element by the
// CPU reference and the CUDA kernel alike.
template <class A>
struct AdamUpdate {
  A lr, beta1, beta2, eps;
  A bias1, bias2;  // 1 - beta^step: the bias corrections
  bool decoupled;
  GradScale<A> grad_scale;

  explicit AdamUpdate(const AdamHyper& h)
      : lr(static_cast<A>(h.lr)),
        beta1(static_cast<A>(h.beta1)),
        beta2(static_cast<A>(h.beta2)),
        eps(static_cast<A>(h.eps)),
        bias1(static_cast<A>(1.0 - std::pow(h.beta1, static_cast<double>(h.step)))),
        bias2(static_cast<A>(1.0 - std::pow(h.beta2, static_cast<double>(h.step)))),
        decoupled(h.decoupled),
        grad_scale{static_cast<A>(h.grad_scale), h.grad_scale_device} {}

  // The new value of a weight w with scaled gradient g and decay wd; m and v are its moments, read
  // and updated (has_state is always true: Adam keeps both moments).
  FATHOM_HOST_DEVICE A operator()(A w, A g, A wd, A& m, A& v, bool /*has_state*/) const {
    if (!decoupled) g += wd * w;
    m = beta1 * m + (A(1) - beta1) * g;
    v = beta2 * v + (A(1) - beta2) * g * g;
    const A mhat = m / bias1, vhat = v / bias2;
    if (decoupled) w -= lr * wd * w;
    return w - lr * mhat / (sqrt(vhat) + eps);
  }
};

// One step of SGD with optional momentum and Nesterov, weight decay added to the gradient
// (PyTorch's SGD), made once per step from SgdHyper.
template <class A>
struct SgdUpdate {
  A lr, momentum, dampening;
  bool nesterov, first_step;
  GradScale<A> grad_scale;

  explicit SgdUpdate(const SgdHyper& h)
      : lr(static_cast<A>(h.lr)),
        momentum(static_cast<A>(h.momentum)),
        dampening(static_cast<A>(h.dampening)),
        nesterov(h.nesterov),
        first_step(h.first_step),
        grad_scale{static_cast<A>(h.grad_scale), h.grad_scale_device} {}

  // The new value of a weight w with scaled gradient g and decay wd; b is its momentum buffer's
  // value, read and updated when has_state (the tensor has a buffer); unused is SGD's empty second
  // slot.
  FATHOM_HOST_DEVICE A operator()(A w, A g, A wd, A& b, A& /*unused*/, bool has_state) const {
    g += wd * w;
    if (has_state) {
      b = first_step ? g : momentum * b + (A(1) - dampening) * g;
      g = nesterov ? g + momentum * b : b;
    }
    return w - lr * g;
  }
};

// Element i of t through `update` (an AdamUpdate or SgdUpdate) with its gradient times `scale`:
// the weight comes from the master copy when there is one, and goes back to both copies; the
// optimizer state (the tensor's state0 and state1 where not null) is read and written back.
template <class T, class Update>
FATHOM_HOST_DEVICE inline void update_element(const OptimizerSlot<T>& t, std::int64_t i,
                                              const Update& update, accum_t<T> scale) {
  using A = accum_t<T>;
  const A w = t.master ? t.master[i] : scalar_cast<A>(t.param[i]);
  A s0 = t.state0 ? t.state0[i] : A(0), s1 = t.state1 ? t.state1[i] : A(0);
  const A updated = update(w, scalar_cast<A>(t.grad[i]) * scale, static_cast<A>(t.weight_decay), s0,
                           s1, t.state0 != nullptr);
  if (t.state0) t.state0[i] = s0;
  if (t.state1) t.state1[i] = s1;
  if (t.master) t.master[i] = updated;
  t.param[i] = scalar_cast<T>(updated);
}

template <class T, class Update>
void update_slots(const OptimizerSlot<T>* slots, int count, const Update& update) {
  const auto scale = update.grad_scale.value();
  for (int s = 0; s < count; ++s) {
    for (std::int64_t i = 0; i < slots[s].n; ++i) update_element(slots[s], i, update, scale);
  }
}

template <class T>
void adam_step(Cpu, const AdamParams<T>& p) {
  update_slots(p.slots, p.count, AdamUpdate<accum_t<T>>(p.hyper));
}

template <class T>
void sgd_step(Cpu, const SgdParams<T>& p) {
  update_slots(p.slots, p.count, SgdUpdate<accum_t<T>>(p.hyper));
}

}  // namespace fathom::kernels
