// Update rules: SGD, Adam and AdamW. A rule holds its hyperparameters; the per-tensor state lives
// in its nested State, made for each parameter by Optimizer (optimizer.hpp), so one rule type
// serves every element type and device.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "fathom/kernels/optimizer.hpp"
#if defined(__CUDACC__)
// the Cuda overloads, visible where the rules call them
#include "fathom/kernels/cuda/optimizer.cuh"
#endif
#include "fathom/tensor/tensor.hpp"

namespace fathom::optim {

// AdamW (Loshchilov & Hutter): decoupled weight decay. Defaults follow PyTorch's AdamW.
struct AdamW {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  bool decoupled = true;
  static constexpr const char* name = "adamw";

  template <class T, class D>
  struct State {
    Tensor<accum_t<T>, D> exp_avg, exp_avg_sq;
    explicit State(const Shape& s)
        : exp_avg(Tensor<accum_t<T>, D>::zeros(s)), exp_avg_sq(Tensor<accum_t<T>, D>::zeros(s)) {}
    std::vector<std::pair<std::string, Tensor<accum_t<T>, D>*>> tensors() {
      return {{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}};
    }
    void bind(kernels::OptimizerSlot<T>& slot) {
      slot.state0 = exp_avg.data();
      slot.state1 = exp_avg_sq.data();
    }
  };

  template <class T, class D>
  void apply(std::vector<kernels::OptimizerSlot<T>>& slots, double lr, std::int64_t step,
             double grad_scale, const float* grad_scale_device) const {
    kernels::AdamParams<T> p;
    p.slots = slots.data();
    p.count = static_cast<int>(slots.size());
    p.hyper.lr = lr;
    p.hyper.beta1 = beta1;
    p.hyper.beta2 = beta2;
    p.hyper.eps = eps;
    p.hyper.decoupled = decoupled;
    p.hyper.step = step;
    p.hyper.grad_scale = grad_scale;
    p.hyper.grad_scale_device = grad_scale_device;
    kernels::adam_step(D{}, p);
  }
};

// Adam (Kingma & Ba) with L2 weight decay added to the gradient. The paper's optimizer (decay 0).
struct Adam : AdamW {
  Adam() {
    weight_decay = 0.0;
    decoupled = false;
  }
  static constexpr const char* name = "adam";
};

// SGD with optional momentum (heavy ball or Nesterov) and L2 weight decay, as PyTorch's SGD.
struct Sgd {
  double momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  static constexpr const char* name = "sgd";

  template <class T, class D>
  struct State {
    Tensor<accum_t<T>, D> momentum_buffer;  // undefined without momentum
    explicit State(const Shape& s) : momentum_buffer(Tensor<accum_t<T>, D>::zeros(s)) {}
    std::vector<std::pair<std::string, Tensor<accum_t<T>, D>*>> tensors() {
      return {{"momentum_buffer", &momentum_buffer}};
    }
    void bind(kernels::OptimizerSlot<T>& slot) { slot.state0 = momentum_buffer.data(); }
  };

  template <class T, class D>
  void apply(std::vector<kernels::OptimizerSlot<T>>& slots, double lr, std::int64_t step,
             double grad_scale, const float* grad_scale_device) const {
    kernels::SgdParams<T> p;
    p.slots = slots.data();
    p.count = static_cast<int>(slots.size());
    p.hyper.lr = lr;
    p.hyper.momentum = momentum;
    p.hyper.dampening = dampening;
    p.hyper.nesterov = nesterov;
    p.hyper.first_step = step == 1;
    p.hyper.grad_scale = grad_scale;
    p.hyper.grad_scale_device = grad_scale_device;
    if (momentum == 0.0)
      for (auto& s : slots) s.state0 = nullptr;
    kernels::sgd_step(D{}, p);
  }
};

}  // namespace fathom::optim
