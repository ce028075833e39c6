// Checkpoints under failure: every file operation of a save made to fail in turn (IoFaults), the
// leftovers of an interrupted save put right, damaged checkpoints refused whole and passed over
// when a run folder is resumed, and a run that resumes after any failed save continuing bit for
// bit.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "fathom/nn/presets.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/run_folder.hpp"
#include "fathom/train/trainer.hpp"
#include "support/catch.hpp"
#include "train/runs.hpp"
#include "support/errors.hpp"

using namespace fathom;
namespace fs = std::filesystem;
using fathom::test::error_of;
using fathom::test::fresh_dir;

namespace {

train::TrainOptions tiny_run(const fs::path& out) {
  auto o = test::small_run_options(out, {.layers = 2,
                                         .d_model = 16,
                                         .d_ff = 32,
                                         .max_seq = 16,
                                         .seq_len = 8,
                                         .steps = 6,
                                         .builtin_tokens = 4000});
  o.lr = 3e-3;
  o.save_every = 2;
  o.policy = "lns";
  return o;
}

train::TrainResult run(const train::TrainOptions& o) {
  return train::train<nn::Llama, policy::LNS, float, Cpu>(o);
}

// Disarms IoFaults when a check fails midway.
struct Disarm {
  ~Disarm() { train::IoFaults::reset(); }
};

}  // namespace

TEST_CASE(
    "checkpoints: a save failing at any file operation leaves no damaged checkpoint and resume is "
    "exact",
    "[train][faults]") {
  Disarm disarm;
  const auto reference = run(tiny_run(fresh_dir("faults-reference")));
  REQUIRE(reference.losses.size() == 6);

  // How many file operations one save makes.
  const fs::path count_dir = fresh_dir("faults-count");
  auto counting = tiny_run(count_dir);
  counting.stop_after = 2;
  run(counting);
  auto second = tiny_run(count_dir);
  second.resume = count_dir.string();
  second.stop_after = 4;
  const std::int64_t before = train::IoFaults::operations();
  run(second);
  const std::int64_t per_save = train::IoFaults::operations() - before;
  REQUIRE(per_save >= 20);  // 4 files x (write, flush, fsync, close, rename, sync) + the folder's

  for (std::int64_t n = 1; n <= per_save; ++n) {
    CAPTURE(n);
    const fs::path dir = fresh_dir("faults-n");
    auto a = tiny_run(dir);
    a.stop_after = 2;
    run(a);
    auto b = tiny_run(dir);
    b.resume = dir.string();
    b.stop_after = 4;
    train::IoFaults::fail_at(n);
    const std::string error = error_of([&] { run(b); });
    train::IoFaults::reset();
    CHECK_FALSE(error.empty());

    // The previous checkpoint survives whole, and whatever the run folder resolves to is usable.
    CHECK_NOTHROW(train::validate_checkpoint(dir / "ckpt-2"));
    const fs::path picked = train::resolve_checkpoint(dir);
    CHECK_NOTHROW(train::validate_checkpoint(picked));
    const auto step = *train::checkpoint_step(picked);
    CHECK((step == 2 || step == 4));

    // Leftovers are put right, and the run continues exactly as if nothing had happened.
    train::recover_checkpoints(dir);
    for (const auto& e : fs::directory_iterator(dir))
      CHECK_FALSE(e.path().filename().string().starts_with(".ckpt"));
    auto c = tiny_run(dir);
    c.resume = dir.string();
    const auto resumed = run(c);
    REQUIRE(resumed.losses.size() == static_cast<std::size_t>(6 - step));
    for (std::size_t i = 0; i < resumed.losses.size(); ++i)
      CHECK(resumed.losses[i] == reference.losses[static_cast<std::size_t>(step) + i]);
  }
}

TEST_CASE("checkpoints: recover_checkpoints restores an .old whose save stopped between renames",
          "[train][faults]") {
  const fs::path dir = fresh_dir("faults-recover");
  auto o = tiny_run(dir);
  o.stop_after = 2;
  run(o);
  // A save of ckpt-2 that moved the old one aside and stopped: .old holds the good checkpoint.
  fs::rename(dir / "ckpt-2", dir / ".ckpt-2.old");
  fs::create_directories(dir / ".ckpt-2.tmp");
  std::ofstream(dir / ".ckpt-2.tmp" / "model.safetensors") << "torn";
  const auto done = train::recover_checkpoints(dir);
  CHECK(done.size() == 2);
  CHECK(fs::exists(dir / "ckpt-2"));
  CHECK_FALSE(fs::exists(dir / ".ckpt-2.old"));
  CHECK_FALSE(fs::exists(dir / ".ckpt-2.tmp"));
  CHECK_NOTHROW(train::validate_checkpoint(dir / "ckpt-2"));
}

