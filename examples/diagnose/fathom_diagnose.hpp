// fathom-diagnose: curse-of-depth diagnostics of a checkpoint on held-out batches, written as JSON
// (per-layer variance, branch variance, gradient norms, angular distances, layer removal).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "../train/fathom_train.hpp"

namespace fathom::programs {

struct DiagnoseOptions {
  std::string checkpoint;
  std::string data;  // shards; empty: the built-in corpus's validation split
  std::int64_t batches = 4, batch = 8, seq_len = 0;  // seq_len 0: the model's max_seq (capped at 256)
  std::string device = "auto";
  std::string out;
  bool no_removal = false, no_gradients = false;
};

inline int diagnose_main(int argc, char** argv) {
  DiagnoseOptions o;
  CLI::App app{"fathom-diagnose: curse-of-depth diagnostics of a fathom checkpoint, as JSON"};
  app.option_defaults()->always_capture_default();
  app.add_option("checkpoint", o.checkpoint, "a ckpt-STEP folder, or a run folder (its latest checkpoint)")->required();
  app.add_option("--data", o.data, "held-out token shards (glob); none: the built-in corpus's validation split");
  app.add_option("--batches", o.batches, "batches to average over");
  app.add_option("--batch", o.batch, "sequences per batch");
  app.add_option("--seq-len", o.seq_len, "tokens per sequence (0: min(max_seq, 256))");
  app.add_option("--device", o.device, "auto, cpu, cuda");
  app.add_option("--out", o.out, "write the JSON here (default: stdout)");
  app.add_flag("--no-removal", o.no_removal, "skip layer removal (L extra forwards a batch)");
  app.add_flag("--no-gradients", o.no_gradients, "skip per-layer gradient norms");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    const auto ckpt = train::resolve_checkpoint(o.checkpoint);
    const auto config = train::read_json(ckpt / "config.json");
    const auto fields = train::hf_fathom_fields(config);
    FATHOM_CHECK(fields.contains("run") || fields.contains("model"),
                 "'" << (ckpt / "config.json").string() << "' has no fathom fields: not a fathom checkpoint");
    const std::string precision = fields.at("precision");
    const std::string device = resolve_device(o.device);
    return dispatch_precision_device(precision, device, [&]<class T, class D>() {
      auto model = load_model<T, D>(ckpt, fields, fields.value("policy_options", nlohmann::json::object()));
      const auto& m = model->config();
      data::SamplerOptions so;
      so.batch = o.batch;
      so.seq_len = o.seq_len > 0 ? o.seq_len : std::min(m.max_seq, 256);
      so.order = data::SampleOrder::sequential;
      so.vocab = static_cast<std::uint32_t>(m.vocab);
      // The built-in corpus's validation split depends on the run's seed.
      const auto state = train::read_json(ckpt / "trainer_state.json");
      const std::uint64_t seed = state.value("seed", std::uint64_t{0});
      data::TokenSource src =
          o.data.empty()
              ? data::TokenSource::from_tokens(
                    data::builtin_corpus(data::Split::validation,
                                         static_cast<std::size_t>(o.batches * o.batch * (so.seq_len + 1) + 1), seed),
                    so, "built-in corpus (validation)")
              : data::TokenSource::from_pattern(o.data, so);
      std::vector<data::Batch> batches;
      for (std::int64_t i = 0; i < std::min<std::int64_t>(o.batches, static_cast<std::int64_t>(src.batches_per_pass())); ++i)
        batches.push_back(src.next());
      diag::DiagnosticsOptions dopt;
      dopt.layer_removal = !o.no_removal;
      dopt.gradients = !o.no_gradients;
      std::fprintf(stderr, "fathom-diagnose: %s, %s, %d layers, %zu batches of %lld x %lld\n", ckpt.string().c_str(),
                   fields.value("policy", std::string("?")).c_str(), m.layers, batches.size(),
                   static_cast<long long>(so.batch), static_cast<long long>(so.seq_len));
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
    });
  } catch (const Error& e) {
    std::fprintf(stderr, "fathom-diagnose: error: %s\n", user_message(e).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fathom-diagnose: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace fathom::programs
