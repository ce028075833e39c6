// diagnostics_api: the fathom::diag API on two small models trained a few steps on CPU, Pre-LN and
// LNS: per-layer variance, angular distances, gradient norms, layer removal, and an observer of
// one's own. Writes OUT/<policy>/metrics.jsonl and OUT/<policy>.json for tools/plot.py.
//
//   diagnostics_api [STEPS] [OUT]   (defaults: 40 steps, folder diagnostics_api_out)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fathom/diag/diagnostics.hpp>
#include <fathom/fathom.hpp>

namespace {

using namespace fathom;

// Held-out batches: consecutive windows of the built-in corpus's validation split.
std::vector<data::Batch> held_out_batches(int count, std::int64_t batch, std::int64_t seq_len) {
  data::SamplerOptions so;
  so.batch = batch;
  so.seq_len = seq_len;
  so.order = data::SampleOrder::sequential;
  auto tokens = data::builtin_corpus(data::Split::validation,
                                     static_cast<std::size_t>(count * batch * (seq_len + 1) + 1));
  auto source = data::TokenSource::from_tokens(tokens, so, "built-in corpus (validation)");
  std::vector<data::Batch> out;
  for (int i = 0; i < count; ++i) out.push_back(source.next());
  return out;
}

template <class Policy>
void study(const char* name, int steps, const std::filesystem::path& out,
           const std::vector<data::Batch>& held_out) {
  nn::ModelConfig config = nn::preset("tiny");
  config.layers = 8;
  nn::DecoderModel<nn::Llama, Policy, float, Cpu> model(config, Policy{});

  // Train a few steps, logging each block's output variance on the first held-out batch every 10
  // steps (what fathom-train --diag-every 10 does).
  train::TrainOptions o;
  o.model = config;
  o.policy = name;
  o.steps = steps;
  o.batch = 8;
  o.seq_len = 64;
  o.eval_every = 0;
  o.quiet = true;
  o.diag_every = 10;
  o.out = (out / name).string();
  o.overwrite = true;  // a second start replaces the first's run (its metrics and checkpoints)
  const auto& probe = held_out.front();
  auto x = Tensor<std::int32_t>::from_vector(Shape{probe.batch, probe.seq_len}, probe.inputs);
  auto y = Tensor<std::int32_t>::from_vector(Shape{probe.batch, probe.seq_len}, probe.targets);
  auto log_variance = [&](std::int64_t step, train::MetricsLog& metrics) {
    metrics.write(
        {{"step", step}, {"layer_variance", diag::block_output_variance<float, Cpu>(model, x, y)}});
  };
  auto result = train::train<float, Cpu>(o, model, log_variance);

  // Everything at once on the held-out batches.
  diag::Diagnostics d = diag::run_diagnostics<float, Cpu>(model, held_out);
  std::printf("\n%s: %d steps, train loss %.3f, held-out loss %.4f\n", name, steps,
              result.last_loss, d.loss);
  std::printf("  l  variance(x_l)  d(x_l-1, x_l)  grad norm  loss if removed\n");
  for (int i = 0; i < d.layers; ++i) {
    const auto u = static_cast<std::size_t>(i);
    std::printf("%3d  %13.4g  %13.4f  %9.4f  %+15.4f\n", i + 1, d.block_output_variance[u],
                d.angular_distance[u][1], d.grad_norm[u], d.loss_increase[u]);
  }

  // An observer of one's own: the variance of what the policy feeds the MLP branch. Pre-LN feeds
  // N(x) (variance about 1 times the norm's weight); LNS feeds N(x) / sqrt(l), so about 1 / l.
  std::vector<double> mlp_input(static_cast<std::size_t>(config.layers), 0.0);
  nn::ForwardOptions<float, Cpu> options;
  options.observer = [&](int block, nn::Site site, const Var<float, Cpu>& v) {
    if (site == nn::Site::mlp_input)
      mlp_input[static_cast<std::size_t>(block)] = diag::variance(v.value().to_vector());
  };
  {
    autograd::NoGradGuard no_grad;
    model.loss(x, y, options);
  }
  std::printf("  variance of the MLP branch's input, l = 1..%d:", config.layers);
  for (double v : mlp_input) std::printf(" %.3f", v);
  std::printf("\n");

  nlohmann::json j = d.to_json();
  j["policy"] = name;
  std::ofstream(out / (std::string(name) + ".json")) << j.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 40;
  const std::filesystem::path out = argc > 2 ? argv[2] : "diagnostics_api_out";
  if (steps < 1) {
    std::fprintf(stderr, "usage: diagnostics_api [STEPS >= 1] [OUT]\n");
    return 2;
  }
  try {
    std::filesystem::create_directories(out);
    const auto held_out = held_out_batches(/*count=*/4, /*batch=*/8, /*seq_len=*/64);
    study<policy::PreLN>("pre-ln", steps, out, held_out);
    study<policy::LNS>("lns", steps, out, held_out);
    std::printf(
        "\nwrote %s/{pre-ln,lns}.json and %s/{pre-ln,lns}/metrics.jsonl; draw them with\n"
        "  tools/plot.py diagnose %s/pre-ln.json %s/lns.json --out plots\n"
        "  tools/plot.py metrics %s/pre-ln %s/lns --out plots\n",
        out.string().c_str(), out.string().c_str(), out.string().c_str(), out.string().c_str(),
        out.string().c_str(), out.string().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "diagnostics_api: %s\n", e.what());
    return 1;
  }
  return 0;
}
