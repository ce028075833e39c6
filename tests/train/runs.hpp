// What the training tests share: an emptied folder for a run, the weights a checkpoint holds, the
// options of a short CPU run of a small Llama that each test completes with its own schedule, and
// those of the [cuda][train] loss-curve runs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fathom/nn/presets.hpp"
#include "fathom/train/options.hpp"
#include "fathom/train/safetensors.hpp"
#include "nn/small_model.hpp"

namespace fathom::test {

// The mean of each whole window of `window` consecutive losses (a loss curve, smoothed).
inline std::vector<double> window_means(const std::vector<double>& losses, std::size_t window) {
  std::vector<double> out;
  for (std::size_t i = 0; i + window <= losses.size(); i += window) {
    double s = 0;
    for (std::size_t j = i; j < i + window; ++j) s += losses[j];
    out.push_back(s / static_cast<double>(window));
  }
  return out;
}

// fathom-test-<name> under the system temp directory, removed with what it held. Names start with
// the test file's name: ctest runs the files side by side.
inline std::filesystem::path fresh_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() / ("fathom-test-" + name);
  std::filesystem::remove_all(p);
  return p;
}

// Every weight of a float checkpoint's model, in the order of its file.
inline std::vector<float> weights_of(const std::filesystem::path& ckpt) {
  auto f = train::read_safetensors(ckpt / "model.safetensors");
  std::vector<float> all;
  for (const auto& r : f.tensors) {
    auto v = train::tensor_values<float>(r);
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

// The sizes of a small run.
struct SmallRun {
  int layers, d_model, d_ff, max_seq;  // of small_model
  std::int64_t seq_len, steps, builtin_tokens;
};

// Options for a quiet CPU run of `s` at batch 2 writing to `out`, logging every step, without
// evaluation (eval_every 0, one batch when asked).
inline train::TrainOptions small_run_options(const std::filesystem::path& out, const SmallRun& s) {
  train::TrainOptions o;
  o.model = small_model(s.layers, s.d_model, s.d_ff, s.max_seq);
  o.seq_len = s.seq_len;
  o.batch = 2;
  o.steps = s.steps;
  o.eval_every = 0;
  o.eval_batches = 1;
  o.log_every = 1;
  o.builtin_tokens = s.builtin_tokens;
  o.out = out.string();
  o.quiet = true;
  return o;
}

// The loss-curve runs of the [cuda][train] tests (bf16 against fp32, fp8 against bf16): `preset`,
// 300 steps of 16 x 128 on the built-in corpus, lr 2e-3 on a cosine schedule (30 warmup steps,
// down to 0.1), seed 11, quiet, writing to fresh_dir(name).
inline train::TrainOptions curve_options(const std::string& preset, const std::string& name) {
  train::TrainOptions o;
  o.model = nn::preset(preset);
  o.seq_len = 128;
  o.batch = 16;
  o.steps = 300;
  o.lr = 2e-3;
  o.schedule = train::CosineSchedule{30, 0.1};
  o.eval_every = 0;
  o.eval_batches = 2;
  o.log_every = 50;
  o.seed = 11;
  o.quiet = true;
  o.out = fresh_dir(name).string();
  return o;
}

}  // namespace fathom::test
