// The training loop behind fathom-train: data, model, optimizer, schedule, clipping, gradient
// accumulation, evaluation, metrics.jsonl, progress, checkpoints and resume. Generic over the
// architecture, the norm policy, the element type and the device; programs pick those from
// strings (examples/train).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/autograd/var.hpp"
#include "fathom/data/corpus.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/data/tokenizer.hpp"
#include "fathom/nn/decoder_lm.hpp"
#include "fathom/optim/clip.hpp"
#include "fathom/optim/optimizer.hpp"
#include "fathom/optim/schedule.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "fathom/train/metrics.hpp"
#include "fathom/train/options.hpp"
#include "fathom/train/progress.hpp"

namespace fathom::train {

// Called every TrainOptions::diag_every steps with the step just finished and the metrics log
// (fathom-train logs per-layer variance through it; the diagnostics layer sits above this one).
using PeriodicHook = std::function<void(std::int64_t step, MetricsLog& metrics)>;

struct TrainResult {
  std::int64_t first_step = 0;   // the step the run started from (0, or the resumed step)
  std::int64_t steps_done = 0;   // the last step finished
  std::vector<double> losses;    // training loss of each step run here
  double first_loss = NAN, last_loss = NAN, final_val_loss = NAN;
  double tokens_per_s = 0.0, wall_s = 0.0;
  std::int64_t tokens = 0;       // tokens trained on, in all (counting resumed steps)
  std::int64_t skipped_steps = 0;
  std::filesystem::path last_checkpoint;
};

namespace detail {

inline nlohmann::json config_json(const nn::ModelConfig& c) {
  return {{"arch", std::string(nn::to_string(c.arch))},
          {"layers", c.layers},
          {"d_model", c.d_model},
          {"heads", c.heads},
          {"d_ff", c.d_ff},
          {"vocab", c.vocab},
          {"max_seq", c.max_seq},
          {"norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"tied", c.tied},
          {"bias", c.bias},
          {"name", c.name}};
}

inline HfModelConfig hf_config_of(const nn::ModelConfig& c, const std::string& precision) {
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
  h.dtype = precision == "bf16" ? "bfloat16" : "float32";
  return h;
}

// Fails with one line naming the first field in which a checkpoint's run differs from this one.
inline void check_same_run(const nlohmann::json& saved, const nlohmann::json& now, const std::string& ckpt) {
  for (const char* key : {"policy", "precision"}) {
    FATHOM_CHECK(saved.value(key, nlohmann::json()) == now.at(key),
                 "cannot resume from '" << ckpt << "': it was trained with " << key << " "
                                        << saved.value(key, nlohmann::json()).dump() << ", this run has "
                                        << now.at(key).dump());
  }
  const auto& a = saved.at("model");
  const auto& b = now.at("model");
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (it.key() == "name") continue;
    FATHOM_CHECK(a.contains(it.key()) && a.at(it.key()) == it.value(),
                 "cannot resume from '" << ckpt << "': it was trained with " << it.key() << " = "
                                        << (a.contains(it.key()) ? a.at(it.key()).dump() : "(missing)")
                                        << ", this run has " << it.key() << " = " << it.value().dump());
  }
}

// Fails unless `dir` can be created and written.
inline void check_writable(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  FATHOM_CHECK(!ec, "--out: cannot create '" << dir.string() << "': " << ec.message());
  const auto probe = dir / ".fathom-write-test";
  {
    std::ofstream f(probe);
    f << "ok";
    FATHOM_CHECK(f.good(), "--out: cannot write into '" << dir.string() << "'");
  }
  std::filesystem::remove(probe, ec);
}

template <class T, DeviceTag D>
Tensor<std::int32_t, D> to_device(const std::vector<std::int32_t>& v, std::int64_t B, std::int64_t Tn) {
  return Tensor<std::int32_t, D>::from_vector(Shape{B, Tn}, v);
}

}  // namespace detail

// The data a run reads: the training source, and the validation source's description.
struct RunData {
  data::TokenSource train;
  std::optional<std::vector<std::int32_t>> builtin_val;  // built-in corpus validation tokens
  std::string val_pattern;                                // or shards
};

inline RunData make_run_data(const TrainOptions& o) {
  data::SamplerOptions so;
  so.batch = o.batch;
  so.seq_len = o.seq_len;
  so.seed = o.seed;
  so.order = data::SampleOrder::random;
  so.vocab = static_cast<std::uint32_t>(o.model.vocab);
  if (o.data.empty()) {
    auto tokens = data::builtin_corpus(data::Split::train, static_cast<std::size_t>(o.builtin_tokens), o.seed);
    RunData d{data::TokenSource::from_tokens(tokens, so, "built-in corpus (train)"), std::nullopt, o.val_data};
    if (o.val_data.empty())
      d.builtin_val = data::builtin_corpus(data::Split::validation,
                                           static_cast<std::size_t>(std::max<std::int64_t>(
                                               o.eval_batches * o.batch * (o.seq_len + 1), 65536)),
                                           o.seed);
    return d;
  }
  return RunData{data::TokenSource::from_pattern(o.data, so), std::nullopt, o.val_data};
}

// Mean loss over the first `batches` batches of the validation data (the same batches each time).
template <class Model, DeviceTag D>
double evaluate(const Model& model, const RunData& d, const TrainOptions& o) {
  if (!d.builtin_val && d.val_pattern.empty()) return NAN;
  data::SamplerOptions so;
  so.batch = o.batch;
  so.seq_len = o.seq_len;
  so.order = data::SampleOrder::sequential;
  so.vocab = static_cast<std::uint32_t>(o.model.vocab);
  data::TokenSource val = d.builtin_val ? data::TokenSource::from_tokens(*d.builtin_val, so, "built-in corpus (validation)")
                                        : data::TokenSource::from_pattern(d.val_pattern, so);
  const std::int64_t n = std::min<std::int64_t>(o.eval_batches, static_cast<std::int64_t>(val.batches_per_pass()));
  autograd::NoGradGuard no_grad;
  double sum = 0.0;
  data::Batch b;
  for (std::int64_t i = 0; i < n; ++i) {
    val.next(b);
    auto x = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs);
    auto y = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.targets);
    sum += static_cast<double>(model.loss(x, y).value().item());
  }
  return n > 0 ? sum / static_cast<double>(n) : NAN;
}

