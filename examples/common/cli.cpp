// The command lines of fathom's programs (program_main.hpp): flags, checks that need no model, and
// the dispatch to the backend compiled for the precision and device asked for. No model is
// compiled here, so a program's own policies cost only their models' compile time.
#include <CLI/CLI.hpp>

#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "fathom/nn/linear.hpp"
#include "fathom/data/dataset_info.hpp"
#include "fathom/data/tokenizer.hpp"
#include "fathom/dist/in_process.hpp"
#include "fathom/dist/launch.hpp"
#if defined(FATHOM_HAS_NCCL)
#include "fathom/dist/nccl.hpp"
#endif
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "fathom/train/run_folder.hpp"
#include "launcher.hpp"
#include "program_main.hpp"
#include "programs.hpp"

namespace fathom::programs {

PolicyRegistry builtin_policies() {
  PolicyRegistry r;
  Backend<float, Cpu>::add_builtin_policies(r);
  Backend<bf16, Cpu>::add_builtin_policies(r);
#if defined(FATHOM_PROGRAM_CUDA)
  Backend<float, Cuda>::add_builtin_policies(r);
  Backend<bf16, Cuda>::add_builtin_policies(r);
#endif
  return r;
}

namespace {

// The vocabulary and tokenizer of fathom-prepare's shards (dataset.json beside them): the model's
// vocabulary is the data's unless --vocab asks for a larger one (padding); the validation shards
// must come from the same tokenizer.
void apply_dataset_info(TrainCli& c, nn::ModelConfig& m) {
  auto& t = c.train;
  if (t.data.empty()) return;  // the built-in corpus: byte tokens
  const auto info = data::find_dataset_info(t.data);
  if (!info) {
    t.tokenizer = "unknown";  // llm.c shards from elsewhere: the preset's or --vocab's size
    return;
  }
  if (c.vocab == 0) {
    m.vocab = info->vocab_size;
  } else {
    FATHOM_CHECK(c.vocab >= info->vocab_size,
                 "--vocab " << c.vocab << ": the data's tokenizer (" << info->file.string()
                            << ") has " << info->vocab_size << " ids; expected --vocab >= "
                            << info->vocab_size << ", or no --vocab to take the data's");
  }
  t.tokenizer = info->tokenizer;
  t.tokenizer_model = info->tokenizer_model.string();
  if (const auto val = data::find_dataset_info(t.val_data)) {
    const bool same_model = val->tokenizer != "sentencepiece" ||
                            data::same_file_contents(val->tokenizer_model, info->tokenizer_model);
    FATHOM_CHECK(
        val->tokenizer == info->tokenizer && val->vocab_size == info->vocab_size && same_model,
        "--val-data: its tokenizer (" << val->file.string() << ": " << val->tokenizer << ", vocab "
                                      << val->vocab_size << ") is not the training data's ("
                                      << info->file.string() << ": " << info->tokenizer
                                      << ", vocab " << info->vocab_size << ")");
  }
}

nn::ModelConfig resolve_model(TrainCli& c) {
  nn::ModelConfig m = nn::preset(c.preset);
  if (c.layers) m.layers = c.layers;
  if (c.d_model) m.d_model = c.d_model;
  if (c.heads) m.heads = c.heads;
  if (c.d_ff) m.d_ff = c.d_ff;
  if (c.vocab) m.vocab = c.vocab;
  apply_dataset_info(c, m);
  if (c.train.seq_len > m.max_seq) m.max_seq = static_cast<int>(c.train.seq_len);
  if (c.train.data.empty())
    FATHOM_CHECK(m.vocab >= data::ByteTokenizer::vocab,
                 "--vocab: the built-in corpus uses the byte tokenizer's "
                     << data::ByteTokenizer::vocab << " ids, the model has vocab " << m.vocab);
  m.validate();
  return m;
}

// A checkpoint folder and the fathom fields of its config.json (policy, model, precision).
struct Checkpoint {
  std::filesystem::path dir;
  nlohmann::json fields;
};

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c;
  c.dir = train::resolve_checkpoint(path);
  c.fields = train::hf_fathom_fields(train::read_json(c.dir / "config.json"));
  FATHOM_CHECK(
      c.fields.contains("model") && c.fields.contains("policy"),
      "'" << (c.dir / "config.json").string() << "' has no fathom fields: not a fathom checkpoint");
  return c;
}

int run_generate(const TrainCli& c, const PolicyRegistry& policies) {
  const auto ck = read_checkpoint(c.generate);
  const std::string device = resolve_device(c.device);
  return dispatch_backend(
      ck.fields.at("precision").get<std::string>(), device,
      [&]<class T, class D>() { return Backend<T, D>::generate(c, ck.dir, ck.fields, policies); });
}

// This process's rank in a multi-process run, for its error lines ("NAME: rank 1: error: ...").
int launched_rank = -1;

int run_train(TrainCli c, const PolicyRegistry& policies, const std::string& name,
              const std::vector<std::string>& relaunch, int argc, char** argv) {
  policies.check(c.train.policy);
  check_choice("--precision", c.precision, {"fp32", "bf16", "fp8"});
  check_fp8_scaling(c.fp8_scaling);
  FATHOM_CHECK(c.fp8_scaling == "current" || c.precision == "fp8",
               "--fp8-scaling " << c.fp8_scaling << " needs --precision fp8 (this run is "
                                << c.precision << ")");
  FATHOM_CHECK(c.fp8_margin < 0 || c.fp8_scaling == "delayed",
               "--fp8-margin " << c.fp8_margin << " needs --fp8-scaling delayed (current scaling "
                               << "scales each tensor by its own amax)");
  if (c.fp8_margin < 0) c.fp8_margin = nn::Fp8Recipe{}.margin;  // the library's default
  check_choice("--gemm-autotune", c.gemm_autotune, {"auto", "on", "off"});
  const auto env = dist::LaunchEnv::from_environment();
  resolve_train_options(c);
  c.train.model = resolve_model(c);
  if (c.deepnorm_alpha > 0) c.train.policy_options["alpha"] = c.deepnorm_alpha;
  if (c.deepnorm_beta > 0) c.train.policy_options["beta"] = c.deepnorm_beta;
  if (c.post_ln_no_final_norm) c.train.policy_options["final_norm"] = false;
  const std::string device = resolve_device(c.device);
  if (c.precision == "fp8") check_fp8_device(device);
  FATHOM_CHECK(c.gemm_autotune != "on" || device == "cuda",
               "--gemm-autotune on: it chooses among cuBLASLt's GEMM algorithms, so it needs "
               "--device cuda (this run is on "
                   << device << ")");
  FATHOM_CHECK(c.zero == 0 || c.zero == 1, "--zero: expected 0 or 1, got " << c.zero);
  FATHOM_CHECK(c.nproc >= 1, "--nproc: expected at least 1, got " << c.nproc);
  FATHOM_CHECK(c.nproc == 1 || !env.distributed(),
               "--nproc: this process was itself started as rank "
                   << env.rank << " of " << env.world_size << " (by " << env.launcher
                   << "); drop --nproc");
  // A run folder holds one run: refused here, before a model is allocated or ranks are started,
  // unless --resume or --overwrite says what to do with the run there (train() checks again,
  // holding the folder's lock).
  train::check_run_folder(c.train.out, c.train.resume, c.train.overwrite);
  // --nproc N on CUDA: N processes of this program, one a GPU, with the torchrun environment.
  if (c.nproc > 1 && device == "cuda") {
    std::printf("%s: starting %d ranks on this host\n", name.c_str(), c.nproc);
    std::fflush(stdout);
    std::vector<std::string> args = relaunch;  // this program, then the flags without --nproc
    const auto flags = without_nproc(argc, argv);
    if (!flags.empty()) args.insert(args.end(), flags.begin() + 1, flags.end());
    return launch_local_ranks(args, c.nproc).status;
  }
  const bool root = !env.distributed() || env.rank == 0;
  const auto& m = c.train.model;
  if (root)
    std::printf("%s: %s (%s, %d layers, d %d, %d heads, d_ff %d, vocab %d), policy %s, %s on %s\n",
                name.c_str(), m.name.c_str(), std::string(nn::to_string(m.arch)).c_str(), m.layers,
                m.d_model, m.heads, m.d_ff, m.vocab, c.train.policy.c_str(),
                (c.precision != "fp8" ? c.precision
                 : c.fp8_scaling == "current"
                     ? std::string("fp8 (current scaling)")
                     : "fp8 (delayed scaling, margin " + std::to_string(c.fp8_margin) + ")")
                    .c_str(),
                device.c_str());
  if (root)
    std::printf("data: %s | %lld steps x %lld sequences x %lld tokens (grad accum %lld) | out %s\n",
                c.train.data.empty() ? "built-in corpus" : c.train.data.c_str(),
                static_cast<long long>(c.train.steps), static_cast<long long>(c.train.batch),
                static_cast<long long>(c.train.seq_len), static_cast<long long>(c.train.grad_accum),
                c.train.out.c_str());
  std::fflush(stdout);
  if (env.distributed()) {
    FATHOM_CHECK(device == "cuda", "a multi-process launch ("
                                       << env.launcher
                                       << ") trains on GPUs: use --device cuda (for ranks on the "
                                          "CPU: --nproc N --device cpu)");
    launched_rank = env.rank;
#if defined(FATHOM_HAS_NCCL)
    dist::NcclOptions no;
    no.timeout_s = c.dist_timeout;
    dist::NcclCommunicator comm(env, no);
    if (root)
      std::printf("ranks: %d (%s, NCCL)%s\n", env.world_size, env.launcher.c_str(),
                  c.zero ? ", ZeRO-1" : "");
    try {
      return dispatch_backend(c.precision, device, [&]<class T, class D>() {
        return Backend<T, D>::train(c, policies, &comm);
      });
    } catch (const std::exception& e) {
      comm.report_failure(train_error_message(e));
      throw;
    }
#else
    FATHOM_FAIL(
        "this program was built without NCCL, so it cannot train on several GPUs "
        "(configure with NCCL found: NCCL_HOME)");
#endif
  }
  if (c.nproc > 1 || c.zero > 0) {  // ranks as threads over the CPU (one rank: ZeRO-1 alone)
    if (c.nproc > 1) std::printf("ranks: %d (in-process)%s\n", c.nproc, c.zero ? ", ZeRO-1" : "");
    int status = 0;
    dist::run_ranks(c.nproc, [&](dist::Communicator& comm) {
      const int s = dispatch_backend(c.precision, device, [&]<class T, class D>() {
        return Backend<T, D>::train(c, policies, &comm);
      });
      if (comm.rank() == 0) status = s;
    });
    return status;
  }
  return dispatch_backend(c.precision, device,
                          [&]<class T, class D>() { return Backend<T, D>::train(c, policies); });
}

// Runs body, turning an exception into one line "NAME: error: ..." (with fathom-train's flag where
// the library names a TrainOptions member) and exit status 1.
template <class Body>
int reporting_errors(const std::string& name, bool newline_first, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    const std::string rank =
        launched_rank >= 0 ? "rank " + std::to_string(launched_rank) + ": " : "";
    std::fprintf(stderr, "%s%s: %serror: %s\n", newline_first ? "\n" : "", name.c_str(),
                 rank.c_str(), train_error_message(e).c_str());
    return 1;
  }
}

