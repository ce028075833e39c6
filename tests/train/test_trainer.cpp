// The training loop: bit-for-bit resume on CPU, non-finite losses, bad input, and checkpoints that
// survive a failed save.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include "fathom/data/shards.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/train/trainer.hpp"
#include "support/catch.hpp"
#include "train/runs.hpp"

using namespace fathom;
namespace fs = std::filesystem;
using fathom::test::fresh_dir;
using fathom::test::weights_of;

namespace {

train::TrainOptions small_run(const fs::path& out) {
  auto o = test::small_run_options(out, {.layers = 2,
                                         .d_model = 32,
                                         .d_ff = 64,
                                         .max_seq = 32,
                                         .seq_len = 16,
                                         .steps = 8,
                                         .builtin_tokens = 20000});
  o.lr = 3e-3;
  o.schedule = train::CosineSchedule{2, 0.1};
  o.eval_every = 4;
  o.eval_batches = 2;
  return o;
}

using Model = train::DecoderModel<nn::Llama, policy::LNS, float, Cpu>;

// Makes the loss NaN on chosen calls of loss() by poisoning one weight for that call only.
class PoisonedModel final : public train::LanguageModel<float, Cpu> {
 public:
  PoisonedModel(const nn::ModelConfig& c, std::vector<int> poisoned_calls)
      : inner_(c, policy::LNS{}), poisoned_(std::move(poisoned_calls)) {}
  LossVar loss(const Tensor<std::int32_t, Cpu>& x,
               const Tensor<std::int32_t, Cpu>& y) const override {
    // Training calls only (evaluation runs under NoGradGuard): call k is step k without
    // accumulation.
    if (autograd::grad_enabled()) ++calls_;
    bool poison = autograd::grad_enabled() &&
                  std::find(poisoned_.begin(), poisoned_.end(), calls_) != poisoned_.end();
    auto& w = const_cast<Model&>(inner_).parameters()[1].var.mutable_value();
    std::vector<float> saved;
    if (poison) {
      saved = w.to_vector();
      w.data()[0] = std::numeric_limits<float>::quiet_NaN();
    }
    auto l = inner_.loss(x, y);
    if (poison) w.copy_(Tensor<float>::from_vector(w.shape(), saved));
    return l;
  }
  Var<float> forward(const Tensor<std::int32_t, Cpu>& x) const override {
    return inner_.forward(x);
  }
  LossVar loss(const Tensor<std::int32_t, Cpu>& x, const Tensor<std::int32_t, Cpu>& y,
               const nn::ForwardOptions<float, Cpu>& options) const override {
    return inner_.loss(x, y, options);
  }
  std::vector<nn::NamedParameter<float, Cpu>>& parameters() override { return inner_.parameters(); }
  void init(std::uint64_t seed) override { inner_.init(seed); }
  void zero_grad() override { inner_.zero_grad(); }
  bool hf_transposed(const std::string& n) const override { return inner_.hf_transposed(n); }
  const nn::ModelConfig& config() const override { return inner_.config(); }

 private:
  Model inner_;
  std::vector<int> poisoned_;
  mutable int calls_ = 0;
};

}  // namespace

TEST_CASE("trainer: the loss falls on the built-in corpus and metrics are written", "[train]") {
  auto dir = fresh_dir("trainer-learns");
  auto o = small_run(dir);
  o.steps = 30;
  auto r = train::train<nn::Llama, policy::PreLN, float, Cpu>(o);
  REQUIRE(r.losses.size() == 30);
  CHECK(r.last_loss < r.first_loss - 0.5);
  CHECK(std::isfinite(r.final_val_loss));
  std::ifstream m(dir / "metrics.jsonl");
  int train_lines = 0, val_lines = 0;
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss"))
      ++val_lines;
    else {
      ++train_lines;
      for (const char* k : {"step", "loss", "lr", "tokens", "tokens_per_s"}) CHECK(j.contains(k));
    }
  }
  CHECK(train_lines == 30);
  CHECK(val_lines == 30 / 4 + 1);  // every 4 steps, and at the end
  CHECK(train::is_complete_checkpoint(dir / "ckpt-30"));
}

