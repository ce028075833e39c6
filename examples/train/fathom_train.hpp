// fathom-train: trains one model with a chosen normalization policy, on the built-in corpus or
// token shards, on CPU or GPU; or, with --generate, samples text from a checkpoint. Compiled as
// main.cpp (CPU only) or main.cu (CPU and CUDA).
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "../common/model_factory.hpp"
#include "fathom/data/tokenizer.hpp"
#include "fathom/diag/diagnostics.hpp"
#include "fathom/train/checkpoint.hpp"

namespace fathom::programs {

struct CliOptions {
  train::TrainOptions train;
  std::string preset = "tiny";
  std::string device = "auto";
  int layers = 0, d_model = 0, heads = 0, d_ff = 0, vocab = 0;
  double deepnorm_alpha = 0, deepnorm_beta = 0;
  bool post_ln_no_final_norm = false;
  std::string generate;  // checkpoint to sample from
  std::string prompt = "(3+";
  int sample_tokens = 200;
  double temperature = 0.8;
  int sample_after = 0;  // tokens to sample from the final model after training
};

// Samples `n` tokens after `prompt` (temperature 0: greedy), re-running the model on the growing
// sequence (no key-value cache: fathom-train's sampler is for looking, not serving).
template <class T, DeviceTag D>
std::string sample_text(const train::LanguageModel<T, D>& model, const std::string& prompt, int n,
                        double temperature, std::uint64_t seed) {
  data::ByteTokenizer tok;
  std::vector<std::int32_t> ids = tok.encode(prompt);
  if (ids.empty()) ids.push_back(data::ByteTokenizer::end_of_text);
  const int max_seq = model.config().max_seq;
  const int V = model.config().vocab;
  autograd::NoGradGuard no_grad;
  std::vector<std::int32_t> generated;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int32_t> ctx(ids.end() - std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(ids.size()), max_seq),
                                  ids.end());
    auto x = Tensor<std::int32_t, D>::from_vector(Shape{1, static_cast<std::int64_t>(ctx.size())}, ctx);
    auto logits = model.forward(x).value();  // (T, V)
    auto last = logits.slice(0, logits.size(0) - 1, logits.size(0)).to_vector();
    // Only ids the tokenizer can decode are drawn (a larger model vocab leaves unused rows).
    const int usable = std::min(V, tok.vocab_size());
    std::int32_t next = 0;
    if (temperature <= 0) {
      for (int v = 1; v < usable; ++v)
        if (static_cast<float>(last[static_cast<std::size_t>(v)]) > static_cast<float>(last[static_cast<std::size_t>(next)])) next = v;
    } else {
      double mx = -INFINITY;
      for (int v = 0; v < usable; ++v) mx = std::max(mx, static_cast<double>(static_cast<float>(last[static_cast<std::size_t>(v)])));
      std::vector<double> p(static_cast<std::size_t>(usable));
      double z = 0;
      for (int v = 0; v < usable; ++v) z += p[static_cast<std::size_t>(v)] = std::exp((static_cast<float>(last[static_cast<std::size_t>(v)]) - mx) / temperature);
      double u = rng::uniform(seed, static_cast<std::uint64_t>(i)) * z;
      for (next = 0; next < usable - 1 && (u -= p[static_cast<std::size_t>(next)]) > 0; ++next) {
      }
    }
    ids.push_back(next);
    generated.push_back(next);
  }
  return tok.decode(generated);
}

inline nn::ModelConfig resolve_model(const CliOptions& c) {
  nn::ModelConfig m = nn::preset(c.preset);
  if (c.layers) m.layers = c.layers;
  if (c.d_model) m.d_model = c.d_model;
  if (c.heads) m.heads = c.heads;
  if (c.d_ff) m.d_ff = c.d_ff;
  if (c.vocab) m.vocab = c.vocab;
  if (c.train.seq_len > m.max_seq) m.max_seq = static_cast<int>(c.train.seq_len);
  if (c.train.data.empty())
    FATHOM_CHECK(m.vocab >= data::ByteTokenizer::vocab,
                 "--vocab: the built-in corpus uses the byte tokenizer's " << data::ByteTokenizer::vocab
                                                                           << " ids, the model has vocab " << m.vocab);
  m.validate();
  return m;
}

// Rebuilds the model a checkpoint was trained as and loads its weights.
template <class T, DeviceTag D>
std::unique_ptr<train::LanguageModel<T, D>> load_model(const std::filesystem::path& ckpt, const nlohmann::json& run,
                                                       const nlohmann::json& policy_options) {
  const auto& mj = run.at("model");
  nn::ModelConfig m;
  m.arch = mj.at("arch").get<std::string>() == "llama" ? nn::ArchKind::llama : nn::ArchKind::gpt2;
  m.layers = mj.at("layers");
  m.d_model = mj.at("d_model");
  m.heads = mj.at("heads");
  m.d_ff = mj.at("d_ff");
  m.vocab = mj.at("vocab");
  m.max_seq = mj.at("max_seq");
  m.norm_eps = mj.at("norm_eps");
  m.rope_theta = mj.at("rope_theta");
  m.tied = mj.at("tied");
  m.bias = mj.at("bias");
  m.name = mj.value("name", "custom");
  auto model = make_model<T, D>(m, run.at("policy").get<std::string>(), policy_options);
  auto weights = train::read_safetensors(ckpt / "model.safetensors");
  for (auto& p : model->parameters())
    train::from_record(weights.at(p.name), p.var.mutable_value(), (ckpt / "model.safetensors").string(),
                       model->hf_transposed(p.name));
  return model;
}