// Flag values are checked as written, before conversion: a count must be an integer in range (so
// 1e23 is not silently read as INT64_MAX), a number finite and in range (so nan never passes).
CLI::Validator count_in(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        long long v = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || end != text.data() + text.size() || v < lo || v > hi)
          return "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                 "], got '" + text + "'";
        return {};
      },
      "");  // the help already says INT
}

CLI::Validator number_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double v = 0;
        std::size_t used = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size() || !std::isfinite(v) || v < lo || v > hi) {
          std::ostringstream range;
          range << "expected a finite number in [" << lo << ", " << hi << "], got '" << text << "'";
          return range.str();
        }
        return {};
      },
      "NUMBER");
}

// A parse error as one line "NAME: error: ..." (--help and --list-policies exit 0 as CLI11 does).
int parse_failed(const CLI::App& app, const CLI::ParseError& e, const std::string& name) {
  if (e.get_exit_code() == 0) return app.exit(e);
  std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
  return e.get_exit_code();
}

// --list-policies: the names, one a line (tools/compare_policies.py reads them).
void add_list_policies(CLI::App& app, const PolicyRegistry& policies) {
  app.add_flag_callback(
      "--list-policies",
      [&policies] {
        for (const auto& n : policies.names()) std::printf("%s\n", n.c_str());
        throw CLI::Success();
      },
      "print the names of the policies this program knows, one a line, and exit");
}

