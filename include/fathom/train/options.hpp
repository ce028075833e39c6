// TrainOptions: everything a training run is told, as typed values (the optimizer's rule, the
// schedule), apart from the code that runs it, so programs can parse options without compiling the
// training loop; and validate(), which checks them before anything is read or written.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/optim/rules.hpp"
#include "fathom/optim/schedule.hpp"
#include "fathom/train/errors.hpp"

namespace fathom::train {

// The learning-rate schedules a run can follow, as multiples of TrainOptions::lr. Their lengths
// are in steps of the run: the decay ends at TrainOptions::steps. A warmup of -1 is 10% of the
// steps.
struct CosineSchedule {  // linear warmup, cosine decay to min_lr_ratio (the paper's)
  std::int64_t warmup = -1;
  double min_lr_ratio = 0.1;
};
struct ConstantSchedule {};  // the peak rate at every step, no warmup
struct WsdSchedule {         // warmup, the peak rate, then linear decay over the last 20% of steps
  std::int64_t warmup = -1;
  double min_lr_ratio = 0.1;
};
using Schedule = std::variant<CosineSchedule, ConstantSchedule, WsdSchedule>;

// The optimizer's update rule with its hyperparameters (optim/rules.hpp). Adam is AdamW with
// decoupled = false and weight_decay 0 (optim::Adam).
using OptimizerRule = std::variant<optim::AdamW, optim::Sgd>;

// fathom-train's default rule: AdamW without weight decay.
inline optim::AdamW default_rule() {
  optim::AdamW r;
  r.weight_decay = 0.0;
  return r;
}

// Everything a training run is told. Defaults are those of fathom-train. The element type (and so
// the precision) and the device are template parameters of train(), not options.
struct TrainOptions {
  nn::ModelConfig model;          // resolved sizes (preset plus overrides)
  std::string policy = "pre-ln";  // recorded in checkpoints; the type is chosen by the caller
  nlohmann::json policy_options = nlohmann::json::object();  // e.g. DeepNorm's alpha and beta
  std::string data;      // token-shard glob; empty: the built-in corpus
  std::string val_data;  // empty: the built-in corpus's validation split, or none
  // The tokenizer of the data, recorded in checkpoints: "byte" (the built-in corpus, or shards of
  // fathom-prepare's byte tokenizer), "sentencepiece" (its model file is copied into each
  // checkpoint as tokenizer.model) or "unknown" (shards without fathom-prepare's dataset.json).
  std::string tokenizer = "byte";
  std::string tokenizer_model;  // the sentencepiece model file, for "sentencepiece"
  std::int64_t seq_len = 256;
  std::int64_t steps = 200;
  std::int64_t batch = 8;       // sequences per micro-batch
  std::int64_t grad_accum = 1;  // micro-batches per optimizer step
  double lr = 1e-3;             // peak learning rate
  Schedule schedule = CosineSchedule{};
  OptimizerRule optimizer = default_rule();
  double clip = 1.0;  // max global gradient norm; 0: off
  std::uint64_t seed = 0;
  std::int64_t eval_every = 100;  // 0: only at the end
  std::int64_t eval_batches = 8;
  std::int64_t save_every = 0;  // 0: only at the end
  std::int64_t log_every = 10;
  // The run folder. One that holds another run (metrics.jsonl, ckpt-STEP) is refused unless
  // `resume` continues that run or `overwrite` replaces it (run_folder.hpp, check_run_folder).
  std::string out = "runs/run";
  std::string resume;           // a ckpt-STEP folder or a run folder
  bool overwrite = false;       // replace a run in `out`: its files go once the run is set up
  bool skip_nonfinite = false;  // skip steps whose loss is NaN/Inf instead of stopping
  std::int64_t builtin_tokens = 2'000'000;  // size of the built-in corpus's training split
  bool live_progress = true;                // redraw one line on a terminal
  bool quiet = false;                       // no progress output at all (tests)
  std::int64_t stop_after = -1;  // stop (with a checkpoint) after this step; -1: run to `steps`
  std::int64_t diag_every = 0;   // call the periodic hook every N steps (0: never)
};

// The warmup of a schedule in steps (-1 resolved to 10% of `steps`).
inline std::int64_t warmup_steps(std::int64_t warmup, std::int64_t steps) {
  return warmup >= 0 ? warmup : steps / 10;
}

// The multiple of the peak learning rate at (0-based) `step` of a run of `steps` steps.
inline double lr_factor(const Schedule& s, std::int64_t step, std::int64_t steps) {
  return std::visit(
      [&](const auto& k) -> double {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, ConstantSchedule>) {
          return 1.0;
        } else if constexpr (std::is_same_v<K, WsdSchedule>) {
          return optim::WarmupStableDecay{warmup_steps(k.warmup, steps), steps - steps / 5, steps,
                                          k.min_lr_ratio}
              .factor(step);
        } else {
          return optim::WarmupCosine{std::min(warmup_steps(k.warmup, steps), steps), steps,
                                     k.min_lr_ratio}
              .factor(step);
        }
      },
      s);
}

