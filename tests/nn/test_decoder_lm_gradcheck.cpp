// Gradients of a whole tiny model, every policy and both architectures, against central finite
// differences in double. Every parameter is checked, at up to 12 elements spread over it (every
// element of the norms); the hidden [gradcheck-full] cases check every element (about 3000 per
// model).
#include "fathom/nn/decoder_lm.hpp"

#include <algorithm>
#include <tuple>

#include "fathom/autograd/gradcheck.hpp"
#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "nn/model_testing.hpp"
#include "support/catch.hpp"

using namespace fathom;

using Policies = std::tuple<policy::PreLN, policy::PostLN, policy::LNS, policy::DeepNorm,
                            policy::MixLN<>, policy::SandwichLN>;

template <class Arch, class Policy>
void check_model_gradients(std::int64_t per_input) {
  // L = 4 so that MixLN<> has a Post-LN block (floor(4/4) = 1) and LNS's scales differ per block.
  auto c = testing::tiny_config(Arch::kind, 4);
  nn::DecoderLM<Arch, Policy, double> model(c);
  model.init(31);
  testing::randomize(model, 32);
  auto tokens = testing::random_tokens(2, 4, c.vocab, 33);

  std::vector<Var<double>> inputs;
  for (auto& p : model.parameters()) inputs.push_back(p.var);
  // The inputs are the model's own parameters (shared storage): f perturbs them through the model.
  autograd::GradcheckOptions options;
  options.max_elements_per_input = per_input;
  auto result = autograd::gradcheck(
      [&](const std::vector<Var<double>>&) { return model.forward(tokens); }, inputs, options);
  INFO(nn::to_string(Arch::kind) << ": " << result.first_failure << " (max abs error "
                                 << result.max_abs_error << ", max rel error "
                                 << result.max_rel_error << ")");
  CHECK(result.ok);
  std::int64_t expected = 0;
  for (const auto& p : model.parameters())
    expected += per_input > 0 ? std::min(p.var.numel(), per_input) : p.var.numel();
  CHECK(result.checked == expected);
}

TEMPLATE_LIST_TEST_CASE("DecoderLM gradients by finite differences, Llama", "[nn][gradcheck]",
                        Policies) {
  check_model_gradients<nn::Llama, TestType>(12);
}

TEMPLATE_LIST_TEST_CASE("DecoderLM gradients by finite differences, GPT-2", "[nn][gradcheck]",
                        Policies) {
  check_model_gradients<nn::Gpt2, TestType>(12);
}

TEMPLATE_LIST_TEST_CASE("DecoderLM gradients by finite differences, every element",
                        "[.][gradcheck-full]", Policies) {
  check_model_gradients<nn::Llama, TestType>(0);
  check_model_gradients<nn::Gpt2, TestType>(0);
}

TEST_CASE("DecoderLM loss gradient by finite differences", "[nn][gradcheck]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 2);
  nn::DecoderLM<nn::Llama, policy::LNS, double> model(c);
  model.init(34);
  testing::randomize(model, 35);
  auto tokens = testing::random_tokens(2, 4, c.vocab, 36);
  auto targets = testing::random_tokens(2, 4, c.vocab, 37);
  std::vector<Var<double>> inputs;
  for (auto& p : model.parameters()) inputs.push_back(p.var);
  autograd::GradcheckOptions options;
  options.max_elements_per_input = 12;
  auto result = autograd::gradcheck(
      [&](const std::vector<Var<double>>&) { return model.loss(tokens, targets); }, inputs,
      options);
  INFO(result.first_failure);
  CHECK(result.ok);
}
