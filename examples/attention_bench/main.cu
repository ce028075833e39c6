// fathom-attention-bench: times the CUDA attention kernels alone with CUDA events, forward and
// backward (and each pass of the backward) of bf16 multi-head attention with head_dim 64 on q, k,
// v read in place from a fused (B, T, 3C) projection, as GPT-2 trains it. For each shape it runs
// kernel variants (--variants: the wgmma kernels (Hopper, sm_90a) and the mma kernels with their
// tile shapes, the previous ones, and each change alone; wgmma ones are skipped where the GPU runs
// no sm_90a code), prints ms and TFLOP/s per pass, and the largest difference between each
// variant's outputs and those of the first that ran. TFLOP/s count the matrix products only
// (causal: half of them), the backward as 2.5 forwards, as FlashAttention's papers do. All
// variants share the forward's exponent with the scale folded into one FMA.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/attention.cuh>
#include <fathom/kernels/cuda/rope.cuh>

namespace {

using fathom::bf16;
using fathom::Cuda;
using fathom::Shape;
using fathom::Tensor;
using fathom::cuda::EventTimer;
namespace attn = fathom::kernels::detail::attn;

// The variants --variants can name (besides "current", MmaChoice): the tile shapes before the dQ
// pass's own rowsum and the grouped block order (group 1: pair-major, heaviest tile first within
// each pair); the forward with 128-row blocks (8 warps sharing each K/V tile; timed and not
// adopted); pair-major block order.
template <int HD>
struct PreviousShapes {
  using Forward = attn::MmaForward<HD, 1, 64, 4, 4, 1>;
  using Dkdv = attn::MmaDkdv<HD, 1, 32, 64, 4, 3, 1>;
  using Dq = attn::MmaDq<HD, 1, 64, 4, 3, false, 1>;
};
template <int HD>
struct Forward128RowShapes {
  using Forward = attn::MmaForward<HD, 1, 64, 8, 2>;
  using Dkdv = typename attn::MmaChoice<HD>::Dkdv;
  using Dq = typename attn::MmaChoice<HD>::Dq;
};
template <int HD>
struct PairOrderShapes {
  using Forward = attn::MmaForward<HD, 1, 64, 4, 4, 1>;
  using Dkdv = attn::MmaDkdv<HD, 1, 32, 64, 4, 3, 1>;
  using Dq = attn::MmaDq<HD, 1, 64, 4, 3, true, 1>;
};
template <int HD>
struct Dq128RowShapes {
  using Forward = typename attn::MmaChoice<HD>::Forward;
  using Dkdv = typename attn::MmaChoice<HD>::Dkdv;
  using Dq = typename attn::MmaBackward128Rows<HD>::Dq;
};
// How a family launches its passes: the mma kernels (any GPU with tensor cores) with tile shapes
// Shapes, or the wgmma kernels (sm_90a).
template <int HD, class Shapes>
struct Mma {
  using Dkdv = typename Shapes::Dkdv;
  using Dq = typename Shapes::Dq;
  static constexpr bool kRowsum = Dq::kRowsum;
  static void forward(const fathom::kernels::AttentionParams<bf16>& p) {
    attn::launch_forward_mma<HD, Shapes>(p);
  }
  static void backward(const fathom::kernels::AttentionBackwardParams<bf16>& p, float* delta) {
    attn::launch_backward_mma<HD, Shapes>(p, delta);
  }
  static void dq(const fathom::kernels::AttentionBackwardParams<bf16>& p, float* delta,
                 const attn::RopeFreqs<HD / 2>& freqs) {
    attn::launch_mma<Dq, attn::backward_dq_mma<Dq>>(p, delta, freqs);
  }
  static void dkdv(const fathom::kernels::AttentionBackwardParams<bf16>& p, const float* delta,
                   const attn::RopeFreqs<HD / 2>& freqs) {
    attn::launch_mma<Dkdv, attn::backward_dkdv_mma<Dkdv>>(p, delta, freqs);
  }
};
template <int HD, class Shapes>
struct Wgmma {
  static_assert(HD == 64, "the wgmma kernels take head_dim 64");
  using Dkdv = typename Shapes::Dkdv;
  using Dq = typename Shapes::Dq;
  static constexpr bool kRowsum = true;
  static void forward(const fathom::kernels::AttentionParams<bf16>& p) {
    attn::launch_forward_wgmma<Shapes>(p);
  }
  static void backward(const fathom::kernels::AttentionBackwardParams<bf16>& p, float* delta) {
    attn::launch_backward_wgmma<Shapes>(p, delta);
  }
  static void dq(const fathom::kernels::AttentionBackwardParams<bf16>& p, float* delta,
                 const attn::RopeFreqs<32>& freqs) {
    attn::launch_mma<Dq, attn::backward_dq_wgmma<Dq>>(p, delta, freqs);
  }
  static void dkdv(const fathom::kernels::AttentionBackwardParams<bf16>& p, const float* delta,
                   const attn::RopeFreqs<32>& freqs) {
    attn::launch_mma<Dkdv, attn::backward_dkdv_wgmma<Dkdv>>(p, delta, freqs);
  }
};

// "rope" and "wgmma-rope": the current shapes with RoPE's inverse turn of dQ and dK in the
// backward's stores (Llama's attention); their d(q, k) differ from the others' by that turn.
const std::vector<std::string> kVariants{
    "wgmma",           "wgmma-two-pass", "wgmma-one-block",   "wgmma-wide", "wgmma-narrow",
    "wgmma-long-keys", "wgmma-rope",     "current",           "previous",   "forward-128-rows",
    "pair-order",      "dq-128-rows",    "backward-128-rows", "rope"};

struct Problem {
  std::int64_t batch, heads, seq, head_dim;
  bool causal;
  double forward_flop() const {
    return 4.0 * static_cast<double>(batch * heads) * static_cast<double>(seq) *
           static_cast<double>(seq) * static_cast<double>(head_dim) * (causal ? 0.5 : 1.0);
  }
};

Tensor<bf16, Cuda> random_bf16(std::int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bf16> host(static_cast<std::size_t>(n));
  for (auto& x : host) x = fathom::scalar_cast<bf16>(normal(rng));
  return Tensor<bf16, Cuda>::from_vector(Shape{n}, host);
}

double max_abs_difference(const Tensor<bf16, Cuda>& a, const Tensor<bf16, Cuda>& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double worst = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d =
        std::abs(fathom::scalar_cast<double>(x[i]) - fathom::scalar_cast<double>(y[i]));
    if (!(d <= worst)) worst = d;  // NaN wins
  }
  return worst;
}

