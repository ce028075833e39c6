// The training loop behind fathom-train, in named parts: the run's data, evaluation, the run log
// (metrics.jsonl and progress), resuming from and saving checkpoints, and train(), which puts them
// around TrainStep (step.hpp). Generic over the element type and the device; the architecture and
// norm policy sit behind nn::LanguageModel, and programs pick all of them from strings
// (examples/train).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/autograd/var.hpp"
#include "fathom/data/corpus.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/data/tokenizer.hpp"
#include "fathom/nn/decoder_lm.hpp"
#include "fathom/nn/language_model.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "fathom/train/metrics.hpp"
#include "fathom/train/options.hpp"
#include "fathom/train/progress.hpp"
#include "fathom/train/run_folder.hpp"
#include "fathom/train/step.hpp"

namespace fathom::train {

// The model interface lives in nn/; these names keep code written against train:: working.
template <class T, DeviceTag D>
using LanguageModel = nn::LanguageModel<T, D>;
template <class Arch, class Policy, class T, DeviceTag D>
using DecoderModel = nn::DecoderModel<Arch, Policy, T, D>;

// Called every TrainOptions::diag_every steps with the step just finished and the metrics log
// (fathom-train logs per-layer variance through it; the diagnostics layer sits above this one).
using PeriodicHook = std::function<void(std::int64_t step, MetricsLog& metrics)>;

// What a layer above the trainer plugs into a run (data parallelism): a periodic hook, hooks
// around each micro-batch's backward, this process's share of every batch, and the parameter
// update (by default LocalUpdate of TrainOptions::optimizer, clipped at TrainOptions::clip).
//
// With shard.world > 1 (data parallelism, train/data_parallel.hpp) every rank runs train() with
// the same options: each reads its own rows of every global batch (o.batch rows a rank, so the
// global batch is o.batch x world x o.grad_accum), rank 0 alone writes metrics and checkpoints,
// and combine_losses turns each rank's losses into the mean over ranks (every rank the same).
template <class T, DeviceTag D>
struct TrainHooks {
  PeriodicHook periodic;
  StepHooks<T, D>* step = nullptr;
  Shard shard;
  std::function<std::unique_ptr<ParameterUpdate<T, D>>(std::vector<nn::NamedParameter<T, D>>&,
                                                       const TrainOptions&)>
      make_update;
  std::function<void(std::vector<double>& losses)> combine_losses;
  // Called once before the first step with the model's fp8 amax histories (delayed scaling), if
  // it has any. Data parallelism keeps them the same on every rank (the maximum over the ranks
  // after each step), so that the one set a checkpoint holds continues every rank's run; with
  // shard.world > 1 a model with histories needs it.
  std::function<void(const std::vector<nn::NamedFp8History<D>>&)> share_fp8_histories;
};

struct TrainResult {
  std::int64_t first_step = 0;  // the step the run started from (0, or the resumed step)
  std::int64_t steps_done = 0;  // the last step finished
  std::vector<double> losses;   // training loss of each step run here (skipped steps left out)
  double first_loss = NAN, last_loss = NAN, final_val_loss = NAN;
  double tokens_per_s = 0.0, wall_s = 0.0;
  std::int64_t tokens = 0;  // tokens trained on, in all (counting resumed steps)
  std::int64_t skipped_steps = 0;
  std::filesystem::path last_checkpoint;
  bool already_complete = false;  // resumed at the run's last step: nothing ran
};

namespace detail {

// What identifies a run for resuming: its policy, precision and model sizes.
template <class T>
nlohmann::json run_identity(const TrainOptions& o) {
  return {{"policy", o.policy}, {"precision", Precision<T>::name}, {"model", o.model}};
}

template <class T>
HfModelConfig hf_config_of(const nn::ModelConfig& c) {
  HfModelConfig h;
  h.arch = std::string(nn::to_string(c.arch));
  h.layers = c.layers;
  h.d_model = c.d_model;
  h.heads = c.heads;
  h.d_ff = c.d_ff;
  h.vocab = c.vocab;
  h.max_seq = c.max_seq;
  h.norm_eps = c.norm_eps;
  h.rope_theta = c.rope_theta;
  h.tied = c.tied;
  h.dtype = std::is_same_v<T, bf16> ? "bfloat16" : "float32";
  return h;
}

// Fails with one line naming the first field in which a checkpoint's run differs from this one.
template <class = void>
void check_same_run(const nlohmann::json& saved, const nlohmann::json& now,
                    const std::string& ckpt) {
  for (const char* key : {"policy", "precision"}) {
    FATHOM_CHECK(saved.value(key, nlohmann::json()) == now.at(key),
                 "cannot resume from '" << ckpt << "': it was trained with " << key << " "
                                        << saved.value(key, nlohmann::json()).dump()
                                        << ", this run has " << now.at(key).dump());
  }
  const auto& a = saved.at("model");
  const auto& b = now.at("model");
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (it.key() == "name") continue;
    FATHOM_CHECK(a.contains(it.key()) && a.at(it.key()) == it.value(),
                 "cannot resume from '"
                     << ckpt << "': it was trained with " << it.key() << " = "
                     << (a.contains(it.key()) ? a.at(it.key()).dump() : "(missing)")
                     << ", this run has " << it.key() << " = " << it.value().dump());
  }
}

}  // namespace detail