// fathom-train's command line. `relaunch`: the command that starts this program's training again
// (--nproc ranks): {argv[0]} for fathom-train, {argv[0], "train"} under program_main.
int train_command(int argc, char** argv, const PolicyRegistry& policies, const std::string& name,
                  const std::vector<std::string>& relaunch) {
  TrainCli c;
  auto& t = c.train;
  CLI::App app{name +
               ": train a decoder-only LM with a chosen normalization policy.\n"
               "With no --data it trains on fathom's built-in synthetic corpus (byte tokens)."};
  app.name(name);
  app.option_defaults()->always_capture_default();
  // A later value of an option overrides an earlier one (scripts/run.sh passes defaults first).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--preset", c.preset, "model preset: " + joined(nn::preset_names));
  app.add_option("--policy", t.policy, "normalization policy: " + policies.joined_names());
  add_list_policies(app, policies);
  // Size overrides: 0 in the options means "not given", so the help shows no default for them.
  auto size_override = [&](const char* flag, int& field, const std::string& help) {
    app.add_option(flag, field, help)->check(count_in(1, INT_MAX))->default_str("");
  };
  size_override("--layers", c.layers, "override the preset's number of blocks");
  size_override("--d-model", c.d_model, "override the model width");
  size_override("--heads", c.heads, "override the number of attention heads");
  size_override("--d-ff", c.d_ff, "override the MLP hidden size");
  size_override("--vocab", c.vocab,
                "override the vocabulary size (default: the data's, from the dataset.json that "
                "fathom-prepare writes beside the shards; else the preset's)");
  app.add_option("--seq-len", t.seq_len, "tokens per sequence")->check(count_in(1, INT_MAX));
  app.add_option("--data", t.data,
                 "training token shards (glob, llm.c format); none: the built-in corpus");
  app.add_option("--val-data", t.val_data, "validation token shards (glob)");
  app.add_option("--steps", t.steps, "optimizer steps")->check(count_in(1, LLONG_MAX));
  app.add_option("--batch", t.batch, "sequences per micro-batch")->check(count_in(1, LLONG_MAX));
  app.add_option("--grad-accum", t.grad_accum, "micro-batches per optimizer step")
      ->check(count_in(1, LLONG_MAX));
  app.add_option("--lr", t.lr, "peak learning rate")->check(number_in(0, 1e30));
  app.add_option("--min-lr-ratio", c.min_lr_ratio, "final learning rate as a fraction of the peak")
      ->check(number_in(0, 1));
  app.add_option("--warmup", c.warmup, "warmup steps (-1: 10% of --steps)")
      ->check(count_in(-1, LLONG_MAX));
  app.add_option("--schedule", c.schedule, "cosine (linear warmup, cosine decay), constant, wsd");
  app.add_option("--optimizer", c.optimizer, "adamw, adam, sgd");
  app.add_option("--weight-decay", c.weight_decay,
                 "weight decay (not on norms, biases, embeddings)")
      ->check(number_in(0, 1e30));
  app.add_option("--clip", t.clip, "max global gradient norm (0: no clipping)")
      ->check(number_in(0, 1e30));
  app.add_option("--device", c.device, "auto, cpu, cuda");
  app.add_option("--precision", c.precision,
                 "fp32; bf16 (bf16 weights and activations, fp32 master weights); or fp8 (bf16, "
                 "with the blocks' linear-layer GEMMs in fp8: E4M3 forward, E5M2 gradients, "
                 "per-tensor scaling as --fp8-scaling says; CUDA GPUs of compute capability "
                 "8.9+)");
  app.add_option("--fp8-scaling", c.fp8_scaling,
                 "with --precision fp8: current (each tensor by its own amax, one more pass over "
                 "it) or delayed (activations and gradients by the largest amax of their last 16 "
                 "steps, kept in checkpoints; on several GPUs every rank's are their maximum over "
                 "the ranks)");
  app.add_option("--fp8-margin", c.fp8_margin,
                 "with --fp8-scaling delayed: scale 2^N below the format's largest value, so that "
                 "a tensor whose amax grows faster than its history saturates less (default " +
                     std::to_string(nn::Fp8Recipe{}.margin) + ")")
      ->check(count_in(0, autograd::Fp8History<Cpu>::max_margin))
      ->default_str("");
  app.add_option("--gemm-autotune", c.gemm_autotune,
                 "auto (on with --device cuda), on (each GEMM shape's cuBLASLt algorithm the "
                 "fastest of the heuristic's first 8 that give its first's bits, timed when the "
                 "shape is first used; CUDA only; docs/performance.md) or off (the heuristic's "
                 "first)")
      ->capture_default_str();
  app.add_option("--seed", t.seed, "seed of initialization and data order")
      ->check(count_in(0, LLONG_MAX));
  app.add_option("--eval-every", t.eval_every, "evaluate every N steps (0: at the end only)")
      ->check(count_in(0, LLONG_MAX));
  app.add_option("--eval-batches", t.eval_batches, "validation batches per evaluation")
      ->check(count_in(0, LLONG_MAX));
  app.add_option("--save-every", t.save_every, "checkpoint every N steps (0: at the end only)")
      ->check(count_in(0, LLONG_MAX));
  app.add_option("--log-every", t.log_every, "write metrics every N steps")
      ->check(count_in(1, LLONG_MAX));
  app.add_option("--diag-every", t.diag_every,
                 "log each block's output variance every N steps (0: never)")
      ->check(count_in(0, LLONG_MAX));
  app.add_option("--out", t.out,
                 "run folder: metrics.jsonl and ckpt-STEP folders; one that holds another run is "
                 "refused unless --resume or --overwrite says what to do with it");
  app.add_option("--resume", t.resume,
                 "continue a run from a ckpt-STEP folder, or a run folder (its latest "
                 "checkpoint); --out may hold no other run");
  app.add_flag("--overwrite", t.overwrite,
               "replace the run in --out: remove its metrics.jsonl and ckpt-* folders once the new "
               "run is set up (other files there are kept)");
  app.add_flag("--skip-nonfinite", t.skip_nonfinite,
               "skip steps whose loss is NaN or Inf instead of stopping");
  app.add_option("--builtin-tokens", t.builtin_tokens,
                 "size of the built-in corpus's training split")
      ->check(count_in(1, LLONG_MAX));
  app.add_option("--deepnorm-alpha", c.deepnorm_alpha, "DeepNorm residual scale (0: (2L)^(1/4))");
  app.add_option("--deepnorm-beta", c.deepnorm_beta, "DeepNorm init gain (0: (8L)^(-1/4))");
  app.add_flag("--post-ln-no-final-norm", c.post_ln_no_final_norm,
               "Post-LN without the final norm");
  app.add_option("--sample", c.sample_after,
                 "after training, sample this many tokens from the model");
  app.add_option("--generate", c.generate, "sample from this checkpoint instead of training");
  app.add_option("--prompt", c.prompt, "prompt for --sample / --generate");
  app.add_option("--tokens", c.sample_tokens, "tokens to generate with --generate")
      ->check(count_in(0, INT_MAX));
  app.add_option("--temperature", c.temperature, "sampling temperature (0: greedy)")
      ->check(number_in(0, 1e6));
  app.add_option("--nproc", c.nproc,
                 "ranks to start on this host: processes, one a GPU (--device cuda), or threads "
                 "(cpu); the global batch is --batch x ranks x --grad-accum");
  app.add_option("--zero", c.zero,
                 "1: shard the optimizer state over the ranks (ZeRO-1); 0: replicate it");
  app.add_option("--dist-timeout", c.dist_timeout,
                 "seconds a collective may wait before the run stops naming the rank at fault");
  app.add_flag(
      "--no-live", [&](std::int64_t) { t.live_progress = false; },
      "plain log lines even on a terminal");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return parse_failed(app, e, name);
  }
  return reporting_errors(name, true, [&] {
    return c.generate.empty() ? run_train(c, policies, name, relaunch, argc, argv)
                              : run_generate(c, policies);
  });
}

}  // namespace

