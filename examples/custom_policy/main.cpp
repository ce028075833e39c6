// custom_policy: a normalization policy defined outside the library (LNS on the MLP branch only,
// the paper's Table 8 "only FFN") trained for a few steps on CPU with plain SGD written inline.
//
//   custom_policy [POLICY] [STEPS]   POLICY: lns-mlp-only (default), or another to compare with
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fathom/fathom.hpp>

#include "table8.hpp"

// The whole policy: x + F(N(x) / sqrt(l)) on the MLP sub-layer, x + F(N(x)) on attention. The
// scale goes to the norm slot, which folds it into the norm kernel; s.residual(v) is s.x + s.f(v)
// with the add folded into the branch's last GEMM; autograd does the rest.
struct LnsMlpOnly {
  template <class S>
  auto apply(S& s) const {
    const bool mlp = s.kind == fathom::policy::Sublayer::mlp;
    const double scale = mlp ? 1.0 / std::sqrt(static_cast<double>(s.layer)) : 1.0;
    return s.residual(s.norm(0, s.x, scale));
  }
};
static_assert(fathom::policy::NormPolicy<LnsMlpOnly>);

namespace {

constexpr int batch = 8, seq = 64;
constexpr double learning_rate = 0.5;

// A (batch, seq + 1) window of the built-in corpus per sequence: inputs and next-token targets.
struct Batch {
  fathom::Tensor<std::int32_t> tokens, targets;
};

Batch sample(const std::vector<std::int32_t>& corpus, std::uint64_t step) {
  std::vector<std::int32_t> x, y;
  for (int b = 0; b < batch; ++b) {
    const double u = fathom::rng::uniform(7, step * batch + static_cast<std::uint64_t>(b));
    const auto start = static_cast<std::size_t>(u * static_cast<double>(corpus.size() - seq - 1));
    x.insert(x.end(), corpus.begin() + static_cast<std::ptrdiff_t>(start),
             corpus.begin() + static_cast<std::ptrdiff_t>(start + seq));
    y.insert(y.end(), corpus.begin() + static_cast<std::ptrdiff_t>(start + 1),
             corpus.begin() + static_cast<std::ptrdiff_t>(start + seq + 1));
  }
  return {fathom::Tensor<std::int32_t>::from_vector(fathom::Shape{batch, seq}, x),
          fathom::Tensor<std::int32_t>::from_vector(fathom::Shape{batch, seq}, y)};
}

template <class Policy>
int train(const char* name, int steps) {
  fathom::nn::DecoderLM<fathom::nn::Llama, Policy, float> model(fathom::nn::preset("tiny"));
  model.init(/*seed=*/1);
  std::printf("policy %s: %lld parameters, %d blocks, batch %d x %d, SGD lr %.2f\n", name,
              static_cast<long long>(model.num_parameters()), model.config().layers, batch, seq,
              learning_rate);
  const auto corpus = fathom::data::builtin_corpus(fathom::data::Split::train, 1 << 18);
  const auto val =
      sample(fathom::data::builtin_corpus(fathom::data::Split::validation, 1 << 14), 0);

  for (int step = 1; step <= steps; ++step) {
    Batch b = sample(corpus, static_cast<std::uint64_t>(step));
    auto loss = model.loss(b.tokens, b.targets);
    fathom::autograd::backward(loss);
    for (auto& p : model.parameters()) {  // plain SGD: w -= lr * dL/dw, in place
      float* w = p.var.mutable_value().data();
      const float* g = p.var.grad().data();
      for (std::int64_t i = 0; i < p.var.numel(); ++i)
        w[i] -= static_cast<float>(learning_rate) * g[i];
    }
    model.zero_grad();
    if (step == 1 || step % 10 == 0 || step == steps)
      std::printf("step %3d  loss %.4f\n", step, loss.value().item());
  }
  fathom::autograd::NoGradGuard no_grad;
  std::printf("validation loss %.4f (uniform guess: %.4f)\n",
              model.loss(val.tokens, val.targets).value().item(),
              std::log(static_cast<double>(model.config().vocab)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string policy = argc > 1 ? argv[1] : "lns-mlp-only";
  const int steps = argc > 2 ? std::atoi(argv[2]) : 60;
  try {
    // A program, not the library, turns a name into a type.
    if (policy == "lns-mlp-only") return train<LnsMlpOnly>("lns-mlp-only", steps);
    if (policy == "lns-attn-only") return train<table8::LnsAttentionOnly>("lns-attn-only", steps);
    if (policy == "scale-before-norm")
      return train<table8::ScaleBeforeNorm>("scale-before-norm", steps);
    if (policy == "scale-branch-output")
      return train<table8::ScaleBranchOutput>("scale-branch-output", steps);
    if (policy == "scale-after-add") return train<table8::ScaleAfterAdd>("scale-after-add", steps);
    if (policy == "lns") return train<fathom::policy::LNS>("lns", steps);
    if (policy == "pre-ln") return train<fathom::policy::PreLN>("pre-ln", steps);
    std::fprintf(stderr,
                 "custom_policy: unknown policy '%s'; valid policies: lns-mlp-only, lns-attn-only, "
                 "scale-before-norm, scale-branch-output, scale-after-add, lns, pre-ln\n",
                 policy.c_str());
  } catch (const fathom::Error& e) {
    std::fprintf(stderr, "custom_policy: %s\n", e.what());
  }
  return 1;
}