// Setup: the run folder o.out, created and checked writable (OptionError "out" otherwise).
inline std::filesystem::path prepare_out_dir(const TrainOptions& o) {
  const std::filesystem::path dir(o.out);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  FATHOM_CHECK_OPTION(!ec, "out", "cannot create '" << dir.string() << "': " << ec.message());
  const auto probe = dir / ".fathom-write-test";
  {
    std::ofstream f(probe);
    f << "ok";
    FATHOM_CHECK_OPTION(f.good(), "out", "cannot write into '" << dir.string() << "'");
  }
  std::filesystem::remove(probe, ec);
  return dir;
}

// The data a run reads: the training source, and the validation source's description.
struct RunData {
  data::TokenSource train;
  std::optional<std::vector<std::int32_t>> builtin_val;  // built-in corpus validation tokens
  std::string val_pattern;                               // or shards
};

// Rank `shard.rank` of `shard.world` reads its own o.batch rows of each global batch.
inline RunData make_run_data(const TrainOptions& o, const Shard& shard = {}) {
  data::SamplerOptions so;
  so.batch = o.batch;
  so.seq_len = o.seq_len;
  so.seed = o.seed;
  so.rank = shard.rank;
  so.ranks = shard.world;
  so.order = data::SampleOrder::random;
  so.vocab = static_cast<std::uint32_t>(o.model.vocab);
  if (o.data.empty()) {
    auto tokens = data::builtin_corpus(data::Split::train,
                                       static_cast<std::size_t>(o.builtin_tokens), o.seed);
    RunData d{data::TokenSource::from_tokens(tokens, so, "built-in corpus (train)"), std::nullopt,
              o.val_data};
    if (o.val_data.empty())
      d.builtin_val = data::builtin_corpus(data::Split::validation,
                                           static_cast<std::size_t>(std::max<std::int64_t>(
                                               o.eval_batches * o.batch * (o.seq_len + 1), 65536)),
                                           o.seed);
    return d;
  }
  return RunData{data::TokenSource::from_pattern(o.data, so), std::nullopt, o.val_data};
}

// Evaluation: the mean loss over the first o.eval_batches batches of the validation data (the
// same batches each time); NaN without validation data.
template <class T, DeviceTag D>
double evaluate(const nn::LanguageModel<T, D>& model, const RunData& d, const TrainOptions& o) {
  if (!d.builtin_val && d.val_pattern.empty()) return NAN;
  data::SamplerOptions so;
  so.batch = o.batch;
  so.seq_len = o.seq_len;
  so.order = data::SampleOrder::sequential;
  so.vocab = static_cast<std::uint32_t>(o.model.vocab);
  data::TokenSource val = d.builtin_val ? data::TokenSource::from_tokens(
                                              *d.builtin_val, so, "built-in corpus (validation)")
                                        : data::TokenSource::from_pattern(d.val_pattern, so);
  const std::int64_t n =
      std::min<std::int64_t>(o.eval_batches, static_cast<std::int64_t>(val.batches_per_pass()));
  autograd::NoGradGuard no_grad;
  double sum = 0.0;
  data::Batch b;
  for (std::int64_t i = 0; i < n; ++i) {
    val.next(b);
    auto [x, y] = to_device<D>(b);
    sum += static_cast<double>(model.loss(x, y).value().item());
  }
  return n > 0 ? sum / static_cast<double>(n) : NAN;
}