int train_main(int argc, char** argv, const PolicyRegistry& policies, const std::string& name) {
  return train_command(argc, argv, policies, name, {argc > 0 ? argv[0] : name});
}

int generate_main(int argc, char** argv, const PolicyRegistry& policies, const std::string& name) {
  TrainCli c;
  CLI::App app{name + ": sample text from a fathom checkpoint"};
  app.name(name);
  app.option_defaults()->always_capture_default();
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("checkpoint", c.generate,
                 "a ckpt-STEP folder, or a run folder (its latest checkpoint)")
      ->required();
  app.add_option("--prompt", c.prompt, "text the sample continues");
  app.add_option("--tokens", c.sample_tokens, "tokens to generate")->check(count_in(0, INT_MAX));
  app.add_option("--temperature", c.temperature, "sampling temperature (0: greedy)")
      ->check(number_in(0, 1e6));
  app.add_option("--seed", c.train.seed, "seed of the sampling");
  app.add_option("--device", c.device, "auto, cpu, cuda");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return parse_failed(app, e, name);
  }
  return reporting_errors(name, false, [&] { return run_generate(c, policies); });
}

int diagnose_main(int argc, char** argv, const PolicyRegistry& policies, const std::string& name) {
  DiagnoseCli o;
  CLI::App app{name + ": curse-of-depth diagnostics of a fathom checkpoint, as JSON"};
  app.name(name);
  app.option_defaults()->always_capture_default();
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // as fathom-train
  app.add_option("checkpoint", o.checkpoint,
                 "a ckpt-STEP folder, or a run folder (its latest checkpoint)")
      ->required();
  app.add_option("--data", o.data,
                 "held-out token shards (glob); none: the run's own validation (or training) "
                 "data, recorded in the checkpoint, else the built-in corpus's validation split");
  app.add_option("--batches", o.batches, "batches to average over")->check(count_in(1, 1000000));
  app.add_option("--batch", o.batch, "sequences per batch")->check(count_in(1, 1000000));
  app.add_option("--seq-len", o.seq_len,
                 "tokens per sequence (0: the run's own, recorded in the checkpoint)")
      ->check(count_in(0, INT_MAX));
  app.add_option("--device", o.device, "auto, cpu, cuda");
  app.add_option("--out", o.out, "write the JSON here (default: stdout)");
  app.add_flag("--no-removal", o.no_removal, "skip layer removal (L extra forwards a batch)");
  app.add_flag("--no-gradients", o.no_gradients, "skip per-layer gradient norms");
  app.add_option("--logits-out", o.logits_out,
                 "also write the first batch's tokens and logits here, for scripts/hf_compare.py");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return parse_failed(app, e, name);
  }
  return reporting_errors(name, false, [&] {
    const auto ck = read_checkpoint(o.checkpoint);
    const std::string device = resolve_device(o.device);
    return dispatch_backend(ck.fields.at("precision").get<std::string>(), device,
                            [&]<class T, class D>() {
                              return Backend<T, D>::diagnose(o, ck.dir, ck.fields, policies);
                            });
  });
}

