// Attention (include/fathom/nn/attention.hpp) of a Llama block: one GEMM against the stacked q, k
// and v weights, rope_qkv in place and attention_qkv give the values and gradients of the three
// separate projections, rope on q and k, and attention on three tensors; the parameters keep
// their names, shapes and init roles; fp8 runs the stacked projection as one linear_fp8.
#include "fathom/nn/attention.hpp"

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

nn::ModelConfig llama_config(int heads, int head_dim, bool bias, double theta) {
  nn::ModelConfig c;
  c.arch = nn::ArchKind::llama;
  c.layers = 2;
  c.d_model = heads * head_dim;
  c.heads = heads;
  c.d_ff = 8;
  c.vocab = 7;
  c.max_seq = 16;
  c.bias = bias;
  c.rope_theta = theta;
  return c;
}

// Today's composition before the stacked projection: three linears, rope on q and on k, attention
// on three tensors, the output projection.
template <class T>
Var<T, Cpu> three_projections(const nn::ModelConfig& c,
                              const std::vector<nn::NamedParameter<T, Cpu>>& registry,
                              const Var<T, Cpu>& x) {
  auto param = [&](const std::string& name) -> const Var<T, Cpu>& {
    for (const auto& p : registry)
      if (p.name == name) return p.var;
    FAIL("no parameter " << name);
    return registry.front().var;
  };
  const std::string pre = "model.layers.0.self_attn.";
  auto project = [&](const std::string& m) {
    return c.bias ? ag::linear(x, param(pre + m + ".weight"), param(pre + m + ".bias"))
                  : ag::linear(x, param(pre + m + ".weight"));
  };
  auto q = ag::rope(project("q_proj"), c.heads, c.rope_theta);
  auto k = ag::rope(project("k_proj"), c.heads, c.rope_theta);
  auto v = project("v_proj");
  auto o = ag::attention(q, k, v, c.heads, /*causal=*/true);
  return c.bias ? ag::linear(o, param(pre + "o_proj.weight"), param(pre + "o_proj.bias"))
                : ag::linear(o, param(pre + "o_proj.weight"));
}

template <class T>
void check_close(const std::string& what, const std::vector<double>& got,
                 const std::vector<double>& want, double tol, bool nonzero = true) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  double worst = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  CAPTURE(worst, scale);
  CHECK(worst <= tol * std::max(1.0, scale));
  if (nonzero) CHECK(scale > 0.0);  // something flowed
}

}  // namespace

TEMPLATE_TEST_CASE("Llama attention: one stacked GEMM and rope_qkv equal the three projections",
                   "[nn][attention]", float, double) {
  using T = TestType;
  // Stacking the weights changes only how the GEMM blocks its sums: float agrees to rounding.
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  const auto [heads, head_dim, B, Tn] = GENERATE(table<int, int, std::int64_t, std::int64_t>(
      {{3, 6, 2, 5}, {1, 2, 1, 2}, {5, 4, 3, 7}, {2, 16, 1, 9}}));
  const bool bias = GENERATE(false, true);
  const double theta = GENERATE(10000.0, 500000.0);
  CAPTURE(heads, head_dim, B, Tn, bias, theta);
  const auto c = llama_config(heads, head_dim, bias, theta);
  const auto fused = testing::run_layer<T, nn::Attention>(
      c, B, Tn, 40, [](const auto& attn, const auto&, const auto& x) { return attn.forward(x); });
  const auto old = testing::run_layer<T, nn::Attention>(
      c, B, Tn, 40, [&](const auto&, const auto& registry, const auto& x) {
        return three_projections<T>(c, registry, x);
      });
  check_close<T>("y", fused.y, old.y, tol);
  REQUIRE(fused.grads.size() == old.grads.size());
  REQUIRE(fused.grads.size() == (bias ? 9u : 5u));  // x, four weights, four biases
  for (const auto& [name, g] : old.grads) {
    REQUIRE(fused.grads.count(name) == 1);
    // The k bias adds one vector to every key a query sees: softmax ignores it, its gradient is 0.
    check_close<T>(name, fused.grads.at(name), g, tol, !name.ends_with("k_proj.bias"));
  }
}

TEST_CASE("Llama attention keeps three named (C, C) projections with their init roles",
          "[nn][attention]") {
  const auto c = llama_config(3, 4, true, 10000.0);
  std::vector<nn::NamedParameter<float, Cpu>> registry;
  nn::Attention<float, Cpu> attn(c, nn::Llama::block(2, 1), 3, registry);
  const std::string pre = "model.layers.2.self_attn.";
  const std::vector<std::string> want = {
      pre + "q_proj.weight", pre + "q_proj.bias", pre + "k_proj.weight", pre + "k_proj.bias",
      pre + "v_proj.weight", pre + "v_proj.bias", pre + "o_proj.weight", pre + "o_proj.bias"};
  REQUIRE(registry.size() == want.size());
  const policy::ParamRole roles[] = {policy::ParamRole::q, policy::ParamRole::k,
                                     policy::ParamRole::v, policy::ParamRole::attn_out};
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i]);
    CHECK(registry[i].name == want[i]);
    CHECK(registry[i].var.shape() == (i % 2 == 0 ? Shape{12, 12} : Shape{12}));
    REQUIRE(registry[i].parts.size() == 1);
    CHECK(registry[i].parts[0].role == (i % 2 == 0 ? roles[i / 2] : policy::ParamRole::bias));
    CHECK(registry[i].parts[0].layer == 3);
  }
  CHECK(attn.q_proj().weight().slot() == registry[0].var.slot());
}

TEST_CASE("Llama attention accumulates its weight gradients over two backwards",
          "[nn][attention]") {
  testing::check_gradients_add_up<nn::Attention>(llama_config(2, 4, false, 10000.0), 40);
}

TEST_CASE("Llama attention under fp8 runs one linear_fp8 against the stacked weights",
          "[nn][attention][fp8]") {
  const auto c = llama_config(2, 8, false, 10000.0);
  ag::clear_tape();
  std::vector<nn::NamedParameter<float, Cpu>> registry;
  nn::Attention<float, Cpu> attn(c, nn::Llama::block(0, 1), 1, registry);
  testing::randomize_layer(registry, 40);
  Var<float, Cpu> x(Tensor<float, Cpu>::randn(Shape{2, 6, 16}, 10), true);
  ag::NoGradGuard no_grad;
  const auto native = attn.forward(x).value().to_vector();
  attn.set_linear_precision(nn::LinearPrecision::fp8);
  const auto fp8 = attn.forward(x).value().to_vector();
  const auto& a = attn;
  auto w =
      ag::concat_rows<float, Cpu>({a.q_proj().weight(), a.k_proj().weight(), a.v_proj().weight()});
  auto qkv = ag::rope_qkv(ag::linear_fp8(x, w), c.heads, c.rope_theta);
  const auto want =
      ag::linear_fp8(ag::attention_qkv(qkv, c.heads), a.out_proj().weight()).value().to_vector();
  CHECK(fp8 == want);
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < fp8.size(); ++i) {
    diff += (fp8[i] - native[i]) * (fp8[i] - native[i]);
    norm += native[i] * native[i];
  }
  CHECK(diff > 0.0);                                // the fp8 route ran
  CHECK(std::sqrt(diff) <= 0.1 * std::sqrt(norm));  // and is close
}