// A trainable language model seen through what the loop needs, so that the loop is compiled once
// per element type and device, not once per architecture and policy.
template <class T, DeviceTag D>
class LanguageModel {
 public:
  using LossVar = Var<accum_t<T>, D>;
  virtual ~LanguageModel() = default;
  virtual LossVar loss(const Tensor<std::int32_t, D>& tokens, const Tensor<std::int32_t, D>& targets) const = 0;
  virtual Var<T, D> forward(const Tensor<std::int32_t, D>& tokens) const = 0;
  // With the diagnostics hooks: an observer of every block's sites and a per-block skip mask.
  virtual LossVar loss(const Tensor<std::int32_t, D>& tokens, const Tensor<std::int32_t, D>& targets,
                       const nn::ForwardOptions<T, D>& options) const = 0;
  virtual std::vector<nn::NamedParameter<T, D>>& parameters() = 0;
  virtual void init(std::uint64_t seed) = 0;
  virtual void zero_grad() = 0;
  // Whether the Hugging Face layout stores this parameter transposed (GPT-2's Conv1D weights).
  virtual bool hf_transposed(const std::string& name) const = 0;
  virtual const nn::ModelConfig& config() const = 0;
};

// LanguageModel over DecoderLM<Arch, Policy, T, D>.
template <class Arch, class Policy, class T, DeviceTag D>
class DecoderModel final : public LanguageModel<T, D> {
 public:
  using Model = nn::DecoderLM<Arch, Policy, T, D>;
  DecoderModel(const nn::ModelConfig& c, Policy p) : model_(c, std::move(p)) {}
  typename LanguageModel<T, D>::LossVar loss(const Tensor<std::int32_t, D>& x,
                                             const Tensor<std::int32_t, D>& y) const override {
    return model_.loss(x, y);
  }
  Var<T, D> forward(const Tensor<std::int32_t, D>& x) const override { return model_.forward(x); }
  typename LanguageModel<T, D>::LossVar loss(const Tensor<std::int32_t, D>& x, const Tensor<std::int32_t, D>& y,
                                             const nn::ForwardOptions<T, D>& options) const override {
    return model_.loss(x, y, options);
  }
  std::vector<nn::NamedParameter<T, D>>& parameters() override { return model_.parameters(); }
  void init(std::uint64_t seed) override { model_.init(seed); }
  void zero_grad() override { model_.zero_grad(); }
  bool hf_transposed(const std::string& name) const override { return Arch::hf_transposed(name); }
  const nn::ModelConfig& config() const override { return model_.config(); }
  Model& model() { return model_; }

 private:
  Model model_;
};