TEST_CASE("trainer: resuming gives the same losses and weights bit for bit", "[train]") {
  auto straight = fresh_dir("trainer-straight"), split = fresh_dir("trainer-split");
  auto o = small_run(straight);
  auto full = train::train<nn::Llama, policy::LNS, float, Cpu>(o);

  auto a = small_run(split);
  a.stop_after = 3;
  auto first = train::train<nn::Llama, policy::LNS, float, Cpu>(a);
  REQUIRE(first.steps_done == 3);
  REQUIRE(train::is_complete_checkpoint(split / "ckpt-3"));

  auto b = small_run(split);
  b.resume = split.string();  // the run folder: its latest checkpoint
  auto second = train::train<nn::Llama, policy::LNS, float, Cpu>(b);
  REQUIRE(second.first_step == 3);
  REQUIRE(second.losses.size() == 5);
  for (std::size_t i = 0; i < 3; ++i) CHECK(first.losses[i] == full.losses[i]);
  for (std::size_t i = 0; i < 5; ++i) CHECK(second.losses[i] == full.losses[i + 3]);
  CHECK(weights_of(split / "ckpt-8") == weights_of(straight / "ckpt-8"));
  CHECK(second.tokens == full.tokens);
}

TEST_CASE("trainer: losses read only every few steps resume bit for bit, with accumulation",
          "[train]") {
  auto straight = fresh_dir("trainer-straight-accum"), split = fresh_dir("trainer-split-accum");
  auto o = small_run(straight);
  o.log_every = 5;  // the loop reads losses at steps 1, 5, 8 and at evaluations (4, 8)
  o.eval_every = 0;
  o.grad_accum = 2;
  auto full = train::train<nn::Llama, policy::LNS, float, Cpu>(o);
  REQUIRE(full.losses.size() == 8);

  auto a = small_run(split);
  a.log_every = 5;
  a.eval_every = 0;
  a.grad_accum = 2;
  a.stop_after = 3;
  auto first = train::train<nn::Llama, policy::LNS, float, Cpu>(a);
  auto b = a;
  b.stop_after = -1;
  b.resume = (split / "ckpt-3").string();
  auto second = train::train<nn::Llama, policy::LNS, float, Cpu>(b);
  REQUIRE(first.losses.size() == 3);
  REQUIRE(second.losses.size() == 5);
  for (std::size_t i = 0; i < 3; ++i) CHECK(first.losses[i] == full.losses[i]);
  for (std::size_t i = 0; i < 5; ++i) CHECK(second.losses[i] == full.losses[i + 3]);
  CHECK(weights_of(split / "ckpt-8") == weights_of(straight / "ckpt-8"));
}

