// Data-parallel training (include/fathom/train/data_parallel.hpp) on the in-process backend: 2
// ranks with batch B train exactly as 1 rank with batch B and grad-accum 2 (losses and weights bit
// for bit, with and without ZeRO-1); a run resumes on another number of ranks (1 -> 2 -> 1, with
// the ZeRO-1 state gathered into the checkpoint); ranks started with different options are
// refused; rank 0 alone writes, metrics count the tokens of every rank, and a run folder holding a
// run is refused unless replaced (overwrite); delayed fp8 scaling keeps one set of amax histories
// over the ranks and resumes bit for bit.
#include "fathom/train/data_parallel.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

#include "fathom/dist/in_process.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "support/catch.hpp"
#include "train/runs.hpp"

using namespace fathom;
namespace fs = std::filesystem;
using fathom::test::fresh_dir;
using fathom::test::weights_of;

namespace {

train::TrainOptions small_run(const fs::path& out, std::int64_t grad_accum) {
  auto o = test::small_run_options(out, {.layers = 2,
                                         .d_model = 32,
                                         .d_ff = 64,
                                         .max_seq = 16,
                                         .seq_len = 16,
                                         .steps = 6,
                                         .builtin_tokens = 20000});
  o.grad_accum = grad_accum;
  o.lr = 3e-3;
  o.schedule = train::CosineSchedule{2, 0.1};
  return o;
}

using Model = train::DecoderModel<nn::Llama, policy::PreLN, float, Cpu>;

// Rank 0's result of training on `world` in-process ranks.
train::TrainResult run(int world, const train::TrainOptions& o, int zero = 0) {
  train::TrainResult result;
  dist::run_ranks(world, [&](dist::Communicator& comm) {
    Model model(o.model, policy::PreLN{});
    auto r = train::train_data_parallel<float, Cpu>(o, model, comm, {.zero = zero});
    if (comm.rank() == 0) result = r;
  });
  return result;
}

}  // namespace

TEST_CASE("data parallel: 2 ranks x batch B train as 1 rank x B x grad-accum 2, bit for bit",
          "[train][dist]") {
  const auto one_dir = fresh_dir("dp-one"), two_dir = fresh_dir("dp-two"),
             zero_dir = fresh_dir("dp-zero");
  auto one = small_run(one_dir, 2);
  one.clip = 0.5;  // clipping on: the norm of the reduced gradients
  const auto a = run(1, one);
  auto two = small_run(two_dir, 1);
  two.clip = 0.5;
  const auto b = run(2, two);
  REQUIRE(a.losses.size() == 6);
  CHECK(a.losses == b.losses);
  CHECK(weights_of(one_dir / "ckpt-6") == weights_of(two_dir / "ckpt-6"));
  CHECK(a.tokens == b.tokens);

  // ZeRO-1 (without clipping: its norm sums the squares in another order) against the same.
  auto one_plain = small_run(fresh_dir("dp-one-plain"), 2);
  one_plain.clip = 0;
  auto two_zero = small_run(zero_dir, 1);
  two_zero.clip = 0;
  const auto c = run(1, one_plain);
  const auto d = run(2, two_zero, 1);
  CHECK(c.losses == d.losses);
  CHECK(weights_of(one_plain.out + "/ckpt-6") == weights_of(zero_dir / "ckpt-6"));

  // Rank 0 alone wrote; the tokens of a step are those of both ranks.
  std::ifstream m(two_dir / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("tokens")) continue;
    ++lines;
    CHECK(j.at("tokens").get<std::int64_t>() == j.at("step").get<std::int64_t>() * 2 * 2 * 16);
  }
  CHECK(lines == 6);
}

TEST_CASE("data parallel: a run resumes on another number of ranks (1 -> 2 with ZeRO-1 -> 1)",
          "[train][dist]") {
  const auto straight = fresh_dir("dp-straight"), split = fresh_dir("dp-split");
  auto o = small_run(straight, 2);
  o.clip = 0;
  const auto full = run(1, o);

  auto first = small_run(split, 2);
  first.clip = 0;
  first.stop_after = 2;
  const auto r1 = run(1, first);
  auto second = small_run(split, 1);  // 2 ranks x 1 micro-batch: the same global batch
  second.clip = 0;
  second.stop_after = 4;
  second.resume = split.string();
  const auto r2 = run(2, second, 1);
  REQUIRE(r2.first_step == 2);
  auto third = small_run(split, 2);
  third.clip = 0;
  third.resume = split.string();
  const auto r3 = run(1, third);
  REQUIRE(r3.first_step == 4);

  std::vector<double> pieced = r1.losses;
  pieced.insert(pieced.end(), r2.losses.begin(), r2.losses.end());
  pieced.insert(pieced.end(), r3.losses.begin(), r3.losses.end());
  CHECK(pieced == full.losses);
  CHECK(weights_of(split / "ckpt-6") == weights_of(straight / "ckpt-6"));

  // A global batch the new number of ranks cannot continue is refused with a reason.
  auto odd = small_run(split, 1);
  odd.resume = (split / "ckpt-2").string();
  odd.clip = 0;
  CHECK_THROWS_WITH(run(3, odd), HasSubstring("cannot continue"));
}

