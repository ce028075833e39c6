// The bodies of Backend<T, D>: training, sampling and diagnostics for one precision and device.
// Included by exactly one translation unit per backend (backend_*.cpp / backend_*.cu).
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "fathom/data/tokenizer.hpp"
#include "fathom/diag/diagnostics.hpp"
#include "fathom/nn/generate.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/data_parallel.hpp"
#include "fathom/train/trainer.hpp"
#if defined(__CUDACC__)
#include "fathom/kernels/cuda/fp8.cuh"
#include "fathom/kernels/cuda/gemm.cuh"
#endif
#include "programs.hpp"
#include "register_policy.hpp"
#include "run_tokenizer.hpp"

namespace fathom::programs {

// Samples `n` tokens after `prompt` (temperature 0: greedy) with nn::generate, as text. `tok` is
// the tokenizer of the model's training data: it encodes the prompt and decodes the sample.
template <class T, DeviceTag D>
std::string sample_text(const nn::LanguageModel<T, D>& model, const data::Tokenizer& tok,
                        const std::string& prompt, int n, double temperature, std::uint64_t seed) {
  std::vector<std::int32_t> ids = tok.encode(prompt);
  if (ids.empty()) ids.push_back(std::max(tok.bos_id(), tok.eos_id()));
  FATHOM_CHECK(ids.back() >= 0,
               "--prompt: empty, and the tokenizer has no start or end token to begin with");
  nn::GenerateOptions g;
  g.tokens = n;
  g.temperature = temperature;
  g.seed = seed;
  g.vocab_limit =
      tok.vocab_size();  // only ids the tokenizer can decode (a larger vocab leaves unused rows)
  std::vector<std::int32_t> all = ids;
  const std::vector<std::int32_t> generated = nn::generate(model, std::move(ids), g);
  const std::string head = tok.decode(all);
  all.insert(all.end(), generated.begin(), generated.end());
  // Decoded after the prompt, not alone: a subword tokenizer spells a word's leading space with
  // the word's first piece, which decoding on its own would drop.
  const std::string text = tok.decode(all);
  return text.compare(0, head.size(), head) == 0 ? text.substr(head.size()) : tok.decode(generated);
}

// Rebuilds the model a checkpoint was trained as (from its config.json's fathom fields) and loads
// its weights.
template <class T, DeviceTag D>
std::unique_ptr<nn::LanguageModel<T, D>> load_model(const std::filesystem::path& ckpt,
                                                    const nlohmann::json& fields,
                                                    const PolicyRegistry& policies) {
  auto model = policies.make_model<T, D>(fields.at("model").get<nn::ModelConfig>(),
                                         fields.at("policy").get<std::string>(),
                                         fields.value("policy_options", nlohmann::json::object()),
                                         "checkpoint '" + ckpt.string() + "'");
  train::CheckpointParts parts;
  parts.optimizer = false;  // the weights only
  train::load_weights(*model, train::load_checkpoint(ckpt, parts));
  return model;
}

template <class T, DeviceTag D>
int Backend<T, D>::train(const TrainCli& c, const PolicyRegistry& policies,
                         dist::Communicator* comm) {
  const bool root = !comm || comm->rank() == 0;
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<D, Cuda>) kernels::set_gemm_autotune(c.gemm_autotune != "off");
#endif
  auto model = policies.make_model<T, D>(c.train.model, c.train.policy, c.train.policy_options);
  if (c.precision == "fp8")
    model->set_linear_precision(nn::LinearPrecision::fp8,
                                fp8_recipe_of(c.fp8_scaling, c.fp8_margin));
  if (root)
    std::printf("parameters: %.2fM\n",
                static_cast<double>(nn::count_elements(model->parameters())) / 1e6);
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
        : !o.data.empty()
            ? data::TokenSource::from_pattern(o.data, so)
            : data::TokenSource::from_tokens(
                  data::builtin_corpus(data::Split::validation,
                                       static_cast<std::size_t>(so.batch * (so.seq_len + 1) + 1),
                                       o.seed),
                  so, "built-in corpus (validation)");
    auto b = src.next();
    auto x = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs);
    auto y = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.targets);
    hook = [&model, x, y](std::int64_t step, train::MetricsLog& metrics) {
      metrics.write(
          {{"step", step}, {"layer_variance", diag::block_output_variance<T, D>(*model, x, y)}});
    };
  }
  auto r = comm ? train::train_data_parallel<T, D>(c.train, *model, *comm, {.zero = c.zero}, hook)
                : train::train<T, D>(c.train, *model, hook);
  if (!root) return 0;
  if (r.already_complete) {
    std::printf("\nnothing to do: the run in %s is already complete (step %lld of %lld, %s)\n",
                c.train.out.c_str(), static_cast<long long>(r.steps_done),
                static_cast<long long>(c.train.steps), r.last_checkpoint.string().c_str());
    return 0;
  }
  std::printf("\ndone: steps %lld..%lld, loss %.4f -> %.4f", static_cast<long long>(r.first_step),
              static_cast<long long>(r.steps_done), r.first_loss, r.last_loss);
  if (std::isfinite(r.final_val_loss))
    std::printf(", val_loss %.4f (ppl %.2f)", r.final_val_loss, std::exp(r.final_val_loss));
  std::printf("\n      %.0f tokens/s, %.1f s, %lld tokens", r.tokens_per_s, r.wall_s,
              static_cast<long long>(r.tokens));
  if (r.skipped_steps) std::printf(", %lld steps skipped", static_cast<long long>(r.skipped_steps));