TEST_CASE("trainer: fp8 with delayed scaling resumes bit for bit, amax histories and all",
          "[train][fp8]") {
  auto straight = fresh_dir("trainer-fp8-straight"), split = fresh_dir("trainer-fp8-split");
  const nn::Fp8Recipe delayed{.scaling = nn::Fp8Scaling::delayed, .history = 4};
  auto fp8_model = [&](const train::TrainOptions& o) {
    auto m = std::make_unique<Model>(o.model, policy::LNS{});
    m->set_linear_precision(nn::LinearPrecision::fp8, delayed);
    return m;
  };
  auto o = small_run(straight);
  o.grad_accum = 2;  // two quantizations of every tensor a step: the ring wraps within a run
  auto full_model = fp8_model(o);
  auto full = train::train<float, Cpu>(o, *full_model);
  REQUIRE(full.losses.size() == 8);
  for (const auto& [name, h] : full_model->fp8_histories()) {
    INFO(name);
    CHECK(h->uses() == 16);
  }

  auto a = small_run(split);
  a.grad_accum = 2;
  a.stop_after = 3;
  auto first = train::train<float, Cpu>(a, *fp8_model(a));
  const auto saved = train::load_checkpoint(split / "ckpt-3");
  const auto names = fp8_model(a)->fp8_histories();
  REQUIRE(names.size() == 16);  // 2 blocks x 4 GEMMs x (input, output gradient)
  for (const auto& [name, h] : names) CHECK(saved.optimizer.find("fp8/" + name) != nullptr);
  // Copies of ckpt-3 for the cases below (the resumed run replaces its older checkpoints).
  const fs::path no_histories = fresh_dir("trainer-fp8-fresh"),
                 some_histories = fresh_dir("trainer-fp8-partial");
  for (const auto& dir : {no_histories, some_histories}) {
    fs::create_directories(dir / "ckpt-3");
    fs::copy(split / "ckpt-3", dir / "ckpt-3", fs::copy_options::recursive);
  }

  auto b = a;
  b.stop_after = -1;
  b.resume = (split / "ckpt-3").string();
  auto second = train::train<float, Cpu>(b, *fp8_model(b));
  REQUIRE(second.losses.size() == 5);
  for (std::size_t i = 0; i < 3; ++i) CHECK(first.losses[i] == full.losses[i]);
  for (std::size_t i = 0; i < 5; ++i) CHECK(second.losses[i] == full.losses[i + 3]);
  CHECK(weights_of(split / "ckpt-8") == weights_of(straight / "ckpt-8"));

  // Resumed with fresh histories instead, the run differs: the histories are what made it exact.
  auto c = a;
  c.stop_after = -1;
  c.out = no_histories.string();
  auto stripped = train::read_safetensors(fs::path(c.out) / "ckpt-3" / "optimizer.safetensors");
  std::erase_if(stripped.tensors, [](const auto& r) { return r.name.starts_with("fp8/"); });
  train::write_safetensors(fs::path(c.out) / "ckpt-3" / "optimizer.safetensors", stripped.tensors,
                           {{"format", "fathom"}});
  c.resume = (fs::path(c.out) / "ckpt-3").string();
  auto fresh = train::train<float, Cpu>(c, *fp8_model(c));
  REQUIRE(fresh.losses.size() == 5);
  CHECK(fresh.losses != second.losses);

  // A checkpoint holding some histories but not all is refused, naming the first missing.
  const fs::path partial_ckpt = some_histories / "ckpt-3";
  auto partial = train::read_safetensors(partial_ckpt / "optimizer.safetensors");
  std::erase_if(partial.tensors, [&](const auto& r) { return r.name == "fp8/" + names[5].first; });
  train::write_safetensors(partial_ckpt / "optimizer.safetensors", partial.tensors,
                           {{"format", "fathom"}});
  auto d = b;
  d.out = some_histories.string();
  d.resume = partial_ckpt.string();
  auto d_model = fp8_model(d);
  CHECK_THROWS_WITH((train::train<float, Cpu>(d, *d_model)),
                    HasSubstring("no fp8 amax history named 'fp8/" + names[5].first + "'") &&
                        HasSubstring("holds 15 of the 16"));
}

TEST_CASE("load_checkpoint reads back what the trainer wrote", "[train]") {
  auto dir = fresh_dir("trainer-load");
  auto o = small_run(dir);
  o.steps = 3;
  o.policy = "lns";
  Model model(o.model, policy::LNS{});
  train::train<float, Cpu>(o, model);
  const train::LoadedCheckpoint c = train::load_checkpoint(dir);
  CHECK(c.dir == dir / "ckpt-3");
  const train::TrainerState st = c.state();
  CHECK(st.step == 3);
  CHECK(st.optimizer_step == 3);
  CHECK(st.tokens == 3 * o.batch * o.seq_len);
  CHECK(st.run.at("policy") == "lns");
  CHECK(st.run.at("precision") == "fp32");
  CHECK(st.run.at("model").get<nn::ModelConfig>().layers == o.model.layers);
  CHECK(c.config.at("model_type") == "llama");
  CHECK_FALSE(c.optimizer.tensors.empty());

  Model fresh(o.model, policy::LNS{});
  fresh.init(99);
  train::load_weights(fresh, c);
  for (std::size_t i = 0; i < model.parameters().size(); ++i)
    CHECK(fresh.parameters()[i].var.value().to_vector() ==
          model.parameters()[i].var.value().to_vector());

  train::CheckpointParts weights_only;
  weights_only.optimizer = false;
  CHECK(train::load_checkpoint(dir / "ckpt-3", weights_only).optimizer.tensors.empty());
  CHECK_THROWS_WITH(train::load_checkpoint(dir / "ckpt-9"),
                    HasSubstring("ckpt-9") && HasSubstring("does not exist"));
}

