// [cuda] DecoderLM on the GPU against the CPU: the same seed draws bit-identical weights on both,
// and logits, loss and every parameter gradient agree (fp32), for both architectures; bf16 on the
// GPU stays near fp32.
#include <fathom/cuda.hpp>
#include <fathom/nn/decoder_lm.hpp>
#include <fathom/nn/presets.hpp>
#include <fathom/policy/deep_norm.hpp>
#include <fathom/policy/lns.hpp>
#include <fathom/policy/mix_ln.hpp>
#include <fathom/policy/post_ln.hpp>
#include <fathom/policy/pre_ln.hpp>
#include <fathom/policy/sandwich_ln.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "support/catch.hpp"

using namespace fathom;

namespace {

template <class D>
Tensor<std::int32_t, D> tokens_on(std::int64_t B, std::int64_t T, int vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  for (std::size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<std::int32_t>(rng::uniform(seed, i) * vocab) % vocab;
  return Tensor<std::int32_t, D>::from_vector(Shape{B, T}, ids);
}

// max |a - b| / (atol + rtol |b|) over all elements: <= 1 means they agree.
template <class A, class B>
double worst_ratio(const std::vector<A>& a, const std::vector<B>& b, double rtol, double atol,
                   std::size_t& where) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    const double r = std::abs(x - y) / (atol + rtol * std::abs(y));
    if (!(r <= worst)) {
      worst = r;
      where = i;
    }
  }
  return worst;
}

template <class Arch, class Policy>
void compare_cpu_cuda(const char* preset) {
  auto c = nn::preset(preset);
  INFO(preset);
  nn::DecoderLM<Arch, Policy, float, Cpu> cpu(c);
  nn::DecoderLM<Arch, Policy, float, Cuda> gpu(c);
  cpu.init(77);
  gpu.init(77);
  REQUIRE(cpu.parameters().size() == gpu.parameters().size());
  for (std::size_t i = 0; i < cpu.parameters().size(); ++i) {
    INFO(cpu.parameters()[i].name);
    CHECK(cpu.parameters()[i].var.value().to_vector() ==
          gpu.parameters()[i].var.value().to_vector());
  }

  const std::int64_t B = 4, T = 64;
  // One graph at a time: the tape is per thread, and backward consumes all of it.
  auto loss_cpu = cpu.loss(tokens_on<Cpu>(B, T, c.vocab, 5), tokens_on<Cpu>(B, T, c.vocab, 6));
  autograd::backward(loss_cpu);
  auto loss_gpu = gpu.loss(tokens_on<Cuda>(B, T, c.vocab, 5), tokens_on<Cuda>(B, T, c.vocab, 6));
  autograd::backward(loss_gpu);
  CHECK_THAT(static_cast<double>(loss_gpu.value().item()),
             WithinRel(static_cast<double>(loss_cpu.value().item()), 1e-5));
  for (std::size_t i = 0; i < cpu.parameters().size(); ++i) {
    const auto& pc = cpu.parameters()[i];
    const auto& pg = gpu.parameters()[i];
    REQUIRE(pc.var.has_grad());
    REQUIRE(pg.var.has_grad());
    auto gc = pc.var.grad().to_vector();
    double scale = 0.0;
    for (float g : gc) scale = std::max(scale, static_cast<double>(std::abs(g)));
    std::size_t where = 0;
    // Relative to the largest gradient of the parameter: summation order differs between backends.
    const double r = worst_ratio(pg.var.grad().to_vector(), gc, 1e-3, 1e-4 * scale + 1e-12, where);
    INFO(pc.name << ": element " << where << " cuda " << pg.var.grad().to_vector()[where]
                 << " vs cpu " << gc[where]);
    CHECK(r <= 1.0);
  }
}

}  // namespace

TEST_CASE("DecoderLM on CUDA: same weights, same logits and gradients as on CPU (Llama, LNS)",
          "[cuda][nn]") {
  compare_cpu_cuda<nn::Llama, policy::LNS>("tiny");
}

TEST_CASE(
    "DecoderLM on CUDA: same weights, same logits and gradients as on CPU (GPT-2, SandwichLN)",
    "[cuda][nn]") {
  compare_cpu_cuda<nn::Gpt2, policy::SandwichLN>("gpt2-tiny");
}