TEST_CASE("data parallel: ranks started with different options are refused at start",
          "[train][dist]") {
  const auto dir = fresh_dir("dp-mismatch");
  CHECK_THROWS_WITH(dist::run_ranks(2,
                                    [&](dist::Communicator& comm) {
                                      auto o = small_run(dir, 1);
                                      if (comm.rank() == 1) o.lr = 1e-3;
                                      Model model(o.model, policy::PreLN{});
                                      train::train_data_parallel<float, Cpu>(o, model, comm);
                                    }),
                    HasSubstring("rank 1 has a different configuration"));
  CHECK_FALSE(fs::exists(dir / "metrics.jsonl"));
}

TEST_CASE(
    "data parallel: a folder holding a run is refused on every rank, and replaced with "
    "overwrite",
    "[train][dist]") {
  const auto dir = fresh_dir("dp-existing");
  auto o = small_run(dir, 1);
  o.steps = 2;
  run(2, o);
  const auto metrics_text = [&] {
    std::ifstream in(dir / "metrics.jsonl");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text;
  };
  const std::string first = metrics_text();
  CHECK_THROWS_WITH(run(2, o), HasSubstring("already holds a run (metrics.jsonl, ckpt-2)"));
  CHECK(metrics_text() == first);
  o.overwrite = true;
  o.seed = 3;
  const auto r = run(2, o);
  CHECK(r.steps_done == 2);
  CHECK(train::read_json(dir / "ckpt-2" / "trainer_state.json").at("seed") == 3);
}

TEST_CASE("data parallel: delayed fp8 scaling shares the amax histories, and resumes bit for bit",
          "[train][dist][fp8]") {
  const nn::Fp8Recipe delayed{.scaling = nn::Fp8Scaling::delayed, .history = 4};
  // Rank r's histories (name, state) after its run, and rank 0's result.
  using States = std::vector<std::pair<std::string, std::vector<float>>>;
  auto train_fp8 = [&](const train::TrainOptions& o, std::vector<States>& states) {
    train::TrainResult result;
    states.assign(2, {});
    std::mutex m;
    dist::run_ranks(2, [&](dist::Communicator& comm) {
      Model model(o.model, policy::PreLN{});
      model.set_linear_precision(nn::LinearPrecision::fp8, delayed);
      auto r = train::train_data_parallel<float, Cpu>(o, model, comm, {});
      States mine;
      for (const auto& [name, h] : model.fp8_histories())
        mine.emplace_back(name, h->state().to_vector());
      std::lock_guard<std::mutex> lock(m);
      states[static_cast<std::size_t>(comm.rank())] = std::move(mine);
      if (comm.rank() == 0) result = r;
    });
    return result;
  };
  const auto straight = fresh_dir("dp-fp8-straight"), split = fresh_dir("dp-fp8-split");
  auto o = small_run(straight, 1);
  o.steps = 4;
  std::vector<States> full_states;
  const auto full = train_fp8(o, full_states);
  REQUIRE(full.losses.size() == 4);
  for (double l : full.losses) CHECK(std::isfinite(l));
  // Each rank quantized its own rows, yet every history is the same on both: their maximum.
  REQUIRE(full_states[0].size() == 2u * 4u * 2u);  // 2 blocks, 4 linear layers, input and dY
  CHECK(full_states[0] == full_states[1]);
  bool recorded = false;
  for (const auto& [name, v] : full_states[0])
    for (std::size_t i = 0; i + 1 < v.size(); ++i) recorded = recorded || v[i] > 0;
  CHECK(recorded);

  // Stopped after 2 steps and resumed on 2 ranks: the same losses, weights and histories.
  auto first = small_run(split, 1);
  first.steps = 4;
  first.stop_after = 2;
  std::vector<States> ignored;
  const auto r1 = train_fp8(first, ignored);
  auto second = small_run(split, 1);
  second.steps = 4;
  second.resume = split.string();
  std::vector<States> resumed_states;
  const auto r2 = train_fp8(second, resumed_states);
  REQUIRE(r2.first_step == 2);
  std::vector<double> pieced = r1.losses;
  pieced.insert(pieced.end(), r2.losses.begin(), r2.losses.end());
  CHECK(pieced == full.losses);
  CHECK(weights_of(split / "ckpt-4") == weights_of(straight / "ckpt-4"));
  CHECK(resumed_states == full_states);
}

TEST_CASE("train() refuses delayed fp8 scaling on several ranks without shared histories",
          "[train][dist][fp8]") {
  auto o = small_run(fresh_dir("dp-fp8-unshared"), 1);
  o.steps = 1;
  Model model(o.model, policy::PreLN{});
  model.set_linear_precision(nn::LinearPrecision::fp8, {.scaling = nn::Fp8Scaling::delayed});
  train::TrainHooks<float, Cpu> hooks;
  hooks.shard = {0, 2};
  CHECK_THROWS_WITH((train::train<float, Cpu>(o, model, hooks)),
                    HasSubstring("delayed fp8 scaling on 2 ranks needs hooks "
                                 "that share the amax histories"));
}
