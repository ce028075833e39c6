// MLP (include/fathom/nn/mlp.hpp) of a Llama block: one GEMM against the stacked gate and up
// weights and swiglu_stacked give the values and gradients of the two separate projections and
// swiglu; the parameters keep their names, shapes and init roles and accumulate over backwards;
// fp8 runs the stacked projection as one linear_fp8.
#include "fathom/nn/mlp.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "fathom/autograd/ops/reduce.hpp"
#include "nn/layer_testing.hpp"
#include "support/catch.hpp"

using namespace fathom;
namespace ag = fathom::autograd;

namespace {

nn::ModelConfig mlp_config(std::int64_t C, std::int64_t F, bool bias) {
  nn::ModelConfig c;
  c.arch = nn::ArchKind::llama;
  c.layers = 2;
  c.d_model = C;
  c.heads = 1;
  c.d_ff = F;
  c.vocab = 7;
  c.max_seq = 16;
  c.bias = bias;
  return c;
}

// The composition before the stacked projection: two linears, swiglu, the down projection.
template <class T>
Var<T, Cpu> two_projections(const nn::MLP<T, Cpu>& mlp, const Var<T, Cpu>& x) {
  auto project = [&](const nn::Linear<T, Cpu>& l, const Var<T, Cpu>& in) {
    return l.has_bias() ? ag::linear(in, l.weight(), l.bias()) : ag::linear(in, l.weight());
  };
  return project(mlp.down_proj(),
                 ag::swiglu(project(mlp.gate_proj(), x), project(mlp.up_proj(), x)));
}

void check_mlp_close(const std::string& what, const std::vector<double>& got,
                     const std::vector<double>& want, double tol) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  double worst = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  CAPTURE(worst, scale);
  CHECK(worst <= tol * std::max(1.0, scale));
  CHECK(scale > 0.0);  // something flowed
}

}  // namespace

TEMPLATE_TEST_CASE("Llama MLP: one stacked GEMM and swiglu_stacked equal the two projections",
                   "[nn][mlp]", float, double) {
  using T = TestType;
  // Stacking the weights changes only how the GEMMs block their sums: float agrees to rounding.
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  const auto [C, F, B, Tn] = GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
      {{6, 5, 2, 3}, {4, 7, 1, 1}, {8, 16, 3, 5}, {12, 20, 2, 4}}));
  const bool bias = GENERATE(false, true);
  CAPTURE(C, F, B, Tn, bias);
  const auto c = mlp_config(C, F, bias);
  const auto stacked = testing::run_layer<T, nn::MLP>(
      c, B, Tn, 60, [](const auto& mlp, const auto&, const auto& x) { return mlp.forward(x); });
  const auto old = testing::run_layer<T, nn::MLP>(
      c, B, Tn, 60,
      [](const auto& mlp, const auto&, const auto& x) { return two_projections<T>(mlp, x); });
  check_mlp_close("y", stacked.y, old.y, tol);
  REQUIRE(stacked.grads.size() == old.grads.size());
  REQUIRE(stacked.grads.size() == (bias ? 7u : 4u));  // x, three weights, three biases
  for (const auto& [name, g] : old.grads) {
    REQUIRE(stacked.grads.count(name) == 1);
    check_mlp_close(name, stacked.grads.at(name), g, tol);
  }
}

TEST_CASE("Llama MLP keeps three named projections with their init roles", "[nn][mlp]") {
  const auto c = mlp_config(6, 10, true);
  std::vector<nn::NamedParameter<float, Cpu>> registry;
  nn::MLP<float, Cpu> mlp(c, nn::Llama::block(2, 1), 3, registry);
  const std::string pre = "model.layers.2.mlp.";
  const std::vector<std::string> want = {pre + "gate_proj.weight", pre + "gate_proj.bias",
                                         pre + "up_proj.weight",   pre + "up_proj.bias",
                                         pre + "down_proj.weight", pre + "down_proj.bias"};
  const std::vector<Shape> shapes = {Shape{10, 6}, Shape{10},    Shape{10, 6},
                                     Shape{10},    Shape{6, 10}, Shape{6}};
  REQUIRE(registry.size() == want.size());
  const policy::ParamRole roles[] = {policy::ParamRole::mlp_gate, policy::ParamRole::mlp_up,
                                     policy::ParamRole::mlp_down};
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i]);
    CHECK(registry[i].name == want[i]);
    CHECK(registry[i].var.shape() == shapes[i]);
    REQUIRE(registry[i].parts.size() == 1);
    CHECK(registry[i].parts[0].role == (i % 2 == 0 ? roles[i / 2] : policy::ParamRole::bias));
    CHECK(registry[i].parts[0].layer == 3);
  }
  CHECK(mlp.gate_proj().weight().slot() == registry[0].var.slot());
  CHECK(mlp.up_proj().weight().slot() == registry[2].var.slot());
}

TEST_CASE("Llama MLP accumulates its weight gradients over two backwards", "[nn][mlp]") {
  testing::check_gradients_add_up<nn::MLP>(mlp_config(8, 6, true), 60);
}

TEST_CASE("Llama MLP under fp8 runs one linear_fp8 against the stacked weights", "[nn][mlp][fp8]") {
  const auto c = mlp_config(16, 24, false);
  ag::clear_tape();
  std::vector<nn::NamedParameter<float, Cpu>> registry;
  nn::MLP<float, Cpu> mlp(c, nn::Llama::block(0, 1), 1, registry);
  testing::randomize_layer(registry, 60);
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{2, 6, 16}, 10), true);
  ag::NoGradGuard no_grad;
  const auto native = mlp.forward(x).value().to_vector();
  mlp.set_linear_precision(nn::LinearPrecision::fp8);
  const auto fp8 = mlp.forward(x).value().to_vector();
  auto w = ag::concat_rows<float, Cpu>({mlp.gate_proj().weight(), mlp.up_proj().weight()});
  const auto want =
      ag::linear_fp8(ag::swiglu_stacked(ag::linear_fp8(x, w)), mlp.down_proj().weight())
          .value()
          .to_vector();
  CHECK(fp8 == want);
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < fp8.size(); ++i) {
    diff += (fp8[i] - native[i]) * (fp8[i] - native[i]);
    norm += native[i] * native[i];
  }
  CHECK(diff > 0.0);                                // the fp8 route ran
  CHECK(std::sqrt(diff) <= 0.1 * std::sqrt(norm));  // and is close
}
