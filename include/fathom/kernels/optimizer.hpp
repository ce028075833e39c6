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
  T* param = nullptr;                  // (n) the weights the model computes with
  const T* grad = nullptr;             // (n)
  accum_t<T>* master = nullptr;        // (n) full-precision weights when T is narrower, else null
  accum_t<T>* state0 = nullptr;        // (n) Adam: first moment m; SGD: momentum buffer (or null)
  accum_t<T>* state1 = nullptr;        // (n) Adam: second moment v
  std::int64_t n = 0;
  double weight_decay = 0.0;           // per tensor: parameter groups set 0 on norms/biases/embeddings
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

// The per-element Adam(W) update, shared by the CPU reference and the CUDA kernel.
template <class A>
FATHOM_HOST_DEVICE inline A adam_update(A w, A g, A& m, A& v, A lr, A beta1, A beta2, A eps, A wd,
                                        bool decoupled, A bias1, A bias2) {
  if (!decoupled) g += wd * w;
  m = beta1 * m + (A(1) - beta1) * g;
  v = beta2 * v + (A(1) - beta2) * g * g;
  A mhat = m / bias1;
  A vhat = v / bias2;
  if (decoupled) w -= lr * wd * w;
  return w - lr * mhat / (sqrt(vhat) + eps);
}

template <class T>
void adam_step(Cpu, const AdamParams<T>& p) {
  using A = accum_t<T>;
  const auto& h = p.hyper;
  const A scale = static_cast<A>(h.grad_scale_device ? *h.grad_scale_device : h.grad_scale);
  const A bias1 = static_cast<A>(1.0 - std::pow(h.beta1, static_cast<double>(h.step)));
  const A bias2 = static_cast<A>(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
  for (int s = 0; s < p.count; ++s) {
    const auto& t = p.slots[s];
    for (std::int64_t i = 0; i < t.n; ++i) {
      A w = t.master ? t.master[i] : scalar_cast<A>(t.param[i]);
      A g = scalar_cast<A>(t.grad[i]) * scale;
      w = adam_update<A>(w, g, t.state0[i], t.state1[i], static_cast<A>(h.lr), static_cast<A>(h.beta1),
                         static_cast<A>(h.beta2), static_cast<A>(h.eps), static_cast<A>(t.weight_decay),
                         h.decoupled, bias1, bias2);
      if (t.master) t.master[i] = w;
      t.param[i] = scalar_cast<T>(w);
    }
  }
}

// SGD with optional momentum and Nesterov, weight decay added to the gradient (PyTorch's SGD).
template <class A>
FATHOM_HOST_DEVICE inline A sgd_update(A w, A g, A* buf, A lr, A momentum, A dampening, A wd,
                                       bool nesterov, bool first_step) {
  g += wd * w;
  if (buf) {
    A b = first_step ? g : momentum * *buf + (A(1) - dampening) * g;
    *buf = b;
    g = nesterov ? g + momentum * b : b;
  }
  return w - lr * g;
}

template <class T>
void sgd_step(Cpu, const SgdParams<T>& p) {
  using A = accum_t<T>;
  const auto& h = p.hyper;
  const A scale = static_cast<A>(h.grad_scale_device ? *h.grad_scale_device : h.grad_scale);
  for (int s = 0; s < p.count; ++s) {
    const auto& t = p.slots[s];
    for (std::int64_t i = 0; i < t.n; ++i) {
      A w = t.master ? t.master[i] : scalar_cast<A>(t.param[i]);
      A g = scalar_cast<A>(t.grad[i]) * scale;
      w = sgd_update<A>(w, g, t.state0 ? t.state0 + i : nullptr, static_cast<A>(h.lr),
                        static_cast<A>(h.momentum), static_cast<A>(h.dampening),
                        static_cast<A>(t.weight_decay), h.nesterov, h.first_step);
      if (t.master) t.master[i] = w;
      t.param[i] = scalar_cast<T>(w);
    }
  }
}

}  // namespace fathom::kernels