#if defined(__CUDACC__)
  if (const auto tiled = kernels::detail::tiled_gemm_fp8_runs(); tiled > 0)
    std::printf(
        "\n      note: %llu of %llu fp8 GEMMs ran on the tiled kernel (cuBLASLt declined "
        "them), far below tensor-core speed",
        static_cast<unsigned long long>(tiled),
        static_cast<unsigned long long>(tiled + kernels::detail::lt_gemm_fp8_runs()));
#endif
  std::printf("\n      metrics: %s\n      checkpoint: %s\n",
              (std::filesystem::path(c.train.out) / "metrics.jsonl").string().c_str(),
              r.last_checkpoint.string().c_str());
  if (c.sample_after > 0) {
    auto tok = make_run_tokenizer(c.train.tokenizer, c.train.tokenizer_model, "--sample");
    std::printf(
        "sample: %s%s\n", c.prompt.c_str(),
        sample_text<T, D>(*model, *tok, c.prompt, c.sample_after, c.temperature, c.train.seed)
            .c_str());
  }
  return 0;
}

template <class T, DeviceTag D>
int Backend<T, D>::generate(const TrainCli& c, const std::filesystem::path& ckpt,
                            const nlohmann::json& fields, const PolicyRegistry& policies) {
  auto tok = checkpoint_tokenizer(ckpt, fields);  // before the model: a refusal costs nothing
  auto model = load_model<T, D>(ckpt, fields, policies);
  std::cout << c.prompt
            << sample_text<T, D>(*model, *tok, c.prompt, c.sample_tokens, c.temperature,
                                 c.train.seed)
            << "\n";
  return 0;
}