TEST_CASE("trainer: resuming a checkpoint of another config fails naming the difference",
          "[train]") {
  auto dir = fresh_dir("trainer-other-config");
  auto o = small_run(dir);
  o.steps = 2;
  o.policy = "lns";
  train::train<nn::Llama, policy::LNS, float, Cpu>(o);
  auto b = small_run(fresh_dir("trainer-other-config-2"));
  b.resume = (dir / "ckpt-2").string();
  b.policy = "lns";
  b.model.layers = 3;
  CHECK_THROWS_WITH((train::train<nn::Llama, policy::LNS, float, Cpu>(b)),
                    HasSubstring("layers = 2") && HasSubstring("layers = 3"));
  b.model.layers = 2;
  auto c = b;
  c.policy = "pre-ln";
  CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(c)),
                    HasSubstring("policy"));
}

TEST_CASE("trainer: a NaN loss stops the run naming the step and the last good checkpoint",
          "[train]") {
  auto dir = fresh_dir("trainer-nan");
  auto o = small_run(dir);
  o.save_every = 2;
  PoisonedModel model(o.model, {5});
  CHECK_THROWS_WITH((train::train<float, Cpu>(o, model)),
                    HasSubstring("at step 5") && HasSubstring("ckpt-4"));
  CHECK(train::is_complete_checkpoint(dir / "ckpt-4"));
  CHECK_FALSE(fs::exists(dir / "ckpt-6"));
}

TEST_CASE("trainer: a NaN loss between two reads is reported with its own step and never saved",
          "[train]") {
  auto dir = fresh_dir("trainer-nan-late");
  auto o = small_run(dir);
  o.log_every = 10;  // losses are read at step 1 and at the end (8) only
  o.eval_every = 0;
  PoisonedModel model(o.model, {5});
  try {
    train::train<float, Cpu>(o, model);
    FAIL("expected NonFiniteLoss");
  } catch (const train::NonFiniteLoss& e) {
    CHECK(e.step() == 5);
    CHECK(std::isnan(e.loss()));
    CHECK_FALSE(e.last_good_checkpoint().has_value());
    CHECK_THAT(std::string(e.what()), HasSubstring("at step 5") && HasSubstring("none"));
  }
  CHECK_FALSE(fs::exists(dir / "ckpt-8"));
}

TEST_CASE("trainer: --skip-nonfinite skips the bad step and goes on", "[train]") {
  auto dir = fresh_dir("trainer-skip");
  auto o = small_run(dir);
  o.skip_nonfinite = true;
  PoisonedModel model(o.model, {3, 6});
  auto r = train::train<float, Cpu>(o, model);
  CHECK(r.skipped_steps == 2);
  CHECK(r.losses.size() == 6);
  for (double l : r.losses) CHECK(std::isfinite(l));
  CHECK(r.steps_done == 8);
}

TEST_CASE("trainer: bad input fails with one clear message", "[train]") {
  auto dir = fresh_dir("trainer-bad");
  SECTION("an --out below a regular file") {
    fs::create_directories(dir);
    std::ofstream(dir / "file") << "x";
    auto o = small_run(dir / "file" / "run");
    CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
                      HasSubstring("TrainOptions::out"));
  }
  SECTION("a token id >= vocab in the shards") {
    fs::create_directories(dir);
    std::vector<std::uint32_t> tokens(4000, 5);
    tokens[1234] = 300;
    data::write_shard(dir / "train_000000.bin", tokens);
    auto o = small_run(dir / "run");
    o.data = (dir / "train_*.bin").string();
    CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
                      HasSubstring("300") && HasSubstring("257"));
  }
  SECTION("a batch larger than the data") {
    fs::create_directories(dir);
    data::write_shard(dir / "train_000000.bin", std::vector<std::uint32_t>(10, 7));
    auto o = small_run(dir / "run");
    o.data = (dir / "train_*.bin").string();
    CHECK_THROWS_AS((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)), Error);
  }
  SECTION("shards matching nothing") {
    auto o = small_run(dir / "run");
    o.data = (dir / "nothing_*.bin").string();
    CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
                      HasSubstring("nothing_"));
  }
  SECTION("an option out of range names the TrainOptions member") {
    auto o = small_run(dir / "run");
    o.grad_accum = 0;
    try {
      train::train<nn::Llama, policy::PreLN, float, Cpu>(o);
      FAIL("expected OptionError");
    } catch (const train::OptionError& e) {
      CHECK(e.option() == "grad_accum");
      CHECK(e.reason() == "expected at least 1, got 0");
      CHECK(std::string(e.what()) == "TrainOptions::grad_accum: expected at least 1, got 0");
    }
    o = small_run(dir / "run");
    o.resume = (dir / "no-such-run").string();
    CHECK_THROWS_WITH(
        (train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
        HasSubstring("TrainOptions::resume: expected a ckpt-STEP folder or a run folder"));
  }
  SECTION("zero steps, a sequence longer than the model's") {
    auto o = small_run(dir / "run");
    o.steps = 0;
    CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
                      HasSubstring("TrainOptions::steps"));
    o = small_run(dir / "run");
    o.seq_len = 64;
    CHECK_THROWS_WITH((train::train<nn::Llama, policy::PreLN, float, Cpu>(o)),
                      HasSubstring("TrainOptions::seq_len"));
  }
}

