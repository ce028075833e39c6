// MixLN: blocks l <= floor(L * Num / Den) use the Early policy, the others the Late one; MixLN<> is
// Post-LN for l <= floor(L/4), so the switch to Pre-LN happens at block floor(L/4) + 1.
#include "fathom/policy/mix_ln.hpp"

#include "fathom/policy/lns.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "nn/model_testing.hpp"
#include "policy/fake_context.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("MixLN: Early policy up to floor(L/4), Late after", "[policy]") {
  for (int depth : {1, 3, 4, 5, 8, 12, 24}) {
    const int last_post = depth / 4;
    CHECK(policy::MixLN<>::last_early_layer(depth) == last_post);
    for (int layer = 1; layer <= depth; ++layer) {
      INFO("L = " << depth << ", l = " << layer);
      testing::FakeSublayer fake(61);
      auto s = fake.context(layer, depth);
      auto y = policy::MixLN<>{}.apply(s);
      // Post-LN: N(x + F(x)) = 10 * 4x; Pre-LN: x + F(N(x)) = 31x.
      testing::require_close(y.value().to_vector(), fake.x_times(layer <= last_post ? 40.0 : 31.0));
    }
  }
}

TEST_CASE("MixLN: other policies and ratios compose", "[policy]") {
  using Half = policy::MixLN<policy::PostLN, policy::LNS, 1, 2>;
  STATIC_REQUIRE(Half::norms_per_sublayer == 1);
  STATIC_REQUIRE(policy::MixLN<policy::PreLN, policy::SandwichLN>::norms_per_sublayer == 2);
  CHECK(Half::last_early_layer(6) == 3);
  testing::FakeSublayer fake(62);
  auto s = fake.context(4, 6);  // past the switch: LNS with l = 4
  auto y = Half{}.apply(s);
  testing::require_close(y.value().to_vector(), fake.x_times(1.0 + 30.0 / 2.0));
  // Without a final norm in Late, the mix has none.
  policy::MixLN<policy::PreLN, policy::PostLN> no_final{.late =
                                                            policy::PostLN{.final_norm = false}};
  CHECK_FALSE(policy::PolicyTraits<decltype(no_final)>::has_final_norm(no_final));
}

TEMPLATE_TEST_CASE("MixLN model: the stream is normalized by blocks 1..floor(L/4) only",
                   "[policy][nn]", nn::Llama, nn::Gpt2) {
  for (int depth : {3, 4, 5, 8}) {
    auto c = testing::tiny_config(TestType::kind, depth);
    nn::DecoderLM<TestType, policy::MixLN<>, double> model(c);
    model.init(11);
    testing::zero_branch_outputs(model);
    testing::Recorder<double> rec;
    model.forward(testing::random_tokens(2, 4, c.vocab, 5), rec.options());
    for (int i = 0; i < depth; ++i) {
      const int l = i + 1;
      INFO("L = " << depth << ", block l = " << l << " (switch expected at " << depth / 4 + 1
                  << ")");
      const auto& blk = model.blocks()[static_cast<std::size_t>(i)];
      const auto& x = rec.at(i, nn::Site::block_input);
      const auto& y = rec.at(i, nn::Site::block_output);
      if (l <= depth / 4) {
        auto want = blk.norm(policy::Sublayer::mlp, 0)
                        .forward(blk.norm(policy::Sublayer::attention, 0).forward(x));
        CHECK(testing::identical(y.value(), want.value()));
        CHECK_FALSE(testing::identical(y.value(), x.value()));
      } else {
        CHECK(testing::identical(y.value(), x.value()));
      }
    }
  }
}
