// Global-norm clipping (include/fathom/optim/clip.hpp): the norm over every gradient, the factor,
// and the device-side factor that lets a CUDA step run without waiting for the host.
#include "fathom/optim/clip.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "fathom/optim/param_group.hpp"
#include "support/catch.hpp"

using namespace fathom;
using fathom::optim::NamedParameter;

namespace {

// Three parameters with random gradients of the given spread; the second gets none.
std::vector<NamedParameter<double, Cpu>> params_with_grads(double spread) {
  std::vector<NamedParameter<double, Cpu>> ps;
  const Shape shapes[] = {Shape{4, 3}, Shape{5}, Shape{7}};
  for (int k = 0; k < 3; ++k) {
    Var<double> v(Tensor<double>::randn(shapes[k], 30 + k), true);
    if (k != 1) v.grad_accumulator().copy_(Tensor<double>::randn(shapes[k], 40 + k, spread));
    ps.push_back({"p" + std::to_string(k), v});
  }
  return ps;
}

}  // namespace

TEST_CASE("global_grad_norm is the L2 norm over every gradient; no gradient counts as zero",
          "[optim][clip]") {
  auto ps = params_with_grads(0.7);
  double want = 0;
  for (const auto& p : ps)
    if (p.var.has_grad())
      for (double g : p.var.grad().to_vector()) want += g * g;
  CHECK_THAT((optim::global_grad_norm<double, Cpu>(ps)), WithinRel(std::sqrt(want), 1e-14));
}

TEST_CASE("clip_factor scales down only norms above max_norm", "[optim][clip]") {
  CHECK(optim::clip_factor(0.5, 1.0) == 1.0);
  CHECK(optim::clip_factor(1.0, 1.0) == 1.0);
  CHECK_THAT(optim::clip_factor(4.0, 1.0), WithinRel(1.0 / (4.0 + 1e-6), 1e-15));
  CHECK(optim::clip_factor(4.0, 0.0) == 1.0);  // clipping off
  CHECK(optim::clip_factor(std::numeric_limits<double>::quiet_NaN(), 1.0) == 1.0);
}

TEST_CASE("clip_factor_on_device writes the factor clip_factor computes from the norm",
          "[optim][clip]") {
  const double spread = GENERATE(0.01, 0.3, 2.0);
  const double max_norm = GENERATE(0.0, 1.0);
  INFO("spread " << spread << " max_norm " << max_norm);
  auto ps = params_with_grads(spread);
  const double want = optim::clip_factor(optim::global_grad_norm<double, Cpu>(ps), max_norm);
  Tensor<float> factor(Shape{});
  optim::clip_factor_on_device<double, Cpu>(ps, max_norm, factor);
  CHECK_THAT(static_cast<double>(factor.item()), WithinRel(want, 1e-6));
  if (max_norm > 0 && spread == 2.0) CHECK(factor.item() < 0.5f);  // the case that clips
}

TEST_CASE("clip_factor_on_device needs a one-element factor", "[optim][clip]") {
  auto ps = params_with_grads(1.0);
  Tensor<float> wrong(Shape{2});
  CHECK_THROWS_WITH((optim::clip_factor_on_device<double, Cpu>(ps, 1.0, wrong)),
                    HasSubstring("one-element factor"));
}