TEST_CASE("checkpoints: a failed save leaves the previous checkpoint intact and no torn one",
          "[train]") {
  auto dir = fresh_dir("trainer-torn");
  train::CheckpointContents good;
  std::vector<float> w = {1, 2, 3, 4};
  good.model.push_back(train::make_tensor_record<float>("w", {2, 2}, std::span<const float>(w)));
  good.config = {{"model_type", "llama"}};
  good.trainer_state = {{"step", 1}};
  fs::create_directories(dir);
  train::write_checkpoint(dir, 1, good);

  auto bad = good;
  bad.model[0].data.resize(
      3);  // a record whose size does not match its shape: the save fails midway
  CHECK_THROWS_AS(train::write_checkpoint(dir, 2, bad), Error);
  CHECK_FALSE(fs::exists(dir / "ckpt-2"));
  CHECK_THROWS_AS(train::write_checkpoint(dir, 1, bad),
                  Error);  // overwriting fails: the old one stays
  REQUIRE(train::is_complete_checkpoint(dir / "ckpt-1"));
  CHECK(weights_of(dir / "ckpt-1") == w);
  int leftovers = 0;
  for (auto& e : fs::directory_iterator(dir))
    leftovers += e.path().filename().string().starts_with(".ckpt") ? 1 : 0;
  CHECK(leftovers == 0);
  // (These records are not a whole checkpoint, so resolve_checkpoint would refuse them:
  // test_checkpoint_faults.cpp checks what it picks.)
}

TEST_CASE(
    "trainer: a resume keeps the schedule's length, says what it loaded, and a finished run is "
    "complete",
    "[train]") {
  auto dir = fresh_dir("trainer-schedule");
  auto o = small_run(dir);
  o.stop_after = 2;
  train::train<nn::Llama, policy::LNS, float, Cpu>(o);
  REQUIRE(train::read_json(dir / "ckpt-2" / "trainer_state.json").at("steps") == o.steps);
  auto b = small_run(dir);
  b.resume = dir.string();
  b.steps = 20;  // another cosine schedule: every learning rate after the resume would differ
  CHECK_THROWS_WITH((train::train<nn::Llama, policy::LNS, float, Cpu>(b)),
                    HasSubstring("trained on a schedule of 8 steps, this run has 20"));
  auto c = small_run(dir);
  c.resume = dir.string();
  const auto r = train::train<nn::Llama, policy::LNS, float, Cpu>(c);
  CHECK(r.first_step == 2);
  CHECK(r.steps_done == 8);
  CHECK_FALSE(r.already_complete);
  const auto again = train::train<nn::Llama, policy::LNS, float, Cpu>(c);
  CHECK(again.already_complete);
  CHECK(again.steps_done == 8);
  // Each logged step appears once in metrics.jsonl although steps 3..8 ran after a resume.
  std::ifstream in(dir / "metrics.jsonl");
  std::vector<std::int64_t> steps;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) steps.push_back(j.at("step").get<std::int64_t>());
  }
  CHECK(steps == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8});
}

TEST_CASE("trainer: a run folder in use by another process is refused at once", "[train]") {
  auto dir = fresh_dir("trainer-locked");
  std::filesystem::create_directories(dir);
  train::FolderLock other(dir, "another run");
  CHECK_THROWS_WITH((train::train<nn::Llama, policy::LNS, float, Cpu>(small_run(dir))),
                    HasSubstring("is in use by process") && HasSubstring("(another run)"));
}