TEST_CASE("checkpoints: a damaged checkpoint is refused whole and a run folder falls back past it",
          "[train][faults]") {
  const fs::path dir = fresh_dir("faults-damaged");
  auto o = tiny_run(dir);
  o.stop_after = 4;
  run(o);
  REQUIRE(train::resolve_checkpoint(dir) == dir / "ckpt-4");

  auto damage = [&](const std::string& file, const std::function<void(nlohmann::json&)>& edit) {
    const fs::path p = dir / "ckpt-4" / file;
    auto j = train::read_json(p);
    const auto saved = j;
    edit(j);
    std::ofstream(p) << j.dump();
    std::vector<std::string> skipped;
    const fs::path picked = train::resolve_checkpoint(dir, &skipped);
    std::ofstream(p) << saved.dump();
    CHECK(picked == dir / "ckpt-2");
    REQUIRE(skipped.size() == 1);
    return skipped[0];
  };
  CHECK_THAT(damage("config.json", [](auto& j) { j["fathom"]["model"]["layers"] = 1; }),
             HasSubstring("skipped ckpt-4"));
  CHECK_THAT(damage("config.json", [](auto& j) { j["num_hidden_layers"] = 3; }),
             HasSubstring("disagree with the fathom fields"));
  CHECK_THAT(damage("trainer_state.json", [](auto& j) { j["run"]["policy"] = "post-ln"; }),
             HasSubstring("the run's policy \"post-ln\" disagrees"));
  CHECK_THAT(damage("trainer_state.json",
                    [](auto& j) {
                      j["step"] = 2;
                      j["optimizer_step"] = 2;
                    }),
             HasSubstring("expected step 4 (the folder's name), got 2"));
  CHECK_THAT(damage("trainer_state.json", [](auto& j) { j["step"] = -5; }), HasSubstring("got -5"));

  // An empty file (a save on a full disk before the writes were checked).
  std::ofstream(dir / "ckpt-4" / "trainer_state.json", std::ios::trunc).close();
  std::vector<std::string> skipped;
  CHECK(train::resolve_checkpoint(dir, &skipped) == dir / "ckpt-2");
  CHECK_THAT(skipped.at(0), HasSubstring("trainer_state.json' is empty"));
  CHECK_THROWS_WITH(train::resolve_checkpoint(dir / "ckpt-4"), HasSubstring("cannot be used"));

  // A NaN weight.
  auto file = train::read_safetensors(dir / "ckpt-2" / "model.safetensors");
  auto values = train::tensor_values<float>(file.tensors[0]);
  values[0] = NAN;
  file.tensors[0] = train::make_tensor_record<float>(file.tensors[0].name, file.tensors[0].shape,
                                                     std::span<const float>(values));
  train::write_safetensors(dir / "ckpt-2" / "model.safetensors", file.tensors, file.metadata);
  CHECK_THROWS_WITH(train::resolve_checkpoint(dir), HasSubstring("non-finite value"));
}

TEST_CASE("run folders: one process at a time, and metrics cut back to a checkpoint",
          "[train][faults]") {
  const fs::path dir = fresh_dir("faults-lock");
  fs::create_directories(dir);
  {
    train::FolderLock first(dir, "fathom-train");
    CHECK(first.held());
    CHECK_THROWS_WITH(train::FolderLock(dir, "fathom-train"),
                      HasSubstring("is in use by process") && HasSubstring("(fathom-train)"));
  }
  train::FolderLock again(dir, "fathom-train");  // released with the first
  CHECK(again.held());

  std::ofstream(dir / "metrics.jsonl")
      << "{\"step\":1,\"loss\":3}\n{\"step\":2,\"val_loss\":2.5}\n"
         "{\"step\":3,\"loss\":2}\n{\"step\":4,\"loss\":1}\n{\"step\":5,\"lo";
  CHECK(train::truncate_metrics(dir / "metrics.jsonl", 2) == 3);
  std::ifstream in(dir / "metrics.jsonl");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == "{\"step\":1,\"loss\":3}\n{\"step\":2,\"val_loss\":2.5}\n");
  CHECK(train::truncate_metrics(dir / "metrics.jsonl", 2) == 0);
}