// Trains `model` (initialized here from o.seed, or loaded from o.resume) as `o` says. Throws
// fathom::Error on bad input or a non-finite loss (unless o.skip_nonfinite).
template <class T, DeviceTag D>
TrainResult train(const TrainOptions& o, LanguageModel<T, D>& model, const PeriodicHook& periodic = {}) {
  namespace fs = std::filesystem;
  using Model = LanguageModel<T, D>;
  using A = accum_t<T>;

  FATHOM_CHECK(o.steps >= 1, "--steps: expected at least 1, got " << o.steps);
  FATHOM_CHECK(o.batch >= 1, "--batch: expected at least 1, got " << o.batch);
  FATHOM_CHECK(o.grad_accum >= 1, "--grad-accum: expected at least 1, got " << o.grad_accum);
  FATHOM_CHECK(o.seq_len >= 1 && o.seq_len <= o.model.max_seq,
               "--seq-len: expected 1.." << o.model.max_seq << " (the model's max_seq), got " << o.seq_len);
  FATHOM_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr: expected a positive number, got " << o.lr);
  FATHOM_CHECK(o.optimizer == "adamw" || o.optimizer == "adam" || o.optimizer == "sgd",
               "--optimizer: expected one of adamw, adam, sgd, got '" << o.optimizer << "'");
  FATHOM_CHECK(o.schedule == "cosine" || o.schedule == "constant" || o.schedule == "wsd",
               "--schedule: expected one of cosine, constant, wsd, got '" << o.schedule << "'");

  const fs::path out_dir(o.out);
  detail::check_writable(out_dir);

  RunData data = make_run_data(o);

  model.init(o.seed);

  std::vector<optim::NamedParameter<T, D>> named;
  for (auto& p : model.parameters()) named.push_back({p.name, p.var});
  using AdamOpt = optim::Optimizer<optim::AdamW, T, D>;
  using SgdOpt = optim::Optimizer<optim::Sgd, T, D>;
  std::variant<AdamOpt, SgdOpt> opt = [&]() -> std::variant<AdamOpt, SgdOpt> {
    if (o.optimizer == "sgd") {
      optim::Sgd r;
      r.momentum = o.momentum;
      r.weight_decay = o.weight_decay;
      return SgdOpt(r, named);
    }
    optim::AdamW r;
    r.beta1 = o.beta1;
    r.beta2 = o.beta2;
    r.eps = o.eps;
    r.weight_decay = o.weight_decay;
    r.decoupled = o.optimizer == "adamw";
    return AdamOpt(r, named);
  }();
  auto opt_named_state = [&] { return std::visit([](auto& x) { return x.named_state(); }, opt); };

  const nlohmann::json run_identity = {
      {"policy", o.policy}, {"precision", o.precision}, {"model", detail::config_json(o.model)}};

  TrainResult result;
  std::int64_t start = 0;
  std::int64_t tokens_seen = 0;

  // Resume: weights, optimizer state, data position and counters from a checkpoint.
  if (!o.resume.empty()) {
    const fs::path ckpt = resolve_checkpoint(o.resume);
    const std::string where = ckpt.string();
    const nlohmann::json state = read_json(ckpt / "trainer_state.json");
    detail::check_same_run(state.at("run"), run_identity, where);
    SafetensorsFile weights = read_safetensors(ckpt / "model.safetensors");
    for (auto& p : model.parameters())
      from_record(weights.at(p.name), p.var.mutable_value(), where + "/model.safetensors", model.hf_transposed(p.name));
    SafetensorsFile ostate = read_safetensors(ckpt / "optimizer.safetensors");
    for (auto& [name, t] : opt_named_state()) from_record(ostate.at(name), *t, where + "/optimizer.safetensors");
    start = state.at("step").get<std::int64_t>();
    tokens_seen = state.at("tokens").get<std::int64_t>();
    std::visit([&](auto& x) { x.set_step_count(state.at("optimizer_step").get<std::int64_t>()); }, opt);
    data.train.set_state(state.at("sampler").get<data::SamplerState>());
  }
  result.first_step = start;

  const std::int64_t warmup = o.warmup >= 0 ? o.warmup : o.steps / 10;
  auto lr_at = [&](std::int64_t step) {
    if (o.schedule == "constant") return o.lr;
    if (o.schedule == "wsd") return o.lr * optim::WarmupStableDecay{warmup, o.steps - o.steps / 5, o.steps, o.min_lr_ratio}.factor(step);
    return o.lr * optim::WarmupCosine{std::min(warmup, o.steps), o.steps, o.min_lr_ratio}.factor(step);
  };

  MetricsLog metrics(out_dir / "metrics.jsonl");
  const std::int64_t end = o.stop_after >= 0 ? std::min(o.steps, o.stop_after) : o.steps;
  Progress progress(start, end, o.live_progress && stdout_is_terminal() && !o.quiet, o.log_every);
  auto note = [&](const std::string& s) {
    if (!o.quiet) progress.note(s);
  };

  auto save = [&](std::int64_t step) {
    CheckpointContents c;
    for (const auto& p : model.parameters())
      c.model.push_back(to_record(p.name, p.var.value(), model.hf_transposed(p.name)));
    nlohmann::json fathom_fields = run_identity;
    fathom_fields["policy_options"] = o.policy_options;
    c.config = hf_config_json(detail::hf_config_of(o.model, o.precision), fathom_fields);
    for (auto& [name, t] : opt_named_state()) c.optimizer.push_back(to_record(name, *t));
    c.trainer_state = {{"step", step},
                       {"tokens", tokens_seen},
                       {"optimizer_step", std::visit([](auto& x) { return x.step_count(); }, opt)},
                       {"sampler", data.train.state()},
                       {"seed", o.seed},
                       {"run", run_identity}};
    result.last_checkpoint = write_checkpoint(out_dir, step, c);
    note("saved " + result.last_checkpoint.string());
  };

  const std::int64_t tokens_per_step = o.batch * o.seq_len * o.grad_accum;
  data::Batch batch;
  const auto t0 = std::chrono::steady_clock::now();
  auto window_start = t0;
  std::int64_t window_tokens = 0;

  for (std::int64_t step = start; step < end; ++step) {
    const double lr = lr_at(step);
    double loss_sum = 0.0;
    for (std::int64_t micro = 0; micro < o.grad_accum; ++micro) {
      data.train.next(batch);
      auto x = detail::to_device<T, D>(batch.inputs, batch.batch, batch.seq_len);
      auto y = detail::to_device<T, D>(batch.targets, batch.batch, batch.seq_len);
      auto loss = model.loss(x, y);
      autograd::backward(loss, Tensor<A, D>::full(loss.shape(), static_cast<A>(1.0 / static_cast<double>(o.grad_accum))));
      loss_sum += static_cast<double>(loss.value().item());
    }
    const double loss = loss_sum / static_cast<double>(o.grad_accum);
    tokens_seen += tokens_per_step;
    window_tokens += tokens_per_step;

    if (!std::isfinite(loss)) {
      if (!o.skip_nonfinite) {
        auto last = latest_checkpoint(out_dir);
        FATHOM_FAIL("loss is " << loss << " at step " << step + 1 << "; last good checkpoint: "
                               << (last ? last->string() : std::string("none"))
                               << " (--skip-nonfinite skips such steps instead of stopping)");
      }
      model.zero_grad();
      ++result.skipped_steps;
      note("step " + std::to_string(step + 1) + ": loss is not finite, step skipped");
      continue;
    }

    const double grad_norm = o.clip > 0 ? optim::global_grad_norm<T, D>(named) : NAN;
    const double scale = optim::clip_factor(grad_norm, o.clip);
    std::visit([&](auto& x) { x.step(lr, scale); }, opt);
    model.zero_grad();

    result.losses.push_back(loss);
    if (std::isnan(result.first_loss)) result.first_loss = loss;
    result.last_loss = loss;
    result.steps_done = step + 1;

    const auto now = std::chrono::steady_clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    const double tps = window_s > 0 ? static_cast<double>(window_tokens) / window_s : 0.0;
    if ((step + 1) % o.log_every == 0 || step + 1 == end || step == start) {
      nlohmann::json rec = {{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"tokens", tokens_seen}, {"tokens_per_s", tps}};
      if (o.clip > 0) rec["grad_norm"] = grad_norm;
      metrics.write(rec);
      window_start = now;
      window_tokens = 0;
    }
    if (!o.quiet) progress.update(step + 1, loss, lr, tps);

    if (periodic && o.diag_every > 0 && ((step + 1) % o.diag_every == 0 || step == start)) periodic(step + 1, metrics);

    const bool last = step + 1 == end;
    if ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || last) {
      const double val = evaluate<Model, D>(model, data, o);
      if (std::isfinite(val)) {
        metrics.write({{"step", step + 1}, {"val_loss", val}});
        result.final_val_loss = val;
        char buf[128];
        std::snprintf(buf, sizeof buf, "step %lld: val_loss %.4f (ppl %.2f)", static_cast<long long>(step + 1), val,
                      std::exp(val));
        note(buf);
      }
    }
    if ((o.save_every > 0 && (step + 1) % o.save_every == 0) || last) save(step + 1);
  }
  if (!o.quiet) progress.finish();
  result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.tokens = tokens_seen;
  const std::int64_t ran = result.steps_done > start ? result.steps_done - start : 0;
  result.tokens_per_s = result.wall_s > 0 ? static_cast<double>(ran * tokens_per_step) / result.wall_s : 0.0;
  return result;
}

}  // namespace fathom::train

namespace fathom::train {

// Convenience: builds DecoderLM<Arch, Policy, T, D> from o.model and trains it.
template <class Arch, class Policy, class T, DeviceTag D>
TrainResult train(const TrainOptions& o, Policy policy = Policy{}) {
  DecoderModel<Arch, Policy, T, D> model(o.model, std::move(policy));
  return train<T, D>(o, model);
}

}  // namespace fathom::train
