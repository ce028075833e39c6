// [cuda] autograd::linear_fp8 on the GPU against the same op on the CPU (the reference kernels):
// value and the gradients of x, the weight and the bias, in bf16, at a size cuBLASLt's fp8 kernels
// take and at odd sizes that take the tiled kernel; an input quantized once for two layers; and
// fresh buffers never read (the same bits with new buffers poisoned to NaN); swiglu_mlp_fp8, the
// fp8 MLP with SwiGLU inside its quantize passes, against the CPU and the composition.
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/linear_fp8.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/core/memory.hpp>
#include <fathom/cuda.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "autograd/ops/linear_fp8_cases.hpp"
#include "autograd/support.hpp"
#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

namespace ag = fathom::autograd;
using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Shape;
using fathom::Tensor;
using fathom::Var;

namespace {

struct LinearFp8Case {
  std::int64_t batch, seq, in, out;
  bool bias;
};

// y, dx, dw (and db) of linear_fp8 on device D from the same bf16 inputs, flattened in that order.
template <fathom::DeviceTag D>
std::vector<std::vector<double>> linear_fp8_run(const LinearFp8Case& c) {
  fathom::test::FreshTape tape;
  const auto xs =
      fathom::test::normal_values<bf16>(static_cast<std::size_t>(c.batch * c.seq * c.in), 51, 2.0);
  const auto ws =
      fathom::test::normal_values<bf16>(static_cast<std::size_t>(c.out * c.in), 52, 0.05);
  const auto bs = fathom::test::normal_values<bf16>(static_cast<std::size_t>(c.out), 53);
  const auto gs = fathom::test::normal_values<bf16>(
      static_cast<std::size_t>(c.batch * c.seq * c.out), 54, 1e-3);
  Var<bf16, D> x(Tensor<bf16, D>::from_vector(Shape{c.batch, c.seq, c.in}, xs), true);
  Var<bf16, D> w(Tensor<bf16, D>::from_vector(Shape{c.out, c.in}, ws), true);
  Var<bf16, D> b(Tensor<bf16, D>::from_vector(Shape{c.out}, bs), true);
  auto y = c.bias ? ag::linear_fp8(x, w, b) : ag::linear_fp8(x, w);
  ag::backward(y, Tensor<bf16, D>::from_vector(Shape{c.batch, c.seq, c.out}, gs));
  std::vector<std::vector<double>> out{fathom::test::to_double(y.value().to_vector()),
                                       fathom::test::to_double(x.grad().to_vector()),
                                       fathom::test::to_double(w.grad().to_vector())};
  if (c.bias) out.push_back(fathom::test::to_double(b.grad().to_vector()));
  return out;
}

// "" when got is within a few bf16 steps of want (relative to want's largest magnitude: the
// order of the float sums differs, then each result is rounded to bf16 once).
std::string linear_fp8_mismatch(const std::string& name, const std::vector<double>& got,
                                const std::vector<double>& want) {
  double largest = 0;
  for (double v : want) largest = std::max(largest, std::abs(v));
  return fathom::test::first_mismatch(name, got, want, 1.0 / 64, largest / 128);
}

}  // namespace

TEST_CASE("CUDA linear_fp8 matches linear_fp8 on the CPU, values and gradients",
          "[cuda][fp8][autograd]") {
  const LinearFp8Case c = GENERATE(LinearFp8Case{4, 64, 128, 96, true},  // cuBLASLt's sizes
                                   LinearFp8Case{2, 32, 64, 48, false},
                                   LinearFp8Case{3, 7, 40, 24, true},  // K = 40, 21 rows: tiled
                                   LinearFp8Case{1, 5, 33, 17, false});
  INFO("x (" << c.batch << ", " << c.seq << ", " << c.in << "), out " << c.out << ", bias "
             << c.bias);
  const auto cpu = linear_fp8_run<Cpu>(c), gpu = linear_fp8_run<Cuda>(c);
  const char* names[] = {"y", "dx", "dw", "db"};
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    for (double v : gpu[i]) REQUIRE(std::isfinite(v));
    const std::string e = linear_fp8_mismatch(names[i], gpu[i], cpu[i]);
    INFO(e);
    CHECK(e.empty());
  }
}

