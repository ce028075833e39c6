// nn::generate: the count and range of sampled ids, greedy and seeded sampling reproducible, the
// context cut to max_seq, and bad prompts refused.
#include "fathom/nn/generate.hpp"

#include <algorithm>
#include <string>

#include "fathom/nn/decoder_lm.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "nn/model_testing.hpp"
#include "support/catch.hpp"

using namespace fathom;

TEST_CASE("generate: ids in range, reproducible for a seed, greedy independent of it", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::llama, 1);
  nn::DecoderLM<nn::Llama, policy::PreLN> model(c);
  model.init(61);
  nn::GenerateOptions o;
  o.tokens = 12;
  o.temperature = 1.0;
  o.seed = 5;
  o.vocab_limit = 7;
  const auto a = nn::generate(model, {1, 2, 3}, o);
  REQUIRE(a.size() == 12);
  CHECK(std::all_of(a.begin(), a.end(), [](std::int32_t id) { return id >= 0 && id < 7; }));
  CHECK(nn::generate(model, {1, 2, 3}, o) == a);
  o.seed = 6;
  o.tokens = 40;
  const auto b = nn::generate(model, {1, 2, 3}, o);
  o.seed = 5;
  CHECK(nn::generate(model, {1, 2, 3}, o) != b);  // 40 draws from 7 ids: another seed differs

  o.temperature = 0;
  o.vocab_limit = 0;
  const auto g1 = nn::generate(model, {1, 2, 3}, o);
  o.seed = 99;
  CHECK(nn::generate(model, {1, 2, 3}, o) == g1);
  // Greedy: the first id is the argmax of the model's last logits row.
  autograd::NoGradGuard no_grad;
  auto logits =
      model.forward(Tensor<std::int32_t>::from_vector(Shape{1, 3}, {1, 2, 3})).value().to_vector();
  const auto last = logits.end() - c.vocab;
  CHECK(g1.front() == static_cast<std::int32_t>(std::max_element(last, logits.end()) - last));
}

TEST_CASE("generate: runs past max_seq on the last max_seq ids, and refuses bad prompts", "[nn]") {
  auto c = testing::tiny_config(nn::ArchKind::gpt2, 1);
  c.max_seq = 8;
  nn::DecoderLM<nn::Gpt2, policy::PreLN> model(c);
  model.init(62);
  nn::GenerateOptions o;
  o.tokens = 20;  // 3 + 20 ids: the model would refuse a context longer than 8
  CHECK(nn::generate(model, {1, 2, 3}, o).size() == 20);
  auto error_of = [&](std::vector<std::int32_t> prompt) {
    try {
      nn::generate(model, prompt, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_of({}).find("the prompt holds no token ids") != std::string::npos);
  CHECK(error_of({1, c.vocab}).find("outside the model's vocab") != std::string::npos);
}