inline int run_generate(const CliOptions& c) {
  const auto ckpt = train::resolve_checkpoint(c.generate);
  const auto config = train::read_json(ckpt / "config.json");
  const auto fathom_fields = train::hf_fathom_fields(config);
  FATHOM_CHECK(fathom_fields.contains("run") || fathom_fields.contains("model"),
               "--generate: '" << ckpt.string() << "/config.json' has no fathom fields (not a fathom checkpoint)");
  const std::string precision = fathom_fields.at("precision");
  const std::string device = resolve_device(c.device);
  return dispatch_precision_device(precision, device, [&]<class T, class D>() {
    auto model = load_model<T, D>(ckpt, fathom_fields, fathom_fields.value("policy_options", nlohmann::json::object()));
    std::cout << c.prompt << sample_text<T, D>(*model, c.prompt, c.sample_tokens, c.temperature, c.train.seed) << "\n";
    return 0;
  });
}

inline int run_train(CliOptions c) {
  check_policy_name(c.train.policy);
  c.train.model = resolve_model(c);
  if (c.deepnorm_alpha > 0) c.train.policy_options["alpha"] = c.deepnorm_alpha;
  if (c.deepnorm_beta > 0) c.train.policy_options["beta"] = c.deepnorm_beta;
  if (c.post_ln_no_final_norm) c.train.policy_options["final_norm"] = false;
  const std::string device = resolve_device(c.device);
  const auto& m = c.train.model;
  std::printf("fathom-train: %s (%s, %d layers, d %d, %d heads, d_ff %d, vocab %d), policy %s, %s on %s\n",
              m.name.c_str(), std::string(nn::to_string(m.arch)).c_str(), m.layers, m.d_model, m.heads, m.d_ff,
              m.vocab, c.train.policy.c_str(), c.train.precision.c_str(), device.c_str());
  std::printf("data: %s | %lld steps x %lld sequences x %lld tokens (grad accum %lld) | out %s\n",
              c.train.data.empty() ? "built-in corpus" : c.train.data.c_str(), static_cast<long long>(c.train.steps),
              static_cast<long long>(c.train.batch), static_cast<long long>(c.train.seq_len),
              static_cast<long long>(c.train.grad_accum), c.train.out.c_str());
  std::fflush(stdout);
  return dispatch_precision_device(c.train.precision, device, [&]<class T, class D>() {
    auto model = make_model<T, D>(c.train.model, c.train.policy, c.train.policy_options);
    std::printf("parameters: %.2fM\n", static_cast<double>(nn::count_elements(model->parameters())) / 1e6);
    std::fflush(stdout);
    // Per-layer output variance on one fixed held-out batch, every --diag-every steps.
    train::PeriodicHook hook;
    if (c.train.diag_every > 0) {
      const auto& o = c.train;
      data::SamplerOptions so;
      so.batch = std::min<std::int64_t>(o.batch, 8);
      so.seq_len = o.seq_len;
      so.order = data::SampleOrder::sequential;
      data::TokenSource src =
          !o.val_data.empty() ? data::TokenSource::from_pattern(o.val_data, so)
          : !o.data.empty()   ? data::TokenSource::from_pattern(o.data, so)
                              : data::TokenSource::from_tokens(
                                    data::builtin_corpus(data::Split::validation,
                                                         static_cast<std::size_t>(so.batch * (so.seq_len + 1) + 1), o.seed),
                                    so, "built-in corpus (validation)");
      auto b = src.next();
      auto x = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs);
      auto y = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.targets);
      hook = [&model, x, y](std::int64_t step, train::MetricsLog& metrics) {
        metrics.write({{"step", step}, {"layer_variance", diag::block_output_variance<T, D>(*model, x, y)}});
      };
    }
    auto r = train::train<T, D>(c.train, *model, hook);
    std::printf("\ndone: steps %lld..%lld, loss %.4f -> %.4f", static_cast<long long>(r.first_step),
                static_cast<long long>(r.steps_done), r.first_loss, r.last_loss);
    if (std::isfinite(r.final_val_loss))
      std::printf(", val_loss %.4f (ppl %.2f)", r.final_val_loss, std::exp(r.final_val_loss));
    std::printf("\n      %.0f tokens/s, %.1f s, %lld tokens%s\n", r.tokens_per_s, r.wall_s,
                static_cast<long long>(r.tokens),
                r.skipped_steps ? (", " + std::to_string(r.skipped_steps) + " steps skipped").c_str() : "");
    std::printf("      metrics: %s\n      checkpoint: %s\n", (std::filesystem::path(c.train.out) / "metrics.jsonl").string().c_str(),
                r.last_checkpoint.string().c_str());
    if (c.sample_after > 0)
      std::printf("sample: %s%s\n", c.prompt.c_str(),
                  sample_text<T, D>(*model, c.prompt, c.sample_after, c.temperature, c.train.seed).c_str());
    return 0;
  });
}

