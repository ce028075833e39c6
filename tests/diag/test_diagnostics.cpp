// Diagnostics on tiny hand-built cases with known answers.
#include <cmath>

#include "fathom/diag/diagnostics.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "nn/small_model.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("diag: variance and angular distance of known arrays", "[diag]") {
  CHECK_THAT(diag::variance(std::vector<double>{1, 2, 3, 4}), WithinAbs(1.25, 1e-15));
  CHECK_THAT(diag::variance(std::vector<float>{5, 5, 5}), WithinAbs(0.0, 1e-15));

  auto a = Tensor<double>::randn({6, 8}, 3).to_vector();
  std::vector<double> neg(a.size()), scaled(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) neg[i] = -a[i], scaled[i] = 3.5 * a[i];
  CHECK_THAT(diag::angular_distance(a, a, 8), WithinAbs(0.0, 1e-7));
  CHECK_THAT(diag::angular_distance(a, scaled, 8),
             WithinAbs(0.0, 1e-7));  // the angle ignores scale
  CHECK_THAT(diag::angular_distance(a, neg, 8), WithinAbs(1.0, 1e-7));
  std::vector<double> e1 = {1, 0, 0, 1}, e2 = {0, 1, 1, 0};  // two rows, each pair orthogonal
  CHECK_THAT(diag::angular_distance(e1, e2, 2), WithinAbs(0.5, 1e-12));
  CHECK_THROWS_AS(diag::angular_distance(e1, std::vector<double>{1, 2}, 2), Error);
}

namespace {

nn::ModelConfig tiny_config() { return test::small_model(4, 16, 24, 16); }

std::vector<data::Batch> batches_of(std::uint64_t seed, int n) {
  std::vector<data::Batch> out;
  for (int k = 0; k < n; ++k) {
    data::Batch b;
    b.batch = 2;
    b.seq_len = 8;
    for (int i = 0; i < 16; ++i) {
      b.inputs.push_back(static_cast<std::int32_t>(
          rng::uniform(seed, static_cast<std::uint64_t>(k * 100 + i)) * 257));
      b.targets.push_back(static_cast<std::int32_t>(
          rng::uniform(seed + 1, static_cast<std::uint64_t>(k * 100 + i)) * 257));
    }
    out.push_back(b);
  }
  return out;
}

}  // namespace

TEST_CASE("diag: a block whose branches output zero changes nothing when removed", "[diag]") {
  nn::DecoderModel<nn::Llama, policy::PreLN, double, Cpu> model(tiny_config(), policy::PreLN{});
  model.init(11);
  const int dead = 2;
  for (auto& p : model.parameters()) {
    const bool out_proj = p.name.find(".o_proj.") != std::string::npos ||
                          p.name.find(".down_proj.") != std::string::npos;
    if (p.block() == dead && out_proj) p.var.mutable_value().zero_();
  }
  auto d = diag::run_diagnostics<double, Cpu>(model, batches_of(5, 2));
  REQUIRE(d.layers == 4);
  REQUIRE(d.loss_increase.size() == 4);
  CHECK(d.loss_increase[dead] == 0.0);
  CHECK(d.loss_without_block[dead] == d.loss);
  for (int i = 0; i < 4; ++i)
    if (i != dead) CHECK(std::abs(d.loss_increase[static_cast<std::size_t>(i)]) > 1e-9);
  // Its input and output are the same stream: distance 0 from x_dead to x_{dead+1}.
  CHECK_THAT(d.angular_distance[dead][1], WithinAbs(0.0, 1e-7));
  CHECK(d.angular_distance[1][1] > 1e-4);
  CHECK(d.attn_branch_variance[dead] == 0.0);
  CHECK(d.mlp_branch_variance[dead] == 0.0);
  CHECK(d.mlp_branch_variance[0] > 0.0);
  // Its parameters' gradients flow (the zeroed projections still get gradients).
  CHECK(d.grad_norm[dead] > 0.0);
  for (std::size_t l = 0; l < d.angular_distance.size(); ++l)
    CHECK_THAT(d.angular_distance[l][0], WithinAbs(0.0, 1e-7));
  CHECK(d.block_output_variance[dead] == d.input_variance[dead + 1]);
}

TEST_CASE("diag: block output variances equal the variance of the observed stream", "[diag]") {
  nn::DecoderModel<nn::Llama, policy::LNS, double, Cpu> model(tiny_config(), policy::LNS{});
  model.init(3);
  auto bs = batches_of(9, 1);
  auto x = Tensor<std::int32_t>::from_vector(Shape{2, 8}, bs[0].inputs);
  auto y = Tensor<std::int32_t>::from_vector(Shape{2, 8}, bs[0].targets);
  auto v = diag::block_output_variance<double, Cpu>(model, x, y);
  auto d = diag::run_diagnostics<double, Cpu>(model, bs);
  REQUIRE(v.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(v[i] > 0.0);
    CHECK_THAT(v[i], WithinRel(d.block_output_variance[i], 1e-12));
    CHECK_THAT(d.input_variance[i + 1], WithinRel(v[i], 1e-12));
  }
  CHECK(d.to_json().at("angular_distance").size() == 5);
}

TEST_CASE("diag: the gradient norms are measured and no gradient is left behind", "[diag]") {
  // Training releases the gradients after each step and writes them fresh; diagnostics between two
  // steps must leave the model so, not with zeroed buffers the next step would add into.
  nn::DecoderModel<nn::Llama, policy::PreLN, double, Cpu> model(tiny_config(), policy::PreLN{});
  model.init(4);
  auto d = diag::run_diagnostics<double, Cpu>(model, batches_of(10, 2));
  REQUIRE(d.grad_norm.size() == 4);
  for (double g : d.grad_norm) CHECK(g > 0.0);
  for (const auto& p : model.parameters()) {
    INFO(p.name);
    CHECK_FALSE(p.var.has_grad());
  }
}