// Logging: metrics.jsonl, the progress line and notes, and the tokens/s of the window since the
// last logged step.
class RunLog {
 public:
  // `writes`: false on ranks other than 0 of a data-parallel run (they log nothing).
  RunLog(const TrainOptions& o, const std::filesystem::path& out_dir, std::int64_t start,
         std::int64_t end, bool writes = true)
      : metrics_(writes ? MetricsLog(out_dir / "metrics.jsonl") : MetricsLog()),
        progress_(start, end, writes && o.live_progress && stdout_is_terminal() && !o.quiet,
                  o.log_every),
        quiet_(o.quiet || !writes),
        window_start_(std::chrono::steady_clock::now()) {}

  MetricsLog& metrics() { return metrics_; }
  void add_tokens(std::int64_t n) { window_tokens_ += n; }
  void note(const std::string& s) {
    if (!quiet_) progress_.note(s);
  }

  // A logged step: its metrics line and the progress line; starts a new tokens/s window.
  template <class = void>
  void step(std::int64_t step, double loss, double lr, std::int64_t tokens, double grad_norm) {
    const auto now = std::chrono::steady_clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start_).count();
    const double tps = window_s > 0 ? static_cast<double>(window_tokens_) / window_s : 0.0;
    nlohmann::json rec = {
        {"step", step}, {"loss", loss}, {"lr", lr}, {"tokens", tokens}, {"tokens_per_s", tps}};
    if (!std::isnan(grad_norm)) rec["grad_norm"] = grad_norm;
    metrics_.write(rec);  // a closed log (ranks other than 0) writes nothing
    window_start_ = now;
    window_tokens_ = 0;
    if (!quiet_) progress_.update(step, loss, lr, tps);
  }

  template <class = void>
  void validation(std::int64_t step, double val_loss) {
    metrics_.write({{"step", step}, {"val_loss", val_loss}});
    char buf[128];
    std::snprintf(buf, sizeof buf, "step %lld: val_loss %.4f (ppl %.2f)",
                  static_cast<long long>(step), val_loss, std::exp(val_loss));
    note(buf);
  }

  void finish() {
    if (!quiet_) progress_.finish();
  }

 private:
  MetricsLog metrics_;
  Progress progress_;
  bool quiet_;
  std::chrono::steady_clock::time_point window_start_;
  std::int64_t window_tokens_ = 0;
};

// A sampler position saved by `s.ranks` ranks as `ranks` ranks continue it: the same global
// batches come next (each rank drew s.step batches of its rows; the global count is what carries).
inline data::SamplerState on_ranks(data::SamplerState s, int ranks, const std::string& ckpt) {
  if (s.ranks == ranks) return s;
  const std::uint64_t global = s.step * static_cast<std::uint64_t>(s.ranks);
  FATHOM_CHECK(
      global % static_cast<std::uint64_t>(ranks) == 0,
      "cannot resume '" << ckpt << "' on " << ranks << " ranks: it was saved by " << s.ranks
                        << " ranks after " << global << " micro-batches, which " << ranks
                        << " ranks cannot continue (keep batch x ranks x grad_accum the same)");
  s.step = global / static_cast<std::uint64_t>(ranks);
  s.ranks = ranks;
  return s;
}

