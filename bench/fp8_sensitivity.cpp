// The tiny Llama (LNS) run of the [cuda][train][fp8] curve test, on the CPU (the reference fp8
// kernels): bf16 or fp8 (current or delayed scaling, margin 2), 300 steps of 16 x 128 on the
// built-in corpus, seed 11, each step optionally as ACCUM micro-batches; prints the 300 training
// losses. For comparing curves of builds that differ in rounding only (e.g. two commits):
//   g++ -std=c++20 -O2 -DNDEBUG -DFATHOM_HAS_CBLAS=1 -Iinclude -Itests bench/fp8_sensitivity.cpp \
//     -lopenblas -lpthread -o /tmp/fp8_sensitivity
//   /tmp/fp8_sensitivity fp8-delayed 1 > fp8.txt   # about 3 CPU minutes a run
// usage: fp8_sensitivity MODE ACCUM [TAG]   MODE: bf16 | fp8-current | fp8-delayed; TAG names the
// run's temporary folder (fathom-test-fp8exp-MODE-ACCUM-TAG), so that runs can go side by side.
// The run's options are the test's own (tests/train/runs.hpp, curve_options).
#include <fathom/nn/language_model.hpp>
#include <fathom/nn/presets.hpp>
#include <fathom/policy/lns.hpp>
#include <fathom/train/trainer.hpp>

#include "train/runs.hpp"

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  using namespace fathom;
  if (argc < 3) {
    std::fprintf(stderr, "usage: fp8_sensitivity bf16|fp8-current|fp8-delayed ACCUM [TAG]\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int accum = std::stoi(argv[2]);
  if ((mode != "bf16" && mode != "fp8-current" && mode != "fp8-delayed") || accum < 1 ||
      16 % accum != 0) {
    std::fprintf(stderr,
                 "fp8_sensitivity: MODE bf16, fp8-current or fp8-delayed; ACCUM 1, 2, 4, "
                 "8 or 16\n");
    return 2;
  }
  train::TrainOptions o = test::curve_options(
      "tiny", "fp8exp-" + mode + "-" + argv[2] + "-" + (argc > 3 ? argv[3] : ""));
  o.batch = 16 / accum;
  o.grad_accum = accum;
  nn::DecoderModel<nn::Llama, policy::LNS, bf16, Cpu> model(nn::preset("tiny"), {});
  if (mode != "bf16") {
    nn::Fp8Recipe r;
    r.scaling = mode == "fp8-delayed" ? nn::Fp8Scaling::delayed : nn::Fp8Scaling::current;
    model.set_linear_precision(nn::LinearPrecision::fp8, r);
  }
  auto res = train::train<bf16, Cpu>(o, model);
  for (double l : res.losses) std::printf("%.6f\n", l);
}