int program_main(int argc, char** argv, const PolicyRegistry& policies) {
  const std::string program =
      argc > 0 ? std::filesystem::path(argv[0]).filename().string() : "fathom";
  auto usage = [&](std::FILE* to) {
    std::fprintf(
        to,
        "usage: %s COMMAND [flags]   (%s COMMAND --help lists a command's flags)\n"
        "commands:\n"
        "  train     train a model (the flags of fathom-train)\n"
        "  diagnose  depth diagnostics of a checkpoint, as JSON (the flags of fathom-diagnose)\n"
        "  generate  sample text from a checkpoint\n"
        "  policies  list the normalization policies this program knows\n",
        program.c_str(), program.c_str());
  };
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string_view command = argv[1];
  const std::string name = program + " " + std::string(command);
  if (command == "train")
    return train_command(argc - 1, argv + 1, policies, name, {argv[0], "train"});
  if (command == "diagnose") return diagnose_main(argc - 1, argv + 1, policies, name);
  if (command == "generate") return generate_main(argc - 1, argv + 1, policies, name);
  if (command == "policies") {
    for (const auto& e : policies.entries())
      std::printf("%-14s %s\n", e.name.c_str(), e.description.c_str());
    return 0;
  }
  if (command == "--help" || command == "-h" || command == "help") {
    usage(stdout);
    return 0;
  }
  std::fprintf(
      stderr,
      "%s: error: unknown command '%s'; valid commands: train, diagnose, generate, policies\n",
      program.c_str(), argv[1]);
  return 2;
}

}  // namespace fathom::programs
