// fathom-diagnose: curse-of-depth diagnostics of a checkpoint on held-out batches, written as JSON
// (per-layer variance, branch variance, gradient norms, angular distances, layer removal). The work
// is compiled once per (precision, device) in examples/common (fathom_programs).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "programs.hpp"

namespace fathom::programs {

int diagnose_main(int argc, char** argv) {
  DiagnoseCli o;
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
  app.add_option("--logits-out", o.logits_out,
                 "also write the first batch's tokens and logits here, for scripts/hf_compare.py");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    const auto ckpt = train::resolve_checkpoint(o.checkpoint);
    const auto fields = train::hf_fathom_fields(train::read_json(ckpt / "config.json"));
    FATHOM_CHECK(fields.contains("model") && fields.contains("policy"),
                 "'" << (ckpt / "config.json").string() << "' has no fathom fields: not a fathom checkpoint");
    const std::string device = resolve_device(o.device);
    return dispatch_backend(fields.at("precision").get<std::string>(), device,
                            [&]<class T, class D>() { return Backend<T, D>::diagnose(o, ckpt, fields); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fathom-diagnose: error: %s\n", user_message(e).c_str());
    return 1;
  }
}

}  // namespace fathom::programs

int main(int argc, char** argv) { return fathom::programs::diagnose_main(argc, argv); }