// Throws OptionError naming the first member of `o` that is out of range. Files (data, out,
// resume) are checked where they are used.
inline void validate(const TrainOptions& o) {
  FATHOM_CHECK_OPTION(o.steps >= 1, "steps", "expected at least 1, got " << o.steps);
  FATHOM_CHECK_OPTION(o.batch >= 1, "batch", "expected at least 1, got " << o.batch);
  FATHOM_CHECK_OPTION(o.grad_accum >= 1, "grad_accum", "expected at least 1, got " << o.grad_accum);
  FATHOM_CHECK_OPTION(
      o.seq_len >= 1 && o.seq_len <= o.model.max_seq, "seq_len",
      "expected 1.." << o.model.max_seq << " (the model's max_seq), got " << o.seq_len);
  FATHOM_CHECK_OPTION(o.lr > 0 && std::isfinite(o.lr), "lr",
                      "expected a positive number, got " << o.lr);
  FATHOM_CHECK_OPTION(o.clip >= 0 && std::isfinite(o.clip), "clip",
                      "expected 0 (off) or a positive number, got " << o.clip);
  FATHOM_CHECK_OPTION(o.log_every >= 1, "log_every", "expected at least 1, got " << o.log_every);
  FATHOM_CHECK_OPTION(o.eval_every >= 0, "eval_every",
                      "expected 0 (at the end only) or more, got " << o.eval_every);
  FATHOM_CHECK_OPTION(o.save_every >= 0, "save_every",
                      "expected 0 (at the end only) or more, got " << o.save_every);
  FATHOM_CHECK_OPTION(o.eval_batches >= 0, "eval_batches",
                      "expected 0 (no evaluation) or more, got " << o.eval_batches);
  FATHOM_CHECK_OPTION(o.diag_every >= 0, "diag_every",
                      "expected 0 (never) or more, got " << o.diag_every);
  FATHOM_CHECK_OPTION(o.builtin_tokens >= 1, "builtin_tokens",
                      "expected at least 1, got " << o.builtin_tokens);
  // The token counts of a step, of the whole run and of an evaluation must fit in 64 bits (the
  // run's token counter, the built-in validation split's size).
  std::int64_t step_tokens = 0, run_tokens = 0, eval_tokens = 0;
  FATHOM_CHECK_OPTION(!__builtin_mul_overflow(o.batch, o.seq_len + 1, &step_tokens) &&
                          !__builtin_mul_overflow(step_tokens, o.eval_batches, &eval_tokens) &&
                          !__builtin_mul_overflow(step_tokens, o.grad_accum, &step_tokens) &&
                          !__builtin_mul_overflow(step_tokens, o.steps, &run_tokens),
                      "batch",
                      "batch " << o.batch << " x seq_len " << o.seq_len << " x grad_accum "
                               << o.grad_accum << " x steps " << o.steps
                               << ": the run's token count does not fit in 64 bits");
  std::visit(
      [&](const auto& k) {
        using K = std::decay_t<decltype(k)>;
        if constexpr (!std::is_same_v<K, ConstantSchedule>) {
          FATHOM_CHECK_OPTION(
              k.warmup >= -1, "schedule",
              "expected a warmup of 0 or more steps (or -1: 10%), got " << k.warmup);
          FATHOM_CHECK_OPTION(
              k.min_lr_ratio >= 0 && k.min_lr_ratio <= 1, "schedule",
              "expected a final learning rate ratio in [0, 1], got " << k.min_lr_ratio);
        }
      },
      o.schedule);
  std::visit(
      [&](const auto& r) {
        FATHOM_CHECK_OPTION(r.weight_decay >= 0 && std::isfinite(r.weight_decay), "optimizer",
                            "expected a weight decay >= 0, got " << r.weight_decay);
      },
      o.optimizer);
}

}  // namespace fathom::train
