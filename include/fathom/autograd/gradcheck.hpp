// gradcheck: compares the gradients an op's backward computes with central finite differences,
// in double. One checker serves every op; tolerances are per call.
#pragma once

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "fathom/autograd/var.hpp"

namespace fathom::autograd {

struct GradcheckOptions {
  double step = 1e-6;  // finite-difference step h
  double rtol = 1e-5;  // |analytic - numeric| <= atol + rtol * |numeric|
  double atol = 1e-7;
  std::uint64_t seed = 1234;  // for the random projection of the output
  // > 0: compare at most this many elements of each input, spread evenly over it (whole models,
  // where every element would cost two forwards). 0: every element.
  std::int64_t max_elements_per_input = 0;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0.0;
  double max_rel_error = 0.0;
  std::string first_failure;  // "input 1, element 7: analytic 0.1 vs numeric 0.2"
  int checked = 0;            // number of elements compared
};

// f maps the inputs to one output Var (any shape). The scalar checked is L = sum(f(x) * r) with a
// fixed random r, so every output element contributes. Inputs must require gradients; they are
// perturbed in place and restored.
inline GradcheckResult gradcheck(
    const std::function<Var<double>(const std::vector<Var<double>>&)>& f,
    std::vector<Var<double>> inputs, const GradcheckOptions& options = {}) {
  GradcheckResult result;
  for (auto& in : inputs) {
    FATHOM_CHECK(in.requires_grad(), "gradcheck: every input must require a gradient");
    FATHOM_CHECK(in.value().is_contiguous(), "gradcheck: inputs must be contiguous");
    in.zero_grad(true);
  }
  clear_tape();
  Var<double> out = f(inputs);
  auto r = Tensor<double>::randn(out.shape(), options.seed);
  auto rv = r.to_vector();
  auto loss_of = [&](const Var<double>& o) {
    auto ov = o.value().to_vector();
    double s = 0.0;
    for (std::size_t i = 0; i < ov.size(); ++i) s += ov[i] * rv[i];
    return s;
  };
  backward(out, r);

  for (std::size_t k = 0; k < inputs.size(); ++k) {
    auto& in = inputs[k];
    std::vector<double> analytic =
        in.has_grad() ? in.grad().to_vector()
                      : std::vector<double>(static_cast<std::size_t>(in.numel()), 0.0);
    double* x = in.mutable_value().data();
    const std::int64_t n = in.numel();
    const std::int64_t m =
        options.max_elements_per_input > 0 ? std::min(n, options.max_elements_per_input) : n;
    for (std::int64_t j = 0; j < m; ++j) {
      const std::int64_t i = j * n / m;
      double saved = x[i];
      double lp, lm;
      {
        NoGradGuard no_grad;
        x[i] = saved + options.step;
        lp = loss_of(f(inputs));
        x[i] = saved - options.step;
        lm = loss_of(f(inputs));
      }
      x[i] = saved;
      double numeric = (lp - lm) / (2.0 * options.step);
      double a = analytic[static_cast<std::size_t>(i)];
      double err = std::abs(a - numeric);
      double rel = err / std::max(std::abs(numeric), 1e-300);
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (std::abs(numeric) > options.atol)
        result.max_rel_error = std::max(result.max_rel_error, rel);
      ++result.checked;
      bool bad = !(err <= options.atol + options.rtol * std::abs(numeric));  // NaN fails too
      if (bad && result.ok) {
        result.ok = false;
        std::ostringstream msg;
        msg << "input " << k << " (" << in.shape() << "), element " << i << ": analytic " << a
            << " vs numeric " << numeric;
        result.first_failure = msg.str();
      }
    }
  }
  return result;
}

}  // namespace fathom::autograd