template <class T, DeviceTag D>
int Backend<T, D>::diagnose(const DiagnoseCli& o, const std::filesystem::path& ckpt,
                            const nlohmann::json& fields, const PolicyRegistry& policies) {
  auto model = load_model<T, D>(ckpt, fields, policies);
  const auto& m = model->config();
  // By default the run's own sequence length and held-out data (recorded in trainer_state.json;
  // older checkpoints: min(max_seq, 256) and the built-in corpus).
  const auto state = train::read_json(ckpt / "trainer_state.json");
  const std::int64_t trained_seq_len = state.value("seq_len", std::int64_t{0});
  std::string held_out = o.data;
  if (held_out.empty()) held_out = state.value("val_data", std::string());
  if (held_out.empty()) held_out = state.value("data", std::string());
  data::SamplerOptions so;
  so.batch = o.batch;
  so.seq_len = o.seq_len > 0         ? o.seq_len
               : trained_seq_len > 0 ? std::min<std::int64_t>(trained_seq_len, m.max_seq)
                                     : std::min(m.max_seq, 256);
  so.order = data::SampleOrder::sequential;
  so.vocab = static_cast<std::uint32_t>(m.vocab);
  // The built-in corpus's validation split depends on the run's seed.
  const std::uint64_t seed = state.value("seed", std::uint64_t{0});
  data::TokenSource src =
      held_out.empty()
          ? data::TokenSource::from_tokens(
                data::builtin_corpus(
                    data::Split::validation,
                    static_cast<std::size_t>(o.batches * o.batch * (so.seq_len + 1) + 1), seed),
                so, "built-in corpus (validation)")
          : data::TokenSource::from_pattern(held_out, so);
  std::vector<data::Batch> batches;
  for (std::int64_t i = 0;
       i < std::min<std::int64_t>(o.batches, static_cast<std::int64_t>(src.batches_per_pass()));
       ++i)
    batches.push_back(src.next());
  if (!o.logits_out.empty()) {
    // The first batch's tokens and fathom's logits, in the files scripts/hf_compare.py reads.
    const auto& b = batches.at(0);
    const std::filesystem::path dir(o.logits_out);
    std::filesystem::create_directories(dir);
    autograd::NoGradGuard no_grad;
    auto x = Tensor<std::int32_t, D>::from_vector(Shape{b.batch, b.seq_len}, b.inputs);
    auto logits = model->forward(x).value().template cast<float>().template to<Cpu>();  // (B*T, V)
    auto values = logits.to_vector();
    train::write_safetensors(
        dir / "compare_logits.safetensors",
        {train::make_tensor_record<float>("logits", {b.batch, b.seq_len, m.vocab},
                                          std::span<const float>(values))});
    nlohmann::json tokens = nlohmann::json::array();
    for (std::int64_t r = 0; r < b.batch; ++r)
      tokens.push_back(std::vector<std::int32_t>(b.inputs.begin() + r * b.seq_len,
                                                 b.inputs.begin() + (r + 1) * b.seq_len));
    std::ofstream(dir / "compare_input.json")
        << nlohmann::json{{"tokens", tokens}, {"logits_file", "compare_logits.safetensors"}}.dump()
        << "\n";
    std::fprintf(stderr, "wrote %s/compare_input.json and compare_logits.safetensors\n",
                 dir.string().c_str());
  }
  diag::DiagnosticsOptions dopt;
  dopt.layer_removal = !o.no_removal;
  dopt.gradients = !o.no_gradients;
  std::fprintf(stderr, "fathom-diagnose: %s, %s, %d layers, %zu batches of %lld x %lld\n",
               ckpt.string().c_str(), fields.value("policy", std::string("?")).c_str(), m.layers,
               batches.size(), static_cast<long long>(so.batch),
               static_cast<long long>(so.seq_len));
  auto d = diag::run_diagnostics<T, D>(*model, batches, dopt);
  nlohmann::json j = d.to_json();
  j["checkpoint"] = ckpt.string();
  j["policy"] = fields.value("policy", std::string());
  j["model"] = fields.value("model", nlohmann::json::object());
  j["seq_len"] = so.seq_len;
  j["batch"] = so.batch;
  if (o.out.empty()) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::ofstream f(o.out);
    f << j.dump(2) << "\n";
    FATHOM_CHECK(f.good(), "--out: cannot write '" << o.out << "'");
    std::fprintf(stderr, "wrote %s (loss %.4f)\n", o.out.c_str(), d.loss);
  }
  return 0;
}

template <class T, DeviceTag D>
void Backend<T, D>::add_builtin_policies(PolicyRegistry& policies) {
  programs::add_builtin_policies<T, D>(policies);
}

}  // namespace fathom::programs