// The buffers of one problem: q, k, v in a fused (B, T, 3C) projection, o, lse, d_o, and the
// gradients into a fused (B, T, 3C) buffer (overwritten, as the trainer's first backward does).
struct Buffers {
  Problem pr;
  Tensor<bf16, Cuda> qkv, o, d_o, dqkv;
  Tensor<float, Cuda> lse, delta;
  fathom::kernels::AttentionParams<bf16> forward;
  fathom::kernels::AttentionBackwardParams<bf16> backward;

  Buffers(const Problem& problem, std::mt19937& rng) : pr(problem) {
    const std::int64_t C = pr.heads * pr.head_dim, rows = pr.batch * pr.seq;
    qkv = random_bf16(rows * 3 * C, rng);
    d_o = random_bf16(rows * C, rng);
    o = Tensor<bf16, Cuda>(Shape{rows * C});
    dqkv = Tensor<bf16, Cuda>(Shape{rows * 3 * C});
    lse = Tensor<float, Cuda>(Shape{pr.batch * pr.heads * pr.seq});
    delta = Tensor<float, Cuda>(Shape{pr.batch * pr.heads * pr.seq});
    aim();
  }
  // Points the kernel parameters at the tensors above.
  void aim() {
    const std::int64_t C = pr.heads * pr.head_dim;
    const bf16* q = qkv.data();
    forward = {.q = q,
               .k = q + C,
               .v = q + 2 * C,
               .o = o.data(),
               .lse = lse.data(),
               .batch = pr.batch,
               .seq = pr.seq,
               .heads = pr.heads,
               .head_dim = pr.head_dim,
               .q_stride = 3 * C,
               .k_stride = 3 * C,
               .v_stride = 3 * C,
               .o_stride = C,
               .causal = pr.causal,
               .scale = 1.0 / std::sqrt(static_cast<double>(pr.head_dim))};
    backward = {.q = forward.q,
                .k = forward.k,
                .v = forward.v,
                .o = o.data(),
                .d_o = d_o.data(),
                .lse = lse.data(),
                .dq = dqkv.data(),
                .dk = dqkv.data() + C,
                .dv = dqkv.data() + 2 * C,
                .batch = pr.batch,
                .seq = pr.seq,
                .heads = pr.heads,
                .head_dim = pr.head_dim,
                .q_stride = 3 * C,
                .k_stride = 3 * C,
                .v_stride = 3 * C,
                .o_stride = C,
                .do_stride = C,
                .dq_stride = 3 * C,
                .dk_stride = 3 * C,
                .dv_stride = 3 * C,
                .causal = pr.causal,
                .scale = forward.scale,
                .accumulate = false};
  }
};

