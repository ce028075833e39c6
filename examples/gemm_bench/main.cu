// fathom-gemm-bench: fathom's own Hopper GEMM (kernels/cuda/gemm_sm90.cuh) against cuBLASLt at the
// models' GEMM shapes, timed with CUDA events on the same inputs: the plain kernel (C = A B^T in
// bf16) against kernels::gemm, and gemm_swiglu with SwiGLU in the epilogue against cuBLASLt's
// GEMM followed by the SwiGLU pass. Each row also says how many outputs differ from cuBLASLt's
// (and, for SwiGLU, the largest gap of h from SwiGLU of the kernel's own gate and up, relative to
// bf16's step). Needs an sm_90a build (CMAKE_CUDA_ARCHITECTURES with 90a) on an H100 or H200.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/gemm.cuh>

namespace {

using fathom::bf16;
using fathom::Cuda;
using fathom::Shape;
using fathom::Tensor;
using fathom::cuda::EventTimer;
using fathom::kernels::GemmParams;
namespace sm90 = fathom::kernels::detail::sm90;

struct Problem {
  std::string workload, what;
  std::int64_t m, n, k;
  bool swiglu;  // n = 2F: gate/up with SwiGLU in the epilogue
};

std::vector<Problem> problems(const std::string& workload, std::int64_t rows) {
  if (workload == "llama-350m")
    return {{workload, "gate/up + swiglu", rows, 5472, 1024, true},
            {workload, "gate/up", rows, 5472, 1024, false},
            {workload, "q/k/v", rows, 3072, 1024, false},
            {workload, "o", rows, 1024, 1024, false},
            {workload, "down", rows, 1024, 2736, false},
            {workload, "lm head", rows, 32000, 1024, false}};
  if (workload == "llama-130m")
    return {{workload, "gate/up + swiglu", rows, 4096, 768, true},
            {workload, "gate/up", rows, 4096, 768, false},
            {workload, "q/k/v", rows, 2304, 768, false},
            {workload, "down", rows, 768, 2048, false}};
  if (workload == "gpt2-124m")
    return {{workload, "c_attn", rows, 2304, 768, false},
            {workload, "c_fc", rows, 3072, 768, false},
            {workload, "c_proj (mlp)", rows, 768, 3072, false}};
  return {};
}

Tensor<bf16, Cuda> random_bf16(std::int64_t n, std::uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = bf16(u(rng));
  return Tensor<bf16, Cuda>::from_vector(Shape{n}, v);
}

void run(const Problem& p, int warmup, int iters) {
  EventTimer timer;
  const auto a = random_bf16(p.m * p.k, 1, 1.0f);
  const auto b = random_bf16(p.n * p.k, 2, 3.0f / std::sqrt(static_cast<float>(p.k)));
  Tensor<bf16, Cuda> ours(Shape{p.m * p.n}), theirs(Shape{p.m * p.n});
  const std::int64_t f = p.n / 2;
  Tensor<bf16, Cuda> h_ours(Shape{p.swiglu ? p.m * f : 1}), h_theirs(Shape{p.swiglu ? p.m * f : 1});
  const GemmParams<bf16> gp{.a = a.data(),
                            .b = b.data(),
                            .c = theirs.data(),
                            .m = p.m,
                            .n = p.n,
                            .k = p.k,
                            .trans_b = true};
  auto run_ours = [&] {
    if (p.swiglu)
      sm90::gemm_sm90_swiglu(a.data(), p.k, b.data(), p.k, ours.data(), p.n, h_ours.data(), f, p.m,
                             f, p.k);
    else
      sm90::gemm_sm90_bf16(a.data(), p.k, b.data(), p.k, ours.data(), p.n, p.m, p.n, p.k);
  };
  auto run_theirs = [&] {
    fathom::kernels::gemm(Cuda{}, gp);
    if (p.swiglu)
      fathom::kernels::swiglu(
          Cuda{}, fathom::kernels::SwigluParams<bf16>{theirs.data(), theirs.data() + f,
                                                      h_theirs.data(), p.m * f, f, p.n});
  };
  run_ours();
  run_theirs();
  const auto x = ours.to_vector(), y = theirs.to_vector();
  std::int64_t differ = 0;
  for (std::size_t i = 0; i < x.size(); ++i) differ += !(float(x[i]) == float(y[i]));
  double h_gap = 0;  // in bf16 steps of h
  if (p.swiglu) {
    const auto h = h_ours.to_vector();
    for (std::int64_t r = 0; r < p.m; r += 97)
      for (std::int64_t j = 0; j < f; ++j) {
        const double g = float(x[r * p.n + j]), u = float(x[r * p.n + f + j]);
        const double want = g / (1 + std::exp(-g)) * u;
        const double step = std::max(std::abs(want), 1e-3) / 128.0;
        h_gap = std::max(h_gap, std::abs(float(h[r * f + j]) - want) / step);
      }
  }
  const double t_theirs = timer.ms(run_theirs, warmup, iters);
  const double t_ours = timer.ms(run_ours, warmup, iters);
  const double tflop = 2.0 * p.m * p.n * p.k / 1e12;
  std::printf("%-11s %-17s %6lld %6lld %5lld  %8.3f %6.0f  %8.3f %6.0f  %6.3f  %9lld",
              p.workload.c_str(), p.what.c_str(), static_cast<long long>(p.m),
              static_cast<long long>(p.n), static_cast<long long>(p.k), t_ours,
              tflop / t_ours * 1e3, t_theirs, tflop / t_theirs * 1e3, t_theirs / t_ours,
              static_cast<long long>(differ));
  if (p.swiglu) std::printf("  h within %.2f steps", h_gap);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fathom-gemm-bench: fathom's own Hopper GEMM, plain and with SwiGLU in its epilogue, against "
      "cuBLASLt (and the SwiGLU pass) at the models' shapes, in ms and TFLOP/s"};
  std::vector<std::string> workloads{"llama-350m", "llama-130m", "gpt2-124m"};
  std::int64_t rows = 32768;
  int warmup = 5, iters = 20;
  app.add_option("--workloads", workloads, "llama-350m, llama-130m, gpt2-124m; comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--rows", rows, "tokens a step (batch x sequence)")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed calls before each timing")->capture_default_str();
  app.add_option("--iters", iters, "timed calls, averaged")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (rows < 1 || warmup < 0 || iters < 1) {
    std::fprintf(stderr, "fathom-gemm-bench: --rows and --iters must be >= 1, --warmup >= 0\n");
    return 2;
  }
  for (const auto& w : workloads)
    if (problems(w, rows).empty()) {
      std::fprintf(stderr,
                   "fathom-gemm-bench: unknown workload '%s' (llama-350m, llama-130m, "
                   "gpt2-124m)\n",
                   w.c_str());
      return 2;
    }
  try {
    if (!sm90::gemm_sm90_available()) {
      std::fprintf(stderr,
                   "fathom-gemm-bench: fathom's sm_90 GEMM needs an sm_90a build "
                   "(CMAKE_CUDA_ARCHITECTURES with 90a) on an H100 or H200\n");
      return 1;
    }
    std::printf("%-11s %-17s %6s %6s %5s  %8s %6s  %8s %6s  %6s  %9s\n", "workload", "gemm", "M",
                "N", "K", "ours ms", "TF/s", "cublas", "TF/s", "ratio", "differ");
    for (const auto& w : workloads)
      for (const auto& p : problems(w, rows)) run(p, warmup, iters);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fathom-gemm-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
