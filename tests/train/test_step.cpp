// TrainStep: losses read late equal losses read at once, gradient accumulation, the hooks around
// backward, a replaced parameter update, and each rank's rows of a global batch.
#include <cmath>
#include <vector>

#include "fathom/data/corpus.hpp"
#include "fathom/nn/language_model.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/train/step.hpp"
#include "nn/small_model.hpp"
#include "support/catch.hpp"

using namespace fathom;

namespace {

using Model = nn::DecoderModel<nn::Llama, policy::PreLN, float, Cpu>;

nn::ModelConfig small_config() { return test::small_model(2, 32, 64, 16); }

// Batch i of `rows` sequences of 8 tokens from the built-in corpus.
data::Batch batch_of(std::int64_t i, std::int64_t rows) {
  static const auto tokens = data::builtin_corpus(data::Split::train, 20000, 3);
  data::Batch b;
  b.batch = rows;
  b.seq_len = 8;
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto at = static_cast<std::size_t>((i * rows + r) * 9);
    b.inputs.insert(b.inputs.end(), tokens.begin() + at, tokens.begin() + at + 8);
    b.targets.insert(b.targets.end(), tokens.begin() + at + 1, tokens.begin() + at + 9);
  }
  return b;
}

std::vector<float> weights(Model& m) {
  std::vector<float> all;
  for (auto& p : m.parameters()) {
    auto v = p.var.value().to_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

struct Recorder : train::StepHooks<float, Cpu> {
  std::vector<std::string> calls;
  void before_backward(std::int64_t k, std::int64_t n) override {
    calls.push_back("before " + std::to_string(k) + "/" + std::to_string(n));
  }
  void after_backward(std::int64_t k, std::int64_t n) override {
    calls.push_back("after " + std::to_string(k) + "/" + std::to_string(n));
  }
};

// Counts its steps and applies nothing: the weights must stay as they are.
struct CountingUpdate : train::ParameterUpdate<float, Cpu> {
  std::int64_t steps = 0;
  std::vector<double> lrs;
  void step(double lr) override {
    ++steps;
    lrs.push_back(lr);
  }
  double last_grad_norm() const override { return NAN; }
  std::int64_t step_count() const override { return steps; }
  void set_step_count(std::int64_t s) override { steps = s; }
  std::vector<std::pair<std::string, Tensor<float, Cpu>*>> named_state() override { return {}; }
};

}  // namespace

TEST_CASE("TrainStep: losses read after many steps equal losses read after each", "[train]") {
  Model a(small_config(), policy::PreLN{}), b(small_config(), policy::PreLN{});
  a.init(1);
  b.init(1);
  auto ua = train::make_local_update<float, Cpu>(a.parameters(), train::default_rule(), 1.0);
  auto ub = train::make_local_update<float, Cpu>(b.parameters(), train::default_rule(), 1.0);
  train::TrainStep<float, Cpu> sa(a, *ua, 1), sb(b, *ub, 1);
  std::vector<double> each;
  const int steps = 40;  // more than the step's first buffer of unread losses holds
  for (int i = 0; i < steps; ++i) {
    auto [x, y] = train::to_device<Cpu>(batch_of(i, 2));
    sa.accumulate(x, y);
    sa.update(1e-3);
    auto got = sa.take_losses();
    REQUIRE(got.size() == 1);
    each.push_back(got[0]);
    sb.accumulate(x, y);
    sb.update(1e-3);
  }
  const auto late = sb.take_losses();
  CHECK(late == each);
  CHECK(sb.take_losses().empty());
  CHECK(weights(a) == weights(b));
  CHECK(each.back() < each.front());
  CHECK(ua->step_count() == steps);
  CHECK(std::isfinite(ua->last_grad_norm()));
}

TEST_CASE("TrainStep: two micro-batches accumulate the gradient of their union", "[train]") {
  Model whole(small_config(), policy::PreLN{}), parts(small_config(), policy::PreLN{});
  whole.init(2);
  parts.init(2);
  optim::Sgd sgd;  // plain SGD: the update is the gradient itself
  auto uw = train::make_local_update<float, Cpu>(whole.parameters(), sgd, 0.0);
  auto up = train::make_local_update<float, Cpu>(parts.parameters(), sgd, 0.0);
  train::TrainStep<float, Cpu> sw(whole, *uw, 1), sp(parts, *up, 2);
  const data::Batch b = batch_of(0, 4);
  auto [x, y] = train::to_device<Cpu>(b);
  sw.accumulate(x, y);
  for (int r = 0; r < 2; ++r) {
    auto [xr, yr] = train::to_device<Cpu>(train::rank_rows(b, {r, 2}));
    sp.accumulate(xr, yr);
  }
  CHECK_THAT(sp.take_losses().front(), WithinRel(sw.take_losses().front(), 1e-5));
  for (std::size_t i = 0; i < whole.parameters().size(); ++i) {
    const auto g1 = whole.parameters()[i].var.grad().to_vector();
    const auto g2 = parts.parameters()[i].var.grad().to_vector();
    for (std::size_t j = 0; j < g1.size(); ++j)
      REQUIRE_THAT(double(g2[j]), WithinAbs(double(g1[j]), 1e-6) || WithinRel(double(g1[j]), 1e-4));
  }
  sp.update(0.1);
  for (auto& p : parts.parameters()) CHECK_FALSE(p.var.has_grad());  // the update released them
  // Kept buffers: the update zeroes them (a gradient lent by another slot gets a buffer of its own
  // the first time), and from then on each stays at its address, step after step.
  sw.keep_gradient_buffers(true);
  sw.update(0.1);
  std::vector<const float*> kept;
  for (auto& p : whole.parameters()) kept.push_back(p.var.grad().data());
  sw.accumulate(x, y);
  sw.update(0.1);
  for (std::size_t i = 0; i < whole.parameters().size(); ++i) {
    const auto& p = whole.parameters()[i];
    REQUIRE(p.var.has_grad());
    CHECK(p.var.grad().data() == kept[i]);
    for (float g : p.var.grad().to_vector()) REQUIRE(g == 0.0f);
  }
}

TEST_CASE("TrainStep: the loss's gradient computed in the forward changes no loss and no weight",
          "[train]") {
  // Two micro-batches, so every backward is seeded with 1/2; the fused cross-entropy assumes it.
  Model fused(small_config(), policy::PreLN{}), plain(small_config(), policy::PreLN{});
  fused.init(3);
  plain.init(3);
  auto uf = train::make_local_update<float, Cpu>(fused.parameters(), train::default_rule(), 0.1);
  auto up = train::make_local_update<float, Cpu>(plain.parameters(), train::default_rule(), 0.1);
  train::TrainStep<float, Cpu> sf(fused, *uf, 2), sp(plain, *up, 2);
  const auto runs = autograd::detail::fused_cross_entropy_runs();
  for (int i = 0; i < 4; ++i) {
    for (int k = 0; k < 2; ++k) {
      auto [x, y] = train::to_device<Cpu>(batch_of(2 * i + k, 2));
      sf.accumulate(x, y);
      autograd::set_fused_cross_entropy(false);
      sp.accumulate(x, y);
      autograd::set_fused_cross_entropy(true);
    }
    sf.update(1e-3);
    sp.update(1e-3);
  }
  CHECK(autograd::detail::fused_cross_entropy_runs() == runs + 8);
  const auto lf = sf.take_losses(), lp = sp.take_losses();
  REQUIRE(lf.size() == 4);
  CHECK(lf == lp);
  CHECK(weights(fused) == weights(plain));
}

TEST_CASE("TrainStep: hooks around each backward, a replaced update, and misuse", "[train]") {
  Model m(small_config(), policy::PreLN{});
  m.init(3);
  const auto before = weights(m);
  CountingUpdate update;
  Recorder hooks;
  train::TrainStep<float, Cpu> step(m, update, 3, &hooks);
  auto [x, y] = train::to_device<Cpu>(batch_of(0, 2));
  step.accumulate(x, y);
  CHECK_THROWS_WITH(step.update(1.0), HasSubstring("1 of 3"));
  step.accumulate(x, y);
  step.accumulate(x, y);
  CHECK_THROWS_WITH(step.accumulate(x, y), HasSubstring("neither updated nor discarded"));
  step.update(0.5);
  CHECK(hooks.calls == std::vector<std::string>{"before 0/3", "after 0/3", "before 1/3",
                                                "after 1/3", "before 2/3", "after 2/3"});
  CHECK(update.steps == 1);
  CHECK(update.lrs == std::vector<double>{0.5});
  CHECK(weights(m) == before);
  for (int k = 0; k < 3; ++k) step.accumulate(x, y);
  step.discard();
  CHECK(update.steps == 1);
  CHECK(step.take_losses().size() == 2);
}

TEST_CASE("rank_rows: the ranks' rows are disjoint and make up the global batch", "[train]") {
  const data::Batch g = batch_of(1, 6);
  std::vector<std::int32_t> inputs, targets;
  for (int r = 0; r < 3; ++r) {
    const data::Batch b = train::rank_rows(g, {r, 3});
    CHECK(b.batch == 2);
    CHECK(b.seq_len == g.seq_len);
    inputs.insert(inputs.end(), b.inputs.begin(), b.inputs.end());
    targets.insert(targets.end(), b.targets.begin(), b.targets.end());
  }
  CHECK(inputs == g.inputs);
  CHECK(targets == g.targets);
  try {
    train::rank_rows(g, {0, 4});
    FAIL("expected an OptionError");
  } catch (const train::OptionError& e) {
    CHECK(e.option() == "batch");
    CHECK(std::string(e.what()).find("multiple of the number of ranks (4)") != std::string::npos);
  }
}
