// TrainOptions: everything a training run is told (the flags of fathom-train), apart from the
// code that runs it, so programs can parse options without compiling the training loop.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fathom/nn/config.hpp"

namespace fathom::train {

// Everything a training run is told. Defaults are those of fathom-train.
struct TrainOptions {
  nn::ModelConfig model;         // resolved sizes (preset plus overrides)
  std::string policy = "pre-ln"; // recorded in checkpoints; the type is chosen by the caller
  nlohmann::json policy_options = nlohmann::json::object();  // e.g. DeepNorm's alpha and beta
  std::string data;              // token-shard glob; empty: the built-in corpus
  std::string val_data;          // empty: the built-in corpus's validation split, or none
  std::int64_t seq_len = 256;
  std::int64_t steps = 200;
  std::int64_t batch = 8;
  std::int64_t grad_accum = 1;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;
  std::int64_t warmup = -1;      // -1: 10% of the steps
  std::string schedule = "cosine";  // cosine | constant | wsd
  std::string optimizer = "adamw";  // adamw | adam | sgd
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, momentum = 0.9;
  double clip = 1.0;             // max global gradient norm; 0: off
  std::string precision = "fp32";
  std::uint64_t seed = 0;
  std::int64_t eval_every = 100; // 0: only at the end
  std::int64_t eval_batches = 8;
  std::int64_t save_every = 0;   // 0: only at the end
  std::int64_t log_every = 10;
  std::string out = "runs/run";
  std::string resume;            // a ckpt-STEP folder or a run folder
  bool skip_nonfinite = false;   // skip steps whose loss is NaN/Inf instead of stopping
  std::int64_t builtin_tokens = 2'000'000;  // size of the built-in corpus's training split
  bool live_progress = true;     // redraw one line on a terminal
  bool quiet = false;            // no progress output at all (tests)
  std::int64_t stop_after = -1;  // stop (with a checkpoint) after this step; -1: run to `steps`
  std::int64_t diag_every = 0;   // call the periodic hook every N steps (0: never)
};


}  // namespace fathom::train
