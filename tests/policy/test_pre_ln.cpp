// PreLN computes x + F(N(x)) with one unscaled norm; with every branch zeroed a Pre-LN model
// leaves the residual stream unchanged through every block.
#include "fathom/policy/pre_ln.hpp"

#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("PreLN: x + F(N(x))", "[policy]") {
  for (int layer : {1, 3, 7}) {
    testing::FakeSublayer fake(21);
    auto s = fake.context(layer, 7);
    auto y = policy::PreLN{}.apply(s);
    testing::require_close(y.value().to_vector(), fake.x_times(1.0 + 3.0 * 10.0));  // x + 3 * 10 x
    REQUIRE(fake.norm_calls.size() == 1);
    CHECK(fake.norm_calls[0].slot == 0);
    CHECK(fake.norm_calls[0].scale == 1.0);
    CHECK(fake.branch_calls == 1);
  }
}

TEST_CASE("PreLN model: zeroed branches leave the stream unchanged", "[policy][nn]") {
  for (auto arch : {nn::ArchKind::llama, nn::ArchKind::gpt2}) {
    INFO("arch " << nn::to_string(arch));
    auto c = testing::tiny_config(arch, 3);
    auto run = [&](auto model) {
      model.init(5);
      testing::zero_branch_outputs(model);
      testing::Recorder<double> rec;
      model.forward(testing::random_tokens(2, 4, c.vocab, 1), rec.options());
      for (int i = 0; i < c.layers; ++i) {
        INFO("block " << i);
        CHECK(testing::identical(rec.at(i, nn::Site::block_output).value(),
                                 rec.at(i, nn::Site::block_input).value()));
        CHECK(testing::max_abs_diff(
                  rec.at(i, nn::Site::attn_branch).value(),
                  Tensor<double>::zeros(rec.at(i, nn::Site::attn_branch).shape())) == 0.0);
      }
    };
    if (arch == nn::ArchKind::llama)
      run(nn::DecoderLM<nn::Llama, policy::PreLN, double>(c));
    else
      run(nn::DecoderLM<nn::Gpt2, policy::PreLN, double>(c));
  }
}
