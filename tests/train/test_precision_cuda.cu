// [cuda] bf16 mixed precision against fp32 over a real training run: the tiny Llama (LNS) trained
// for 300 steps on the built-in corpus, once with bf16 weights and activations (fp32 master
// weights, optimizer state, reductions and loss) and once in fp32, from the same seed on the same
// batches. The bf16 loss curve must track the fp32 one: the mean loss of every window of 25 steps
// within 3% of fp32's, and both curves must actually learn.
#include <fathom/cuda.hpp>
#include <fathom/nn/presets.hpp>
#include <fathom/policy/lns.hpp>
#include <fathom/train/trainer.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "support/catch.hpp"
#include "train/runs.hpp"

using namespace fathom;

TEST_CASE("bf16 training tracks the fp32 loss curve over 300 steps (tiny Llama, LNS)",
          "[cuda][train]") {
  auto r32 = train::train<nn::Llama, policy::LNS, float, Cuda>(
      fathom::test::curve_options("tiny", "precision-fp32"));
  auto r16 = train::train<nn::Llama, policy::LNS, bf16, Cuda>(
      fathom::test::curve_options("tiny", "precision-bf16"));
  REQUIRE(r32.losses.size() == 300);
  REQUIRE(r16.losses.size() == 300);
  for (double l : r16.losses) REQUIRE(std::isfinite(l));

  const auto m32 = fathom::test::window_means(r32.losses, 25),
             m16 = fathom::test::window_means(r16.losses, 25);
  double worst = 0;
  for (std::size_t w = 0; w < m32.size(); ++w) {
    const double rel = std::abs(m16[w] - m32[w]) / m32[w];
    worst = std::max(worst, rel);
    INFO("steps " << w * 25 + 1 << "-" << (w + 1) * 25 << ": bf16 " << m16[w] << " fp32 "
                  << m32[w]);
    CHECK(rel <= 0.03);
  }
  std::printf(
      "bf16 vs fp32 (tiny Llama, LNS, 300 steps): window means %.4f -> %.4f (bf16) and %.4f -> "
      "%.4f "
      "(fp32); largest relative gap of a 25-step window %.2f%%\n",
      m16.front(), m16.back(), m32.front(), m32.back(), 100 * worst);
  // Both learn: the last window well below the first (log 257 = 5.55 at the start).
  CHECK(m32.back() < m32.front() - 1.5);
  CHECK(m16.back() < m16.front() - 1.5);
}
