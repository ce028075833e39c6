// A run folder holds one run: a second run into a folder that holds one is refused and leaves it
// byte for byte as it was, unless it resumes that run or replaces it (overwrite), which removes the
// run's files only, once the new run is set up.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "fathom/nn/presets.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/train/run_folder.hpp"
#include "fathom/train/trainer.hpp"
#include "support/catch.hpp"
#include "train/runs.hpp"

using namespace fathom;
namespace fs = std::filesystem;
using fathom::test::fresh_dir;

namespace {

train::TrainOptions small_run(const fs::path& out) {
  auto o = test::small_run_options(out, {.layers = 1,
                                         .d_model = 16,
                                         .d_ff = 32,
                                         .max_seq = 16,
                                         .seq_len = 16,
                                         .steps = 4,
                                         .builtin_tokens = 4000});
  o.save_every = 2;
  return o;
}

train::TrainResult train_run(const train::TrainOptions& o) {
  return train::train<nn::Llama, policy::PreLN, float, Cpu>(o);
}

std::string bytes_of(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Every file under dir (the lock file aside), by path relative to dir, with its bytes.
std::map<std::string, std::string> contents(const fs::path& dir) {
  std::map<std::string, std::string> all;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != ".lock")
      all[fs::relative(e.path(), dir).string()] = bytes_of(e.path());
  return all;
}

std::vector<std::string> names(const std::vector<fs::path>& files) {
  std::vector<std::string> n;
  for (const auto& f : files) n.push_back(f.filename().string());
  return n;
}

std::vector<std::int64_t> logged_steps(const fs::path& dir) {
  std::ifstream in(dir / "metrics.jsonl");
  std::vector<std::int64_t> steps;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) steps.push_back(j.at("step").get<std::int64_t>());
  }
  return steps;
}

}  // namespace

TEST_CASE("run folders: run_files lists a run's files in order and nothing else", "[train]") {
  const auto dir = fresh_dir("run-folder-files");
  CHECK(train::run_files(dir).empty());  // no folder
  fs::create_directories(dir / "ckpt-10");
  fs::create_directories(dir / "ckpt-9");
  fs::create_directories(dir / ".ckpt-11.tmp");
  fs::create_directories(dir / "ckpt-x");           // not a step
  fs::create_directories(dir / "metrics.jsonl.d");  // not the metrics file
  std::ofstream(dir / "ckpt-12") << "a file, not a checkpoint folder";
  std::ofstream(dir / "diagnose.json") << "{}";
  std::ofstream(dir / ".lock");
  CHECK(names(train::run_files(dir)) ==
        std::vector<std::string>{"ckpt-9", "ckpt-10", ".ckpt-11.tmp"});
  std::ofstream(dir / "metrics.jsonl") << "";
  fs::create_directory_symlink(dir / "ckpt-9", dir / "ckpt-13");  // a link is never a run's
  CHECK(names(train::run_files(dir)) ==
        std::vector<std::string>{"metrics.jsonl", "ckpt-9", "ckpt-10", ".ckpt-11.tmp"});

  std::vector<fs::path> many;
  for (int i = 1; i <= 8; ++i) many.push_back(dir / train::checkpoint_name(i));
  CHECK(train::describe_run_files(many) == "ckpt-1, ckpt-2, ckpt-3, ckpt-4 and 4 more (8 in all)");
  many.resize(6);
  CHECK(train::describe_run_files(many) == "ckpt-1, ckpt-2, ckpt-3, ckpt-4, ckpt-5, ckpt-6");
}

TEST_CASE("run folders: a second run into a folder holding one is refused and changes nothing",
          "[train]") {
  const auto dir = fresh_dir("run-folder-refused");
  const auto o = small_run(dir);
  train_run(o);
  REQUIRE(train::is_complete_checkpoint(dir / "ckpt-2"));
  REQUIRE(train::is_complete_checkpoint(dir / "ckpt-4"));
  const auto before = contents(dir);
  REQUIRE(before.count("metrics.jsonl") == 1);

  try {
    train_run(o);
    FAIL("expected ExistingRun");
  } catch (const train::ExistingRun& e) {
    CHECK(e.option() == "out");
    CHECK(e.folder() == dir);
    CHECK(e.files() == "metrics.jsonl, ckpt-2, ckpt-4");
    CHECK(std::string(e.what()) ==
          "TrainOptions::out: '" + dir.string() +
              "' already holds a run (metrics.jsonl, ckpt-2, ckpt-4); set resume to continue it "
              "or overwrite to replace it");
  }
  CHECK(contents(dir) == before);

  // Resuming another folder's checkpoint into it would mix two runs as well.
  const auto other = fresh_dir("run-folder-refused-other");
  auto a = small_run(other);
  a.stop_after = 2;
  train_run(a);
  auto b = small_run(dir);
  b.resume = (other / "ckpt-2").string();
  CHECK_THROWS_AS(train_run(b), train::ExistingRun);
  CHECK(contents(dir) == before);

  // Replacing the run that is being resumed would remove the checkpoint it loads.
  auto c = small_run(dir);
  c.resume = (dir / "ckpt-2").string();
  c.overwrite = true;
  try {
    train_run(c);
    FAIL("expected OptionError");
  } catch (const train::OptionError& e) {
    CHECK(e.option() == "overwrite");
    CHECK_THAT(e.reason(), HasSubstring("cannot be combined with resuming"));
  }
  CHECK(contents(dir) == before);

  // Only the leftovers of an interrupted save: a run as well.
  const auto torn = fresh_dir("run-folder-refused-torn");
  fs::create_directories(torn / ".ckpt-2.tmp");
  CHECK_THROWS_AS(train_run(small_run(torn)), train::ExistingRun);
  CHECK(fs::exists(torn / ".ckpt-2.tmp"));
}