// The message without the check's source location: programs print one clear line.
inline std::string user_message(const Error& e) {
  std::string m = e.what();
  auto at = m.find(" [check `");
  return at == std::string::npos ? m : m.substr(0, at);
}

inline int main(int argc, char** argv) {
  CliOptions c;
  auto& t = c.train;
  CLI::App app{"fathom-train: train a decoder-only LM with a chosen normalization policy.\n"
               "With no --data it trains on fathom's built-in synthetic corpus (byte tokens)."};
  app.option_defaults()->always_capture_default();
  app.add_option("--preset", c.preset, "model preset: " + joined(nn::preset_names));
  app.add_option("--policy", t.policy, "normalization policy: " + joined(policy_names));
  app.add_option("--layers", c.layers, "override the preset's number of blocks");
  app.add_option("--d-model", c.d_model, "override the model width");
  app.add_option("--heads", c.heads, "override the number of attention heads");
  app.add_option("--d-ff", c.d_ff, "override the MLP hidden size");
  app.add_option("--vocab", c.vocab, "override the vocabulary size");
  app.add_option("--seq-len", t.seq_len, "tokens per sequence");
  app.add_option("--data", t.data, "training token shards (glob, llm.c format); none: the built-in corpus");
  app.add_option("--val-data", t.val_data, "validation token shards (glob)");
  app.add_option("--steps", t.steps, "optimizer steps");
  app.add_option("--batch", t.batch, "sequences per micro-batch");
  app.add_option("--grad-accum", t.grad_accum, "micro-batches per optimizer step");
  app.add_option("--lr", t.lr, "peak learning rate");
  app.add_option("--min-lr-ratio", t.min_lr_ratio, "final learning rate as a fraction of the peak");
  app.add_option("--warmup", t.warmup, "warmup steps (-1: 10% of --steps)");
  app.add_option("--schedule", t.schedule, "cosine (linear warmup, cosine decay), constant, wsd");
  app.add_option("--optimizer", t.optimizer, "adamw, adam, sgd");
  app.add_option("--weight-decay", t.weight_decay, "weight decay (not on norms, biases, embeddings)");
  app.add_option("--clip", t.clip, "max global gradient norm (0: no clipping)");
  app.add_option("--device", c.device, "auto, cpu, cuda");
  app.add_option("--precision", t.precision, "fp32, or bf16 (bf16 weights and activations, fp32 master weights)");
  app.add_option("--seed", t.seed, "seed of initialization and data order");
  app.add_option("--eval-every", t.eval_every, "evaluate every N steps (0: at the end only)");
  app.add_option("--eval-batches", t.eval_batches, "validation batches per evaluation");
  app.add_option("--save-every", t.save_every, "checkpoint every N steps (0: at the end only)");
  app.add_option("--log-every", t.log_every, "write metrics every N steps");
  app.add_option("--diag-every", t.diag_every, "log each block's output variance every N steps (0: never)");
  app.add_option("--out", t.out, "run folder: metrics.jsonl and ckpt-STEP folders");
  app.add_option("--resume", t.resume, "a ckpt-STEP folder, or a run folder (its latest checkpoint)");
  app.add_flag("--skip-nonfinite", t.skip_nonfinite, "skip steps whose loss is NaN or Inf instead of stopping");
  app.add_option("--builtin-tokens", t.builtin_tokens, "size of the built-in corpus's training split");
  app.add_option("--deepnorm-alpha", c.deepnorm_alpha, "DeepNorm residual scale (0: (2L)^(1/4))");
  app.add_option("--deepnorm-beta", c.deepnorm_beta, "DeepNorm init gain (0: (8L)^(-1/4))");
  app.add_flag("--post-ln-no-final-norm", c.post_ln_no_final_norm, "Post-LN without the final norm");
  app.add_option("--sample", c.sample_after, "after training, sample this many tokens from the model");
  app.add_option("--generate", c.generate, "sample from this checkpoint instead of training");
  app.add_option("--prompt", c.prompt, "prompt for --sample / --generate");
  app.add_option("--tokens", c.sample_tokens, "tokens to generate with --generate");
  app.add_option("--temperature", c.temperature, "sampling temperature (0: greedy)");
  app.add_flag("--no-live", [&](std::int64_t) { t.live_progress = false; }, "plain log lines even on a terminal");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return c.generate.empty() ? run_train(c) : run_generate(c);
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "\nfathom-train: error: %s\n", user_message(e).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "\nfathom-train: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace fathom::programs