// The residual add in the branch's last GEMM (s.residual): beta 1 into the attention output
// projection and GPT-2's fused GELU MLP, beta alpha (DeepNorm), and inside the norm (Post-LN).
TEST_CASE("DecoderLM on CUDA: the fused residual add matches the CPU (Pre-LN, Post-LN, DeepNorm)",
          "[cuda][nn]") {
  compare_cpu_cuda<nn::Gpt2, policy::PreLN>("gpt2-tiny");
  compare_cpu_cuda<nn::Llama, policy::PreLN>("tiny");
  compare_cpu_cuda<nn::Gpt2, policy::PostLN>("gpt2-tiny");
  compare_cpu_cuda<nn::Llama, policy::DeepNorm>("tiny");
}

TEST_CASE("DecoderLM on CUDA: MixLN logits match the CPU", "[cuda][nn]") {
  auto c = nn::preset("tiny");
  c.layers = 8;
  nn::DecoderLM<nn::Llama, policy::MixLN<>, float, Cpu> cpu(c);
  nn::DecoderLM<nn::Llama, policy::MixLN<>, float, Cuda> gpu(c);
  cpu.init(78);
  gpu.init(78);
  auto lc = cpu.forward(tokens_on<Cpu>(2, 100, c.vocab, 7)).value().to_vector();
  auto lg = gpu.forward(tokens_on<Cuda>(2, 100, c.vocab, 7)).value().to_vector();
  std::size_t where = 0;
  const double r = worst_ratio(lg, lc, 1e-4, 1e-4, where);
  INFO("element " << where << ": cuda " << lg[where] << " vs cpu " << lc[where]);
  CHECK(r <= 1.0);
}

TEST_CASE("DecoderLM on CUDA: a bf16 model's loss stays near fp32", "[cuda][nn]") {
  auto c = nn::preset("tiny");
  nn::DecoderLM<nn::Llama, policy::LNS, float, Cuda> fp32(c);
  nn::DecoderLM<nn::Llama, policy::LNS, bf16, Cuda> half(c);
  fp32.init(79);
  half.init(79);
  auto tokens = tokens_on<Cuda>(4, 128, c.vocab, 8);
  auto targets = tokens_on<Cuda>(4, 128, c.vocab, 9);
  auto l32 = fp32.loss(tokens, targets);
  auto l16 = half.loss(tokens, targets);
  STATIC_REQUIRE(std::is_same_v<decltype(l16), Var<float, Cuda>>);
  CHECK_THAT(static_cast<double>(l16.value().item()),
             WithinAbs(static_cast<double>(l32.value().item()), 2e-2));
  autograd::backward(l16);
  for (const auto& p : half.parameters()) {
    INFO(p.name);
    CHECK(p.var.has_grad());
  }
}

namespace {

// Every parameter gradient of one backward, with new buffers NaN-poisoned or not.
template <class Arch, class Policy, class T>
std::vector<double> cuda_gradients(const char* preset, bool poison) {
  std::optional<memory::PoisonNewBuffers> guard;
  if (poison) guard.emplace();
  auto c = nn::preset(preset);
  nn::DecoderLM<Arch, Policy, T, Cuda> m(c);
  m.init(80);
  autograd::backward(
      m.loss(tokens_on<Cuda>(4, 100, c.vocab, 10), tokens_on<Cuda>(4, 100, c.vocab, 11)));
  std::vector<double> out;
  for (const auto& p : m.parameters()) {
    REQUIRE(p.var.has_grad());
    for (auto g : p.var.grad().to_vector()) out.push_back(static_cast<double>(g));
  }
  return out;
}

template <class Arch, class Policy, class T>
void check_poison_free(const char* preset) {
  INFO(preset);
  const auto plain = cuda_gradients<Arch, Policy, T>(preset, false);
  const auto poisoned = cuda_gradients<Arch, Policy, T>(preset, true);
  REQUIRE(plain.size() == poisoned.size());
  std::size_t bad = 0, differ = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    if (!std::isfinite(poisoned[i]) || !std::isfinite(plain[i]))
      ++bad;
    else if (poisoned[i] != plain[i])
      ++differ;
  }
  CHECK(bad == 0);
  CHECK(differ == 0);  // same kernels on the same inputs: bit for bit
}

}  // namespace