TEST_CASE("run folders: resume continues the run in its folder", "[train]") {
  const auto dir = fresh_dir("run-folder-resume");
  auto o = small_run(dir);
  o.stop_after = 2;
  train_run(o);
  auto b = small_run(dir);
  b.resume = dir.string();
  const auto r = train_run(b);
  CHECK(r.first_step == 2);
  CHECK(r.steps_done == 4);
  CHECK(logged_steps(dir) == std::vector<std::int64_t>{1, 2, 3, 4});
  auto c = small_run(dir);
  c.resume = (dir / "ckpt-4").string() + "/";  // a checkpoint of the folder, as typed
  CHECK(train_run(c).already_complete);
}

TEST_CASE("run folders: overwrite replaces the run's files only, once the new run is set up",
          "[train]") {
  const auto dir = fresh_dir("run-folder-overwrite");
  train_run(small_run(dir));
  fs::create_directories(dir / ".ckpt-6.tmp");  // a save interrupted later
  std::ofstream(dir / ".ckpt-6.tmp" / "model.safetensors.tmp") << "torn";
  std::ofstream(dir / "diagnose.json") << "{\"kept\": true}";
  fs::create_directories(dir / "plots");
  std::ofstream(dir / "plots" / "loss.png") << "png";
  const auto before = contents(dir);

  SECTION("a setup that fails removes nothing") {
    auto o = small_run(dir);
    o.overwrite = true;
    o.data = (dir / "no-such-shards_*.bin").string();
    CHECK_THROWS_WITH(train_run(o), HasSubstring("no-such-shards_"));
    CHECK(contents(dir) == before);
  }
  SECTION("a checkpoint holding a file fathom did not write is refused whole") {
    std::ofstream(dir / "ckpt-4" / "notes.txt") << "mine";
    const auto with_notes = contents(dir);
    auto o = small_run(dir);
    o.overwrite = true;
    try {
      train_run(o);
      FAIL("expected OptionError");
    } catch (const train::OptionError& e) {
      CHECK(e.option() == "overwrite");
      CHECK_THAT(e.reason(), HasSubstring((dir / "ckpt-4" / "notes.txt").string()) &&
                                 HasSubstring("is not a file fathom writes into a checkpoint"));
    }
    CHECK(contents(dir) == with_notes);
  }
  SECTION("the old run's files go, other files stay") {
    auto o = small_run(dir);
    o.overwrite = true;
    o.steps = 3;
    o.save_every = 0;
    o.seed = 7;
    const auto r = train_run(o);
    CHECK(r.steps_done == 3);
    CHECK(names(train::run_files(dir)) == std::vector<std::string>{"metrics.jsonl", "ckpt-3"});
    CHECK(logged_steps(dir) == std::vector<std::int64_t>{1, 2, 3});
    CHECK(bytes_of(dir / "diagnose.json") == "{\"kept\": true}");
    CHECK(bytes_of(dir / "plots" / "loss.png") == "png");
    CHECK(train::load_checkpoint(dir).state().seed == 7);
  }
}

TEST_CASE("run folders: remove_run_files says what it removed and what it kept", "[train]") {
  const auto dir = fresh_dir("run-folder-remove");
  fs::create_directories(dir / "ckpt-2");
  std::ofstream(dir / "ckpt-2" / "model.safetensors") << "w";
  std::ofstream(dir / "ckpt-2" / "tokenizer.model") << "t";
  std::ofstream(dir / "metrics.jsonl") << "{}\n";
  std::ofstream(dir / "train.log") << "log";
  const auto files = train::check_run_folder(dir, "", true);
  CHECK(names(files) == std::vector<std::string>{"metrics.jsonl", "ckpt-2"});
  CHECK(train::remove_run_files(dir, files) == "replaced the run in " + dir.string() +
                                                   ": removed metrics.jsonl, ckpt-2; kept "
                                                   "train.log (not the run's files)");
  CHECK(train::run_files(dir).empty());
  CHECK(fs::exists(dir / "train.log"));
}

TEST_CASE("run folders: a new path, an empty folder or one without a run is accepted", "[train]") {
  const auto fresh = fresh_dir("run-folder-new") / "nested" / "run";
  CHECK(train::check_run_folder(fresh, "", false).empty());
  CHECK(train_run(small_run(fresh)).steps_done == 4);

  const auto empty = fresh_dir("run-folder-empty");
  fs::create_directories(empty);
  CHECK(train_run(small_run(empty)).steps_done == 4);

  const auto others = fresh_dir("run-folder-others");
  fs::create_directories(others);
  std::ofstream(others / "README") << "notes";
  std::ofstream(others / ".lock");  // a lock file left by an earlier process holds no run
  CHECK(train_run(small_run(others)).steps_done == 4);
  CHECK(bytes_of(others / "README") == "notes");

  // overwrite on a folder without a run has nothing to remove.
  const auto nothing = fresh_dir("run-folder-overwrite-nothing");
  auto o = small_run(nothing);
  o.overwrite = true;
  CHECK(train_run(o).steps_done == 4);
}