TEST_CASE("CUDA linear_fp8: an input quantized once for two layers, and poisoned fresh buffers",
          "[cuda][fp8][autograd]") {
  auto run = [](bool shared) {
    return fathom::test::linear_fp8_two_layers<bf16, Cuda>(shared, 2, 64, 64, 96, 32, 61);
  };
  const auto separate = run(false);
  for (bf16 v : separate) REQUIRE(std::isfinite(static_cast<float>(v)));
  const auto shared = run(true);
  CHECK(fathom::test::same_bits(shared, separate));
  std::vector<bf16> poisoned;
  {
    fathom::memory::PoisonNewBuffers poison;
    poisoned = run(true);
  }
  CHECK(fathom::test::same_bits(poisoned, separate));
}

TEST_CASE("CUDA swiglu_mlp_fp8 matches the CPU, and the composition on the GPU, within fp8's noise",
          "[cuda][fp8][autograd]") {
  // x (2, 64, 64), F 96: every GEMM and quantize pass on cuBLASLt's and the wide kernel's routes;
  // two steps, so that delayed scaling reads a history. Two fp8 roundings in a chain (the gate/up
  // output quantized again, in the forward and the backward) make the GPU's fast-accumulation
  // GEMMs move some codes of the second by a step (an E5M2 step is 12.5 to 25% of an element), so
  // each result is compared in norm: within 10% (a misplaced or swapped element gives ~100%).
  const bool delayed = GENERATE(false, true);
  INFO((delayed ? "delayed" : "current") << " scaling");
  constexpr std::int64_t B = 2, S = 64, C = 64, F = 96;
  auto run = [&]<fathom::DeviceTag D>(bool fused) {
    const auto v =
        fathom::test::swiglu_mlp_fp8_case<bf16, D>(fused, delayed, 2, 1.0, B, S, C, F, 101);
    return std::vector<double>(v.begin(), v.end());
  };
  // The pieces of a result: y, dx, d gate_up, d down, dr, then the histories when delayed.
  const std::vector<std::pair<std::string, std::int64_t>> pieces = {
      {"y", B * S * C}, {"dx", B * S * C}, {"dgate_up", 2 * F * C},
      {"ddown", C * F}, {"dr", B * S * C}, {"histories", delayed ? 16 : 0}};
  auto relative = [&](const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    std::vector<double> r;
    std::size_t at = 0;
    for (const auto& [name, n] : pieces) {
      double err = 0, norm = 0;
      for (std::size_t i = at; i < at + static_cast<std::size_t>(n); ++i) {
        err += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
      }
      at += static_cast<std::size_t>(n);
      r.push_back(n == 0 ? 0.0 : std::sqrt(err / norm));
    }
    REQUIRE(at == got.size());
    return r;
  };
  const auto cpu = run.template operator()<Cpu>(true);
  const auto gpu = run.template operator()<Cuda>(true);
  for (double v : gpu) REQUIRE(std::isfinite(v));
  const auto composed = run.template operator()<Cuda>(false);
  const auto to_cpu = relative(gpu, cpu), to_composed = relative(gpu, composed);
  for (std::size_t k = 0; k < pieces.size(); ++k) {
    INFO(pieces[k].first << ": relative difference " << to_cpu[k] << " to the CPU, "
                         << to_composed[k] << " to the composition on the GPU");
    CHECK(to_cpu[k] < 0.1);
    CHECK(to_composed[k] < 0.1);
  }
  // Fresh buffers are written before they are read.
  std::vector<double> poisoned;
  {
    fathom::memory::PoisonNewBuffers poison;
    poisoned = run.template operator()<Cuda>(true);
  }
  CHECK(poisoned == gpu);
}