TEST_CASE("DecoderLM on CUDA: gradients do not depend on what fresh buffers held (NaN-poisoned)",
          "[cuda][nn]") {
  check_poison_free<nn::Llama, policy::LNS, float>("tiny");
  check_poison_free<nn::Llama, policy::LNS, bf16>("tiny");
  check_poison_free<nn::Gpt2, policy::SandwichLN, float>("gpt2-tiny");
  check_poison_free<nn::Gpt2, policy::SandwichLN, bf16>("gpt2-tiny");
  check_poison_free<nn::Gpt2, policy::PreLN, bf16>("gpt2-tiny");
  check_poison_free<nn::Llama, policy::DeepNorm, bf16>("tiny");
}

namespace {

// A bf16 model of config c against the same model in fp32 on the same batch: loss and every
// parameter's gradient.
template <class Arch, class Policy>
void check_bf16_near_fp32(const nn::ModelConfig& c) {
  nn::DecoderLM<Arch, Policy, float, Cuda> fp32(c);
  nn::DecoderLM<Arch, Policy, bf16, Cuda> half(c);
  fp32.init(81);
  half.init(81);
  auto tokens = tokens_on<Cuda>(4, 128, c.vocab, 12);
  auto targets = tokens_on<Cuda>(4, 128, c.vocab, 13);
  // One graph at a time: backward consumes the whole tape.
  auto l32 = fp32.loss(tokens, targets);
  autograd::backward(l32);
  auto l16 = half.loss(tokens, targets);
  autograd::backward(l16);
  CHECK_THAT(static_cast<double>(l16.value().item()),
             WithinAbs(static_cast<double>(l32.value().item()), 2e-2));
  // Gradients: bf16 against fp32, relative to each parameter's largest fp32 gradient.
  for (std::size_t i = 0; i < fp32.parameters().size(); ++i) {
    const auto& p32 = fp32.parameters()[i];
    const auto& p16 = half.parameters()[i];
    INFO(p32.name);
    REQUIRE(p16.var.has_grad());
    auto g32 = p32.var.grad().to_vector();
    auto g16 = p16.var.grad().to_vector();
    double scale = 0, worst = 0;
    for (float g : g32) scale = std::max(scale, static_cast<double>(std::abs(g)));
    for (std::size_t k = 0; k < g32.size(); ++k) {
      REQUIRE(std::isfinite(static_cast<double>(g16[k])));
      worst = std::max(worst, std::abs(static_cast<double>(g16[k]) - g32[k]) / (scale + 1e-12));
    }
    CHECK(worst <= 0.1);
  }
}

template <class Policy>
void check_bf16_gpt2_near_fp32() {
  auto c = nn::preset("gpt2-tiny");
  c.d_model = 64;
  c.d_ff = 256;  // rows of 256 bf16: the cuBLASLt GELU epilogues apply
  check_bf16_near_fp32<nn::Gpt2, Policy>(c);
}

}  // namespace

TEST_CASE("DecoderLM on CUDA: a bf16 GPT-2 (fused GELU MLP epilogues) stays near fp32",
          "[cuda][nn]") {
  SECTION("Sandwich-LN (the residual added by its own op)") {
    check_bf16_gpt2_near_fp32<policy::SandwichLN>();
  }
  SECTION("Pre-LN (the residual added in the GEMM epilogues)") {
    check_bf16_gpt2_near_fp32<policy::PreLN>();
  }
}

// head_dim 64, the paper's presets' (d_model / heads): bf16 attention then runs on the tensor-core
// kernels (the wgmma family on a GPU running sm_90a code, else mma), through the fused q/k/v rows
// and, for Llama, RoPE's inverse turn inside the attention backward.
TEST_CASE("DecoderLM on CUDA: bf16 models at head_dim 64 stay near fp32", "[cuda][nn]") {
  SECTION("GPT-2, Pre-LN") {
    auto c = nn::preset("gpt2-tiny");
    c.d_model = 128;
    c.heads = 2;
    c.d_ff = 512;
    check_bf16_near_fp32<nn::Gpt2, policy::PreLN>(c);
  }
  SECTION("Llama, LNS") {
    auto c = nn::preset("tiny");
    c.d_model = 128;
    c.heads = 2;
    c.d_ff = 352;
    check_bf16_near_fp32<nn::Llama, policy::LNS>(c);
  }
}