// Resuming: weights, optimizer state, data position and counters from the checkpoint o.resume
// names, after checking that it was trained as this run is (`identity`).
template <class T, DeviceTag D>
TrainerState resume(const TrainOptions& o, const nlohmann::json& identity,
                    nn::LanguageModel<T, D>& model, ParameterUpdate<T, D>& update,
                    data::TokenSource& train_data, std::vector<std::string>& notes,
                    std::filesystem::path& loaded) {
  std::filesystem::path dir;
  try {
    dir = resolve_checkpoint(o.resume, &notes);
  } catch (const OptionError&) {
    throw;
  } catch (const Error& e) {
    throw OptionError("resume", e.what());
  }
  const LoadedCheckpoint c = load_checkpoint(dir);
  const TrainerState state = c.state();
  detail::check_same_run(state.run, identity, c.dir.string());
  // The schedule's length decides every learning rate: continuing with another would silently
  // change the run (checkpoints written before the length was recorded are taken as they are).
  if (state.steps >= 0 && state.steps != o.steps)
    throw OptionError(
        "steps", "cannot resume from '" + c.dir.string() + "': it was trained on a schedule of " +
                     std::to_string(state.steps) + " steps, this run has " +
                     std::to_string(o.steps) +
                     " (the learning rate of every step would change; resume with the "
                     "same number of steps, or start a new run from its weights)");
  load_weights(model, c);
  load_state(update.named_state(), c);
  if (load_fp8_histories(model, c) == Fp8HistoryLoad::missing)
    notes.push_back(
        "the checkpoint holds no fp8 amax histories (saved without delayed scaling): "
        "they start empty");
  update.set_step_count(state.optimizer_step);
  train_data.set_state(on_ranks(state.sampler, train_data.options().ranks, c.dir.string()));
  loaded = c.dir;
  notes.push_back("resumed from " + c.dir.string() + " (step " + std::to_string(state.step) +
                  " of " + std::to_string(o.steps) + ")");
  return state;
}

// Saving: the model, its config (Hugging Face's plus fathom's fields), the optimizer state and
// `state`, as out_dir/ckpt-STEP. Every rank of a data-parallel run calls it (a sharded
// optimizer gathers its state); rank 0 alone writes (`writes`), and every rank returns the path.
template <class T, DeviceTag D>
std::filesystem::path save(const TrainOptions& o, const std::filesystem::path& out_dir,
                           nn::LanguageModel<T, D>& model, ParameterUpdate<T, D>& update,
                           const TrainerState& state, bool writes = true) {
  CheckpointContents c;
  auto named_state = update.named_state();
  if (!writes) return out_dir / checkpoint_name(state.step);
  c.model = model_records(model);
  nlohmann::json fathom_fields = state.run;
  fathom_fields["policy_options"] = o.policy_options;
  // The tokenizer travels with the weights, so generation decodes with the one trained on.
  fathom_fields["tokenizer"] = {{"type", o.tokenizer}};
  if (o.tokenizer == "sentencepiece") {
    fathom_fields["tokenizer"]["model"] = "tokenizer.model";
    c.files.emplace_back(o.tokenizer_model, "tokenizer.model");
  }
  c.config = hf_config_json(detail::hf_config_of<T>(o.model), fathom_fields);
  c.optimizer = state_records(named_state);
  for (auto& r : fp8_history_records(model)) c.optimizer.push_back(std::move(r));
  c.trainer_state = state;
  return write_checkpoint(out_dir, state.step, c);
}

namespace detail {

// A lower bound on the memory one training step adds to the weights: a gradient per parameter,
// and the activations the backward pass keeps for one micro-batch of batch x seq_len tokens (per
// block at least the block's input, q, k and v, and two d_ff-wide MLP tensors; the logits). Real
// use is about twice this; the bound only has to catch a batch that cannot fit at all, before the
// first step fills the memory (or the swap).
inline std::uint64_t step_memory_lower_bound(const nn::ModelConfig& c, std::int64_t batch,
                                             std::int64_t seq_len, std::int64_t parameters,
                                             std::uint64_t element_bytes) {
  const auto u = [](std::int64_t v) {
    return static_cast<std::uint64_t>(std::max<std::int64_t>(v, 0));
  };
  std::uint64_t tokens = 0, per_token = 0, activations = 0, total = 0;
  const std::uint64_t block =
      4 * u(c.d_model) + 2 * u(c.d_ff);  // elements a token keeps in each block, at least
  bool overflow = __builtin_mul_overflow(u(batch), u(seq_len), &tokens);
  overflow |= __builtin_mul_overflow(block, u(c.layers), &per_token);
  overflow |= __builtin_add_overflow(per_token, u(c.vocab), &per_token);
  overflow |= __builtin_mul_overflow(tokens, per_token, &activations);
  overflow |= __builtin_add_overflow(activations, u(parameters), &total);
  overflow |= __builtin_mul_overflow(total, element_bytes, &total);
  return overflow ? UINT64_MAX : total;
}

template <class T, DeviceTag D>
void require_step_memory(const TrainOptions& o, nn::LanguageModel<T, D>& model) {
  std::int64_t parameters = 0;
  for (const auto& p : model.parameters()) parameters += p.var.numel();
  const nn::ModelConfig& c = model.config();
  memory::require_available<D>(
      step_memory_lower_bound(c, o.batch, o.seq_len, parameters, sizeof(T)),
      "a training step of " + std::to_string(o.batch) + " x " + std::to_string(o.seq_len) +
          " tokens on a model of " + std::to_string(c.layers) + " layers, d_model " +
          std::to_string(c.d_model) +
          " (gradients and activations, at least; lower --batch or "
          "use --grad-accum)");
}

}  // namespace detail

