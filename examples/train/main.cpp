// fathom-train: trains one model with a chosen normalization policy, on the built-in corpus or
// token shards, on CPU or GPU; or, with --generate, samples text from a checkpoint. The work itself
// is compiled once per (precision, device) in examples/common (fathom_programs).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

#include "fathom/data/tokenizer.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "programs.hpp"

namespace fathom::programs {
namespace {

nn::ModelConfig resolve_model(const TrainCli& c) {
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

int run_generate(const TrainCli& c) {
  const auto ckpt = train::resolve_checkpoint(c.generate);
  const auto fields = train::hf_fathom_fields(train::read_json(ckpt / "config.json"));
  FATHOM_CHECK(fields.contains("model") && fields.contains("policy"),
               "--generate: '" << (ckpt / "config.json").string() << "' has no fathom fields (not a fathom checkpoint)");
  const std::string device = resolve_device(c.device);
  return dispatch_backend(fields.at("precision").get<std::string>(), device,
                          [&]<class T, class D>() { return Backend<T, D>::generate(c, ckpt, fields); });
}

int run_train(TrainCli c) {
  check_policy_name(c.train.policy);
  check_choice("--precision", c.train.precision, {"fp32", "bf16"});
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
  return dispatch_backend(c.train.precision, device, [&]<class T, class D>() { return Backend<T, D>::train(c); });
}

}  // namespace

int train_main(int argc, char** argv) {
  TrainCli c;
  auto& t = c.train;
  CLI::App app{"fathom-train: train a decoder-only LM with a chosen normalization policy.\n"
               "With no --data it trains on fathom's built-in synthetic corpus (byte tokens)."};
  app.option_defaults()->always_capture_default();
  // A later value of an option overrides an earlier one (scripts/run.sh passes defaults first).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
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
    std::fprintf(stderr, "\nfathom-train: error: %s\n", user_message(e).c_str());
    return 1;
  }
}

}  // namespace fathom::programs

int main(int argc, char** argv) { return fathom::programs::train_main(argc, argv); }