void report(const char* variant, const char* pass, double ms, double flop) {
  std::printf("  %-9s %-26s %8.3f ms %8.1f TFLOP/s\n", variant, pass, ms, flop / (ms * 1e9));
}

// Times one variant (a family with its tile shapes: Mma<HD, Shapes> or Wgmma<HD, Shapes>) on
// buffers `buf`; leaves its outputs there.
template <int HD, class Family>
void run_variant(const std::string& variant, const Problem& pr, Buffers& buf, int warmup, int iters,
                 bool rope = false) {
  const char* name = variant.c_str();
  EventTimer timer;
  const double f = pr.forward_flop();
  const auto& fp = buf.forward;
  auto bp = buf.backward;
  if (rope) bp.rope_theta = 10000.0;
  const auto freqs = attn::rope_freqs<HD>(bp);
  float* delta = buf.delta.data();
  report(name, "forward", timer.ms([&] { Family::forward(fp); }, warmup, iters), f);
  report(name, "backward (all passes)",
         timer.ms([&] { Family::backward(bp, delta); }, warmup, iters), 2.5 * f);
  if (rope) {  // what the turn in the stores replaces: a rope pass over the q and k gradients
    const fathom::kernels::RopeQkvParams<bf16> turn{
        buf.dqkv.data(), pr.batch, pr.seq, pr.heads * pr.head_dim, static_cast<int>(pr.heads),
        10000.0,         0,        true};
    report(name, "  (separate rope backward)",
           timer.ms([&] { fathom::kernels::rope_qkv(Cuda{}, turn); }, warmup, iters), 0.0);
  }
  if constexpr (Family::kRowsum) {
    report(name, "  dQ with rowsum", timer.ms([&] { Family::dq(bp, delta, freqs); }, warmup, iters),
           1.5 * f);
  } else {
    report(name, "  rowsum", timer.ms([&] { attn::launch_rowsum(bp, delta, true); }, warmup, iters),
           0.0);
    report(name, "  dQ", timer.ms([&] { Family::dq(bp, delta, freqs); }, warmup, iters), 1.5 * f);
  }
  report(
      name, "  dK, dV",
      timer.ms([&] { Family::dkdv(bp, static_cast<const float*>(delta), freqs); }, warmup, iters),
      2.0 * f);
  // Leave this variant's forward and backward outputs in place for the comparison.
  Family::forward(fp);
  Family::backward(bp, delta);
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
}