// Trains `model` (initialized here from o.seed, or loaded from o.resume) as `o` says. Throws
// OptionError for a bad option (ExistingRun when o.out holds another run that o neither resumes
// nor overwrites), NonFiniteLoss for a NaN or infinite loss (unless o.skip_nonfinite),
// fathom::Error for other bad input.
template <class T, DeviceTag D>
TrainResult train(const TrainOptions& o, nn::LanguageModel<T, D>& model,
                  const TrainHooks<T, D>& hooks) {
  namespace fs = std::filesystem;
  validate(o);
  const fs::path out_dir = prepare_out_dir(o);
  const bool root = hooks.shard.rank == 0;
  // One process at a time writes into a run folder, and a folder holds one run: one already there
  // is refused unless resumed (then what an interrupted save left is put right) or replaced (its
  // files are removed once the new run is set up, so a failing setup costs nothing). Rank 0 alone:
  // it alone writes.
  FolderLock lock;
  std::vector<std::string> notes;
  std::vector<fs::path> replaced;
  TrainResult result;
  if (root) {
    lock = FolderLock(out_dir, "fathom training into it");
    replaced = check_run_folder(out_dir, o.resume, o.overwrite);
    if (replaced.empty()) notes = recover_checkpoints(out_dir);
  }
  // Each rank records the amaxes of its own activations and gradients, and a checkpoint holds
  // one set of histories: the ranks must share them, or resuming would not continue the run.
  if (const auto histories = model.fp8_histories(); !histories.empty()) {
    FATHOM_CHECK(hooks.shard.world == 1 || hooks.share_fp8_histories,
                 "delayed fp8 scaling on " << hooks.shard.world
                                           << " ranks needs hooks that share the amax histories "
                                              "(train_data_parallel has them)");
    if (hooks.share_fp8_histories) hooks.share_fp8_histories(histories);
  }
  RunData data = make_run_data(o, hooks.shard);
  model.init(o.seed);
  detail::require_step_memory<T, D>(o, model);
  std::unique_ptr<ParameterUpdate<T, D>> update =
      hooks.make_update ? hooks.make_update(model.parameters(), o)
                        : make_local_update<T, D>(model.parameters(), o.optimizer, o.clip);
  TrainStep<T, D> step(model, *update, o.grad_accum, hooks.step, o.log_every);

  TrainerState state;
  state.seed = o.seed;
  state.run = detail::run_identity<T>(o);
  if (!o.resume.empty())
    state = resume(o, state.run, model, *update, data.train, notes, result.last_checkpoint);
  // Set up: the run replaced goes now; a resumed run's records of steps after its checkpoint
  // (written before an interruption) would appear twice.
  if (!replaced.empty()) {
    notes.push_back(remove_run_files(out_dir, replaced));
  } else if (!o.resume.empty() && root) {
    if (const auto dropped = truncate_metrics(out_dir / "metrics.jsonl", state.step))
      notes.push_back("metrics.jsonl: dropped " + std::to_string(dropped) + " records after step " +
                      std::to_string(state.step));
  }
  state.steps = o.steps;
  state.seq_len = o.seq_len;
  state.data = o.data;
  state.val_data = o.val_data;

  const std::int64_t start = state.step;
  const std::int64_t end = o.stop_after >= 0 ? std::min(o.steps, o.stop_after) : o.steps;
  result.first_step = start;
  RunLog log(o, out_dir, start, end, root);
  for (const auto& n : notes) log.note(n);
  result.steps_done = start;
  if (start >= o.steps) {
    log.note("the run is already complete: step " + std::to_string(start) + " of " +
             std::to_string(o.steps));
    result.already_complete = true;
    result.tokens = state.tokens;
    return result;
  }
  const std::int64_t tokens_per_step = o.batch * o.seq_len * o.grad_accum * hooks.shard.world;
  auto lr_at = [&](std::int64_t s) { return o.lr * lr_factor(o.schedule, s, o.steps); };

  auto record = [&](std::int64_t s, double loss) {  // s: the 0-based step
    if (!std::isfinite(loss)) throw NonFiniteLoss(s + 1, loss, latest_checkpoint(out_dir));
    result.losses.push_back(loss);
    if (std::isnan(result.first_loss)) result.first_loss = loss;
    result.last_loss = loss;
  };
  // Steps run since their losses were last read from the device (none with skip_nonfinite, which
  // reads every step's loss before updating).
  std::int64_t unread_from = start;
  auto take_losses = [&] {
    auto losses = step.take_losses();
    if (hooks.combine_losses) hooks.combine_losses(losses);
    return losses;
  };
  auto read_losses = [&](std::int64_t through) {
    const auto losses = take_losses();
    for (std::size_t i = 0; i < losses.size(); ++i)
      record(unread_from + static_cast<std::int64_t>(i), losses[i]);
    unread_from = through;
  };

  data::Batch batch;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t s = start; s < end; ++s) {
    const double lr = lr_at(s);
    for (std::int64_t micro = 0; micro < o.grad_accum; ++micro) {
      data.train.next(batch);
      auto [x, y] = to_device<D>(batch);
      step.accumulate(x, y);
    }
    state.tokens += tokens_per_step;
    log.add_tokens(tokens_per_step);

    if (o.skip_nonfinite) {
      const double loss = take_losses().front();
      unread_from = s + 1;
      if (!std::isfinite(loss)) {
        step.discard();
        ++result.skipped_steps;
        log.note("step " + std::to_string(s + 1) + ": loss is not finite, step skipped");
        continue;
      }
      step.update(lr);
      record(s, loss);
    } else {
      step.update(lr);
    }
    state.step = s + 1;

    const bool last = s + 1 == end;
    const bool log_due = (s + 1) % o.log_every == 0 || last || s == start;
    const bool eval_due = (o.eval_every > 0 && (s + 1) % o.eval_every == 0) || last;
    const bool save_due = (o.save_every > 0 && (s + 1) % o.save_every == 0) || last;
    const bool periodic_due =
        hooks.periodic && o.diag_every > 0 && ((s + 1) % o.diag_every == 0 || s == start);
    // The one place where the loop waits for the device: a line, an evaluation or a checkpoint is
    // due.
    if (log_due || eval_due || save_due) read_losses(s + 1);
    result.steps_done = s + 1;

    if (log_due) log.step(s + 1, result.last_loss, lr, state.tokens, update->last_grad_norm());
    if (periodic_due) hooks.periodic(s + 1, log.metrics());
    if (eval_due && root) {  // every rank holds the same model: one evaluates
      const double val = evaluate<T, D>(model, data, o);
      if (std::isfinite(val)) {
        log.validation(s + 1, val);
        result.final_val_loss = val;
      }
    }
    if (save_due) {
      state.optimizer_step = update->step_count();
      state.sampler = data.train.state();
      result.last_checkpoint = save(o, out_dir, model, *update, state, root);
      log.note("saved " + result.last_checkpoint.string());
    }
  }
  read_losses(end);
  log.finish();
  result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.tokens = state.tokens;
  const std::int64_t ran = result.steps_done > start ? result.steps_done - start : 0;
  result.tokens_per_s =
      result.wall_s > 0 ? static_cast<double>(ran * tokens_per_step) / result.wall_s : 0.0;
  return result;
}

template <class T, DeviceTag D>
TrainResult train(const TrainOptions& o, nn::LanguageModel<T, D>& model,
                  const PeriodicHook& periodic = {}) {
  TrainHooks<T, D> hooks;
  hooks.periodic = periodic;
  return train<T, D>(o, model, hooks);
}

// Convenience: builds DecoderLM<Arch, Policy, T, D> from o.model and trains it.
template <class Arch, class Policy, class T, DeviceTag D>
TrainResult train(const TrainOptions& o, Policy policy = Policy{}) {
  nn::DecoderModel<Arch, Policy, T, D> model(o.model, std::move(policy));
  return train<T, D>(o, model);
}

}  // namespace fathom::train