// Runs the named variants on one problem, each on its own outputs from the same inputs, and
// compares each variant's outputs with the first one's.
void run_problem(const Problem& pr, const std::vector<std::string>& variants, int warmup,
                 int iters) {
  constexpr int HD = 64;
  std::printf("B %lld, H %lld, T %lld, head_dim %lld, %s\n", static_cast<long long>(pr.batch),
              static_cast<long long>(pr.heads), static_cast<long long>(pr.seq),
              static_cast<long long>(pr.head_dim), pr.causal ? "causal" : "full");
  std::mt19937 rng(1234);
  const Buffers first(pr, rng);  // inputs, and the outputs of the first variant that runs
  const std::string* reference = nullptr;
  for (const std::string& name : variants) {
    if (name.rfind("wgmma", 0) == 0 && !attn::wgmma_available()) {
      std::printf("  %s: skipped (this GPU or build has no sm_90a code)\n", name.c_str());
      continue;
    }
    Buffers buf = first;  // the same inputs (shared); fresh outputs after the first variant
    if (reference) {
      buf.o = Tensor<bf16, Cuda>(Shape{first.o.numel()});
      buf.dqkv = Tensor<bf16, Cuda>(Shape{first.dqkv.numel()});
      buf.lse = Tensor<float, Cuda>(Shape{first.lse.numel()});
      buf.aim();
    }
    if (name == "wgmma")
      run_variant<HD, Wgmma<HD, attn::WgmmaChoice>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-one-block")
      run_variant<HD, Wgmma<HD, attn::WgmmaOneBlock>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-two-pass")
      run_variant<HD, Wgmma<HD, attn::WgmmaTwoPass>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-wide")
      run_variant<HD, Wgmma<HD, attn::WgmmaWide>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-narrow")
      run_variant<HD, Wgmma<HD, attn::WgmmaNarrow>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-long-keys")
      run_variant<HD, Wgmma<HD, attn::WgmmaLongKeys>>(name, pr, buf, warmup, iters);
    if (name == "wgmma-rope")
      run_variant<HD, Wgmma<HD, attn::WgmmaChoice>>(name, pr, buf, warmup, iters, true);
    if (name == "current")
      run_variant<HD, Mma<HD, attn::MmaChoice<HD>>>(name, pr, buf, warmup, iters);
    if (name == "previous")
      run_variant<HD, Mma<HD, PreviousShapes<HD>>>(name, pr, buf, warmup, iters);
    if (name == "forward-128-rows")
      run_variant<HD, Mma<HD, Forward128RowShapes<HD>>>(name, pr, buf, warmup, iters);
    if (name == "pair-order")
      run_variant<HD, Mma<HD, PairOrderShapes<HD>>>(name, pr, buf, warmup, iters);
    if (name == "dq-128-rows")
      run_variant<HD, Mma<HD, Dq128RowShapes<HD>>>(name, pr, buf, warmup, iters);
    if (name == "backward-128-rows")
      run_variant<HD, Mma<HD, attn::MmaBackward128Rows<HD>>>(name, pr, buf, warmup, iters);
    if (name == "rope")
      run_variant<HD, Mma<HD, attn::MmaChoice<HD>>>(name, pr, buf, warmup, iters, true);
    if (reference)
      std::printf("  max |%s - %s|: o %.3g, d(q, k, v) %.3g\n", name.c_str(), reference->c_str(),
                  max_abs_difference(buf.o, first.o), max_abs_difference(buf.dqkv, first.dqkv));
    else
      reference = &name;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fathom-attention-bench: the CUDA attention kernels alone (bf16, tensor cores), forward "
      "and backward: the wgmma and mma kernels and their tile shapes"};
  std::vector<std::string> shapes{"32x12x1024x64", "128x12x256x64"};
  int warmup = 5, iters = 20;
  std::vector<std::string> variants{"wgmma", "current"};
  bool full = false;
  app.add_option("--shapes", shapes, "B x H x T x head_dim (head_dim 64), comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--warmup", warmup, "untimed calls before each timing")->capture_default_str();
  app.add_option("--iters", iters, "timed calls, averaged")->capture_default_str();
  app.add_flag("--full", full, "no causal mask");
  app.add_option("--variants", variants,
                 "kernel variants, comma-separated, compared with the first that runs: wgmma (the "
                 "warpgroup-MMA kernels fathom runs on Hopper built for sm_90a; up to T = 192 the "
                 "backward is one block a head), wgmma-two-pass (the backward's two passes at "
                 "every T), wgmma-one-block (one block a head up to T = 256), wgmma-wide "
                 "(128-row forward blocks), wgmma-narrow (32-row backward tiles), "
                 "wgmma-long-keys (128-key tiles), wgmma-rope (wgmma with RoPE's inverse turn), "
                 "current (the mma kernels fathom runs elsewhere), previous (64-row forward "
                 "blocks, a separate rowsum pass, pair-major block order), forward-128-rows, "
                 "pair-order, dq-128-rows, backward-128-rows (MmaBackward128Rows), rope "
                 "(current, with RoPE's inverse turn in the backward's dQ and dK stores)")
      ->delimiter(',')
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (warmup < 0 || iters < 1) {
    std::fprintf(stderr, "fathom-attention-bench: --warmup must be >= 0 and --iters >= 1\n");
    return 2;
  }
  for (const auto& v : variants) {
    if (std::find(kVariants.begin(), kVariants.end(), v) == kVariants.end()) {
      std::string valid;
      for (const auto& k : kVariants) valid += (valid.empty() ? "" : ", ") + k;
      std::fprintf(stderr, "fathom-attention-bench: --variants: unknown '%s'; valid: %s\n",
                   v.c_str(), valid.c_str());
      return 2;
    }
  }
  std::vector<Problem> problems;
  for (const auto& s : shapes) {
    char x1 = 0, x2 = 0, x3 = 0;
    std::istringstream in(s);
    long long b = 0, h = 0, t = 0, d = 0;
    if (!(in >> b >> x1 >> h >> x2 >> t >> x3 >> d) || x1 != 'x' || x2 != 'x' || x3 != 'x' ||
        !in.eof() || b < 1 || h < 1 || t < 1 || d != 64) {
      std::fprintf(stderr,
                   "fathom-attention-bench: --shapes: expected B x H x T x head_dim with positive "
                   "sizes and head_dim 64, e.g. 32x12x1024x64; got '%s'\n",
                   s.c_str());
      return 2;
    }
    problems.push_back({b, h, t, d, !full});
  }
  try {
    cudaDeviceProp prop{};
    int device = 0;
    FATHOM_CUDA_CHECK(cudaGetDevice(&device));
    FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    std::printf("%s; %d timed calls after %d\n", prop.name, iters, warmup);
    for (const auto& pr : problems) run_problem(pr, variants, warmup, iters);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fathom-attention-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
