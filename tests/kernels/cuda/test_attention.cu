// [cuda] tests for the CUDA attention kernels (include/fathom/kernels/cuda/attention.cuh): forward
// (o, lse) and backward (dq, dk, dv accumulated onto random gradients) in float and bf16 against
// the CPU reference computed in double, at the model shapes and at awkward ones (T not a multiple
// of the 64- or 128-row tiles, head_dim 32/96/128, T = 1, a negative scale); strided rows of a
// fused projection; only some gradients wanted; the autograd op.
#include <fathom/autograd/ops/attention.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/attention.cuh>
#include <fathom/kernels/cuda/primitives.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::accum_t;
using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Precision;
using fathom::scalar_cast;
using fathom::Shape;
using fathom::Tensor;
using namespace fathom::test;

namespace {

struct AttentionCase {
  std::int64_t B, T, H, hd;
  bool causal;
  double scale = 0.0;  // 0: 1 / sqrt(hd)
  // > 0: the backward also turns dq and dk back by RoPE's inverse (theta, positions pos0 + t).
  double rope_theta = 0.0;
  std::int64_t rope_pos0 = 0;
  std::int64_t C() const { return H * hd; }
  double softmax_scale() const {
    return scale != 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(hd));
  }
  std::size_t n() const { return static_cast<std::size_t>(B * T * H * hd); }
  std::size_t rows() const { return static_cast<std::size_t>(B * H * T); }
};

std::ostream& operator<<(std::ostream& os, const AttentionCase& c) {
  os << "B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd
     << (c.causal ? " causal" : " full");
  if (c.scale != 0.0) os << " scale " << c.scale;
  if (c.rope_theta > 0) os << " rope theta " << c.rope_theta << " pos0 " << c.rope_pos0;
  return os;
}

struct Inputs {
  std::vector<double> q, k, v, d_o, dq0, dk0, dv0;
};
Inputs make_inputs(const AttentionCase& c, std::uint64_t seed) {
  return {bf16_values(c.n(), seed),     bf16_values(c.n(), seed + 1), bf16_values(c.n(), seed + 2),
          bf16_values(c.n(), seed + 3), bf16_values(c.n(), seed + 4), bf16_values(c.n(), seed + 5),
          bf16_values(c.n(), seed + 6)};
}

struct Outputs {
  std::vector<double> o, lse, dq, dk, dv;
};

// The forward parameters of case c: q, k, v rows of in_stride, o rows of o_stride, lse (B, H, T).
template <class T>
fathom::kernels::AttentionParams<T> forward_params(const AttentionCase& c, const T* q, const T* k,
                                                   const T* v, std::int64_t in_stride, T* o,
                                                   std::int64_t o_stride, accum_t<T>* lse) {
  return {.q = q,
          .k = k,
          .v = v,
          .o = o,
          .lse = lse,
          .batch = c.B,
          .seq = c.T,
          .heads = c.H,
          .head_dim = c.hd,
          .q_stride = in_stride,
          .k_stride = in_stride,
          .v_stride = in_stride,
          .o_stride = o_stride,
          .causal = c.causal,
          .scale = c.softmax_scale()};
}

// The backward of the forward p, with d_o, dq, dk and dv packed (B, T, C).
template <class T>
fathom::kernels::AttentionBackwardParams<T> backward_params(
    const fathom::kernels::AttentionParams<T>& p, const T* d_o, T* dq, T* dk, T* dv,
    bool accumulate) {
  const std::int64_t C = p.heads * p.head_dim;
  return {.q = p.q,
          .k = p.k,
          .v = p.v,
          .o = p.o,
          .d_o = d_o,
          .lse = p.lse,
          .dq = dq,
          .dk = dk,
          .dv = dv,
          .batch = p.batch,
          .seq = p.seq,
          .heads = p.heads,
          .head_dim = p.head_dim,
          .q_stride = p.q_stride,
          .k_stride = p.k_stride,
          .v_stride = p.v_stride,
          .o_stride = p.o_stride,
          .do_stride = C,
          .dq_stride = C,
          .dk_stride = C,
          .dv_stride = C,
          .causal = p.causal,
          .scale = p.scale,
          .accumulate = accumulate};
}

// The CPU reference in double; gradients include the initial dq0, dk0, dv0.
Outputs reference(const AttentionCase& c, const Inputs& in) {
  Outputs r;
  r.o.assign(c.n(), 0.0);
  r.lse.assign(c.rows(), 0.0);
  r.dq = in.dq0;
  r.dk = in.dk0;
  r.dv = in.dv0;
  const auto p = forward_params<double>(c, in.q.data(), in.k.data(), in.v.data(), c.C(), r.o.data(),
                                        c.C(), r.lse.data());
  fathom::kernels::attention(Cpu{}, p);
  auto bp = backward_params<double>(p, in.d_o.data(), r.dq.data(), r.dk.data(), r.dv.data(), true);
  bp.rope_theta = c.rope_theta;
  bp.rope_pos0 = c.rope_pos0;
  fathom::kernels::attention_backward(Cpu{}, bp);
  return r;
}

// Which gradients the backward is asked for (the others get null pointers), and by which
// launchers: kernels::attention and kernels::attention_backward unless `forward` or `backward`
// is set (bf16 only).
struct Wanted {
  bool dq = true, dk = true, dv = true;
  void (*backward)(const fathom::kernels::AttentionBackwardParams<bf16>&) = nullptr;
  void (*forward)(const fathom::kernels::AttentionParams<bf16>&) = nullptr;
};

// Runs forward and backward on the GPU with T elements: q, k, v rows of `in_stride` (>= C;
// q, k, v live side by side in one fused buffer when in_stride >= 3C), o rows of `o_stride`.
// With accumulate false, dq, dk and dv start as NaN and must be overwritten, never read. A
// gradient not wanted comes back as its buffer's initial values.
template <class T>
Outputs run_cuda(const AttentionCase& c, const Inputs& in, std::int64_t in_stride = 0,
                 std::int64_t o_stride = 0, bool accumulate = true, Wanted wanted = {}) {
  const std::int64_t C = c.C(), rows = c.B * c.T;
  if (in_stride == 0) in_stride = 3 * C;
  if (o_stride == 0) o_stride = C;
  const bool fused = in_stride >= 3 * C;
  // One buffer for q, k, v: fused rows [q | k | v | pad] or three separate (rows, in_stride)
  // blocks.
  const std::int64_t block = fused ? 0 : rows * in_stride;
  std::vector<T> host(static_cast<std::size_t>(fused ? rows * in_stride : 3 * block),
                      scalar_cast<T>(-9.0));
  auto place = [&](const std::vector<double>& x, int which) {
    const std::int64_t base = fused ? which * C : which * block;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < C; ++j)
        host[static_cast<std::size_t>(base + r * in_stride + j)] =
            scalar_cast<T>(x[static_cast<std::size_t>(r * C + j)]);
  };
  place(in.q, 0);
  place(in.k, 1);
  place(in.v, 2);
  auto qkv = Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(host.size())}, host);
  const T* q = qkv.data();
  const T* k = q + (fused ? C : block);
  const T* v = q + (fused ? 2 * C : 2 * block);

  // o starts poisoned: every element must be written.
  auto o = Tensor<T, Cuda>::from_vector(
      Shape{rows * o_stride},
      std::vector<T>(static_cast<std::size_t>(rows * o_stride), scalar_cast<T>(1e4)));
  auto lse = Tensor<accum_t<T>, Cuda>::from_vector(
      Shape{c.B * c.H * c.T}, std::vector<accum_t<T>>(c.rows(), accum_t<T>(1e4)));
  const auto p = forward_params<T>(c, q, k, v, in_stride, o.data(), o_stride, lse.data());
  if constexpr (std::is_same_v<T, bf16>) {
    if (wanted.forward) {
      wanted.forward(p);
    } else {
      fathom::kernels::attention(Cuda{}, p);
    }
  } else {
    fathom::kernels::attention(Cuda{}, p);
  }

  const Shape shape{c.B, c.T, C};
  auto d_o = Tensor<T, Cuda>::from_vector(shape, cast_to<T>(in.d_o));
  const std::vector<double> nan(in.dq0.size(), std::nan(""));
  auto dq = Tensor<T, Cuda>::from_vector(shape, cast_to<T>(accumulate ? in.dq0 : nan));
  auto dk = Tensor<T, Cuda>::from_vector(shape, cast_to<T>(accumulate ? in.dk0 : nan));
  auto dv = Tensor<T, Cuda>::from_vector(shape, cast_to<T>(accumulate ? in.dv0 : nan));
  auto bp = backward_params<T>(p, d_o.data(), wanted.dq ? dq.data() : nullptr,
                               wanted.dk ? dk.data() : nullptr, wanted.dv ? dv.data() : nullptr,
                               accumulate);
  bp.rope_theta = c.rope_theta;
  bp.rope_pos0 = c.rope_pos0;
  if constexpr (std::is_same_v<T, bf16>) {
    if (wanted.backward) {
      wanted.backward(bp);
    } else {
      fathom::kernels::attention_backward(Cuda{}, bp);
    }
  } else {
    fathom::kernels::attention_backward(Cuda{}, bp);
  }
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));

  Outputs r;
  auto o_rows = to_double(o.to_vector());
  r.o.resize(c.n());
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < C; ++j)
      r.o[static_cast<std::size_t>(i * C + j)] = o_rows[static_cast<std::size_t>(i * o_stride + j)];
  for (std::int64_t i = 0; i < rows; ++i)  // padding past C stays untouched
    for (std::int64_t j = C; j < o_stride; ++j)
      if (o_rows[static_cast<std::size_t>(i * o_stride + j)] !=
          scalar_cast<double>(scalar_cast<T>(1e4)))
        r.o[0] = std::nan("");  // shows up as a mismatch at element 0
  r.lse = to_double(lse.to_vector());
  r.dq = to_double(dq.to_vector());
  r.dk = to_double(dk.to_vector());
  r.dv = to_double(dv.to_vector());
  return r;
}

// Every element within atol * scale + rtol * |want|, where scale = max(1, max |want|) so that
// tensors of large magnitude are judged relative to it; reports the first failure and the worst.
std::string compare(const std::string& name, const AttentionCase& c, bool per_head,
                    const std::vector<double>& got, const std::vector<double>& want, double rtol,
                    double atol) {
  double scale = 1.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  std::size_t worst = 0, failures = 0, first = want.size();
  double worst_excess = -1.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(got[i] - want[i]), bound = atol * scale + rtol * std::abs(want[i]);
    const double excess = std::isnan(err) ? 1e300 : err / bound;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
    if (!(err <= bound)) {
      ++failures;
      if (first == want.size()) first = i;
    }
  }
  if (failures == 0) return {};
  auto where = [&](std::size_t i) {
    std::ostringstream s;
    const auto C = static_cast<std::size_t>(c.C()), T = static_cast<std::size_t>(c.T),
               H = static_cast<std::size_t>(c.H);
    if (per_head)
      s << "[b " << i / (T * H) << ", h " << i / T % H << ", t " << i % T << "]";
    else
      s << "[b " << i / (T * C) << ", t " << i / C % T << ", c " << i % C << "]";
    s << ": got " << got[i] << ", want " << want[i];
    return s.str();
  };
  std::ostringstream s;
  s << name << " (" << c << "): " << failures << " of " << want.size() << " elements off; first "
    << where(first) << "; worst " << where(worst) << " (" << worst_excess << "x the tolerance)";
  return s.str();
}

template <class T>
struct Tolerance;
template <>
struct Tolerance<float> {  // fp32 math throughout
  static constexpr double rtol = 1e-4, atol = 1e-5, grad_rtol = 1e-4, grad_atol = 1e-4;
};
template <>
struct Tolerance<bf16> {  // bf16 probabilities and outputs; bf16 gradients after accumulation
  static constexpr double rtol = Precision<bf16>::rtol, atol = 1e-2,
                          grad_rtol = Precision<bf16>::rtol, grad_atol = 1e-2;
};

template <class T>
void check_against(const AttentionCase& c, const Outputs& got, const Outputs& want) {
  using Tol = Tolerance<T>;
  INFO(Precision<T>::name << " " << c);
  CHECK(compare("o", c, false, got.o, want.o, Tol::rtol, Tol::atol) == "");
  CHECK(compare("lse", c, true, got.lse, want.lse, Tol::rtol, Tol::atol) == "");
  CHECK(compare("dq", c, false, got.dq, want.dq, Tol::grad_rtol, Tol::grad_atol) == "");
  CHECK(compare("dk", c, false, got.dk, want.dk, Tol::grad_rtol, Tol::grad_atol) == "");
  CHECK(compare("dv", c, false, got.dv, want.dv, Tol::grad_rtol, Tol::grad_atol) == "");
}

}  // namespace

TEST_CASE("CUDA attention matches the CPU reference, forward and backward", "[cuda][attention]") {
  const AttentionCase c =
      GENERATE(AttentionCase{2, 256, 12, 64, true}, AttentionCase{1, 1024, 12, 64, true},
               AttentionCase{3, 100, 4, 32, true}, AttentionCase{1, 77, 2, 128, true},
               AttentionCase{3, 100, 4, 32, false}, AttentionCase{2, 130, 2, 64, false},
               AttentionCase{1, 1, 1, 64, true}, AttentionCase{2, 65, 3, 16, true},
               AttentionCase{1, 200, 2, 96, true}, AttentionCase{2, 64, 2, 64, true},
               // the 128-row forward blocks: T past one block, short of two, not a multiple
               AttentionCase{2, 129, 3, 64, true}, AttentionCase{1, 200, 2, 64, true},
               AttentionCase{2, 1000, 2, 64, true}, AttentionCase{3, 100, 4, 64, false},
               AttentionCase{1, 129, 2, 32, true}, AttentionCase{2, 1000, 1, 32, false},
               // a negative scale (the mma forward needs scale > 0: the tiled one runs)
               AttentionCase{2, 100, 2, 64, true, -0.2}, AttentionCase{1, 70, 2, 64, false, -0.1});
  INFO(c);
  const Inputs in = make_inputs(c, 100);
  const Outputs want = reference(c, in);
  check_against<float>(c, run_cuda<float>(c, in), want);
  check_against<bf16>(c, run_cuda<bf16>(c, in), want);
}

TEST_CASE("CUDA attention backward overwrites fresh gradient buffers (accumulate false)",
          "[cuda][attention]") {
  const AttentionCase c =
      GENERATE(AttentionCase{2, 256, 12, 64, true}, AttentionCase{3, 100, 4, 32, true},
               AttentionCase{2, 130, 2, 64, false}, AttentionCase{2, 65, 3, 16, true},
               AttentionCase{2, 129, 3, 64, true}, AttentionCase{1, 1000, 2, 64, true});
  INFO(c);
  Inputs in = make_inputs(c, 200);
  Inputs zero = in;  // the reference adds onto zeros
  std::fill(zero.dq0.begin(), zero.dq0.end(), 0.0);
  std::fill(zero.dk0.begin(), zero.dk0.end(), 0.0);
  std::fill(zero.dv0.begin(), zero.dv0.end(), 0.0);
  const Outputs want = reference(c, zero);
  check_against<float>(c, run_cuda<float>(c, in, 0, 0, false), want);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, false), want);
}

// The tensor-core backward computes D = rowsum(dO * O) in its dQ pass, or in a pass of its own
// when dQ is not wanted; a gradient not asked for is left alone.
TEST_CASE("CUDA attention backward computes only the gradients asked for", "[cuda][attention]") {
  const AttentionCase c =
      GENERATE(AttentionCase{2, 129, 3, 64, true}, AttentionCase{3, 100, 2, 32, false});
  INFO(c);
  const Inputs in = make_inputs(c, 400);
  const Outputs all = reference(c, in);
  SECTION("dq alone") {
    Outputs want = all;
    want.dk = in.dk0;
    want.dv = in.dv0;
    check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, {true, false, false}), want);
  }
  SECTION("dk and dv without dq") {
    Outputs want = all;
    want.dq = in.dq0;
    check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, {false, true, true}), want);
  }
  SECTION("dv alone") {
    Outputs want = all;
    want.dq = in.dq0;
    want.dk = in.dk0;
    check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, {false, false, true}), want);
  }
}

// The block -> work map of the CUDA kernels (host-callable): a bijection onto (pair, tile rank),
// and within each group of pairs the ranks never go back (heaviest tiles first).
TEST_CASE("CUDA attention block order covers every (b, h, tile) once, heaviest first",
          "[cuda][attention]") {
  namespace attn = fathom::kernels::detail::attn;
  const int tiles = GENERATE(1, 2, 8, 16);
  const int pairs = GENERATE(1, 5, 31, 32, 33, 100);
  const int group = GENERATE(1, 32);
  INFO("tiles " << tiles << ", pairs " << pairs << ", group " << group);
  std::vector<int> seen(static_cast<std::size_t>(tiles * pairs), 0);
  int out_of_range = 0, rank_went_back = 0, last_rank = -1, last_group = -1;
  for (int block = 0; block < tiles * pairs; ++block) {
    const auto w = attn::block_work(static_cast<unsigned>(block), tiles, pairs, group);
    if (w.bh < 0 || w.bh >= pairs || w.rank < 0 || w.rank >= tiles) {
      ++out_of_range;
      continue;
    }
    ++seen[static_cast<std::size_t>(w.bh * tiles + w.rank)];
    const int g = w.bh / group;
    if (g == last_group && w.rank < last_rank) ++rank_went_back;
    last_group = g;
    last_rank = w.rank;
  }
  CHECK(out_of_range == 0);
  CHECK(rank_went_back == 0);
  CHECK(std::count(seen.begin(), seen.end(), 1) == tiles * pairs);
}

// The alternative backward tile shapes (kernels/cuda/attention/mma.cuh, MmaBackward128Rows) that
// fathom-attention-bench times against the ones in use: the same answers.
namespace {
void backward_128_rows(const fathom::kernels::AttentionBackwardParams<bf16>& p) {
  namespace attn = fathom::kernels::detail::attn;
  REQUIRE(attn::use_mma(p));
  auto* delta = fathom::cuda::CachingAllocator::instance().workspace_for<float>(
      static_cast<std::size_t>(p.batch * p.heads * p.seq));
  if (p.head_dim == 64) {
    attn::launch_backward_mma<64, attn::MmaBackward128Rows<64>>(p, delta);
  } else {
    attn::launch_backward_mma<32, attn::MmaBackward128Rows<32>>(p, delta);
  }
}
}  // namespace

TEST_CASE("CUDA attention backward with 128-row blocks matches the CPU reference",
          "[cuda][attention]") {
  const AttentionCase c =
      GENERATE(AttentionCase{2, 256, 12, 64, true}, AttentionCase{2, 129, 3, 64, true},
               AttentionCase{1, 1000, 2, 64, true}, AttentionCase{3, 100, 4, 64, false},
               AttentionCase{1, 1, 1, 64, true}, AttentionCase{2, 70, 2, 64, true},
               AttentionCase{3, 100, 4, 32, true}, AttentionCase{1, 129, 2, 32, false});
  INFO(c);
  const Inputs in = make_inputs(c, 500);
  const Outputs all = reference(c, in);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, {.backward = backward_128_rows}), all);
  Inputs zero = in;  // overwriting fresh (NaN) buffers
  std::fill(zero.dq0.begin(), zero.dq0.end(), 0.0);
  std::fill(zero.dk0.begin(), zero.dk0.end(), 0.0);
  std::fill(zero.dv0.begin(), zero.dv0.end(), 0.0);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, false, {.backward = backward_128_rows}),
                      reference(c, zero));
  SECTION("dk and dv without dq") {
    Outputs want = all;
    want.dq = in.dq0;
    check_against<bf16>(
        c, run_cuda<bf16>(c, in, 0, 0, true, {.dq = false, .backward = backward_128_rows}), want);
  }
}

// kernels::attention picks the wgmma kernels at head_dim 64 on a GPU that runs sm_90a code; the
// mma kernels keep head_dim 64 on every other GPU. Both families, and the wgmma family's
// alternative tile shapes (WgmmaWide, WgmmaNarrow, WgmmaLongKeys), against the CPU, launched
// directly.
namespace {
float* delta_workspace(const fathom::kernels::AttentionBackwardParams<bf16>& p) {
  return fathom::cuda::CachingAllocator::instance().workspace_for<float>(
      static_cast<std::size_t>(p.batch * p.heads * p.seq));
}
void mma_forward(const fathom::kernels::AttentionParams<bf16>& p) {
  namespace attn = fathom::kernels::detail::attn;
  REQUIRE(attn::use_mma(p));
  attn::launch_forward_mma<64>(p);
}
void mma_backward(const fathom::kernels::AttentionBackwardParams<bf16>& p) {
  namespace attn = fathom::kernels::detail::attn;
  REQUIRE(attn::use_mma(p));
  attn::launch_backward_mma<64>(p, delta_workspace(p));
}
template <class Shapes>
void wgmma_forward(const fathom::kernels::AttentionParams<bf16>& p) {
  fathom::kernels::detail::attn::launch_forward_wgmma<Shapes>(p);
}
template <class Shapes>
void wgmma_backward(const fathom::kernels::AttentionBackwardParams<bf16>& p) {
  fathom::kernels::detail::attn::launch_backward_wgmma<Shapes>(p, delta_workspace(p));
}

// The family's results against the CPU: accumulating, overwriting fresh (NaN) buffers, and dK
// and dV without dQ (D then comes from its own pass).
void check_family(const AttentionCase& c, Wanted launchers, std::uint64_t seed) {
  INFO(c);
  const Inputs in = make_inputs(c, seed);
  const Outputs all = reference(c, in);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, launchers), all);
  Inputs zero = in;
  std::fill(zero.dq0.begin(), zero.dq0.end(), 0.0);
  std::fill(zero.dk0.begin(), zero.dk0.end(), 0.0);
  std::fill(zero.dv0.begin(), zero.dv0.end(), 0.0);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, false, launchers), reference(c, zero));
  Wanted no_dq = launchers;
  no_dq.dq = false;
  Outputs want = all;
  want.dq = in.dq0;
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, no_dq), want);
}

AttentionCase family_case() {
  return GENERATE(AttentionCase{2, 256, 12, 64, true}, AttentionCase{2, 129, 3, 64, true},
                  AttentionCase{1, 1000, 2, 64, true}, AttentionCase{3, 100, 4, 64, false},
                  AttentionCase{1, 1, 1, 64, true}, AttentionCase{2, 70, 2, 64, true},
                  AttentionCase{2, 200, 2, 64, true, 0.0, 10000.0, 3});
}
}  // namespace

TEST_CASE("CUDA attention's mma kernels at head_dim 64 match the CPU reference",
          "[cuda][attention]") {
  check_family(family_case(), {.backward = mma_backward, .forward = mma_forward}, 600);
}

TEST_CASE("CUDA attention's wgmma kernels and their alternative shapes match the CPU reference",
          "[cuda][attention]") {
  namespace attn = fathom::kernels::detail::attn;
  if (!attn::wgmma_available()) {
    WARN("this GPU or build runs no sm_90a code: the wgmma kernels are not tested here");
    return;
  }
  const AttentionCase c = family_case();
  SECTION("WgmmaChoice") {
    check_family(c,
                 {.backward = wgmma_backward<attn::WgmmaChoice>,
                  .forward = wgmma_forward<attn::WgmmaChoice>},
                 700);
  }
  SECTION("WgmmaOneBlock (one block a head wherever it applies, T = 256 too)") {
    check_family(c,
                 {.backward = wgmma_backward<attn::WgmmaOneBlock>,
                  .forward = wgmma_forward<attn::WgmmaOneBlock>},
                 700);
  }
  SECTION("WgmmaTwoPass (the two backward passes also where one block a head applies)") {
    check_family(c,
                 {.backward = wgmma_backward<attn::WgmmaTwoPass>,
                  .forward = wgmma_forward<attn::WgmmaTwoPass>},
                 700);
  }
  SECTION("WgmmaWide") {
    check_family(
        c, {.backward = wgmma_backward<attn::WgmmaWide>, .forward = wgmma_forward<attn::WgmmaWide>},
        700);
  }
  SECTION("WgmmaNarrow") {
    check_family(c,
                 {.backward = wgmma_backward<attn::WgmmaNarrow>,
                  .forward = wgmma_forward<attn::WgmmaNarrow>},
                 700);
  }
  SECTION("WgmmaLongKeys") {
    check_family(c,
                 {.backward = wgmma_backward<attn::WgmmaLongKeys>,
                  .forward = wgmma_forward<attn::WgmmaLongKeys>},
                 700);
  }
}

// backward_short_wgmma (a head's whole backward in one block, T <= 256) launched directly, at
// every tile count, with and without the causal mask (full up to T = 192, where its dS tiles still
// fit), RoPE's inverse turn, several heads and batches; accumulating onto random gradients and
// overwriting NaN-filled ones.
namespace {
void short_backward(const fathom::kernels::AttentionBackwardParams<bf16>& p) {
  namespace attn = fathom::kernels::detail::attn;
  REQUIRE(attn::short_backward_applies(p));
  attn::launch_backward_short(p);
}
}  // namespace

TEST_CASE("CUDA attention's one-block backward for short sequences matches the CPU reference",
          "[cuda][attention]") {
  namespace attn = fathom::kernels::detail::attn;
  if (!attn::wgmma_available()) {
    WARN("this GPU or build runs no sm_90a code: the wgmma kernels are not tested here");
    return;
  }
  const AttentionCase c = GENERATE(
      AttentionCase{3, 256, 5, 64, true}, AttentionCase{2, 250, 3, 64, true},
      AttentionCase{2, 192, 3, 64, false}, AttentionCase{2, 161, 2, 64, true},
      AttentionCase{2, 128, 4, 64, false}, AttentionCase{1, 100, 3, 64, true},
      AttentionCase{2, 64, 2, 64, true}, AttentionCase{2, 33, 2, 64, false},
      AttentionCase{1, 1, 2, 64, true}, AttentionCase{2, 256, 2, 64, true, 0.0, 10000.0, 7},
      AttentionCase{2, 150, 2, 64, false, 0.0, 500.0, 0});
  INFO(c);
  const Inputs in = make_inputs(c, 800);
  const Wanted launchers{.backward = short_backward};
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, true, launchers), reference(c, in));
  Inputs zero = in;
  std::fill(zero.dq0.begin(), zero.dq0.end(), 0.0);
  std::fill(zero.dk0.begin(), zero.dk0.end(), 0.0);
  std::fill(zero.dv0.begin(), zero.dv0.end(), 0.0);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, false, launchers), reference(c, zero));
}

// Which backward WgmmaChoice runs, seen in its bits (both are deterministic, and their dQ sums
// differ in order): the one block up to three tiles (T = 192), the two passes at four (T = 256,
// where they were faster).
TEST_CASE("CUDA attention's default backward is the one block up to T = 192, two passes above",
          "[cuda][attention]") {
  namespace attn = fathom::kernels::detail::attn;
  if (!attn::wgmma_available()) {
    WARN("this GPU or build runs no sm_90a code: the wgmma kernels are not tested here");
    return;
  }
  auto run = [](const AttentionCase& c, const Inputs& in, Wanted w) {
    return run_cuda<bf16>(c, in, 0, 0, false, w);
  };
  const Wanted choice{.backward = wgmma_backward<attn::WgmmaChoice>};
  const Wanted one_block{.backward = wgmma_backward<attn::WgmmaOneBlock>};
  const Wanted two_pass{.backward = wgmma_backward<attn::WgmmaTwoPass>};
  for (const AttentionCase c :
       {AttentionCase{2, 192, 3, 64, true}, AttentionCase{2, 256, 3, 64, true}}) {
    INFO(c);
    const Inputs in = make_inputs(c, 900);
    const Outputs got = run(c, in, choice);
    const Outputs want = run(c, in, c.T <= 192 ? one_block : two_pass);
    const Outputs other = run(c, in, c.T <= 192 ? two_pass : one_block);
    CHECK(got.dq == want.dq);
    CHECK(got.dk == want.dk);
    CHECK(got.dv == want.dv);
    // The two really differ here, so the checks above tell them apart.
    CHECK((got.dq != other.dq || got.dk != other.dk || got.dv != other.dv));
  }
}

TEST_CASE("CUDA attention's one-block backward gives way where it does not apply",
          "[cuda][attention]") {
  namespace attn = fathom::kernels::detail::attn;
  fathom::kernels::AttentionBackwardParams<bf16> p{};
  p.batch = 1;
  p.heads = 1;
  p.head_dim = 64;
  p.dq = p.dk = p.dv = reinterpret_cast<bf16*>(std::uintptr_t{256});
  p.causal = true;
  p.seq = 256;
  CHECK(attn::short_backward_applies(p));
  p.seq = 257;  // five tiles
  CHECK_FALSE(attn::short_backward_applies(p));
  p.causal = false;
  p.seq = 192;
  CHECK(attn::short_backward_applies(p));
  p.seq = 193;  // 16 dS tiles of a full mask do not fit beside Q, K, V and dO
  CHECK_FALSE(attn::short_backward_applies(p));
  p.seq = 64;
  p.dq = nullptr;  // dK and dV alone: the dK/dV pass
  CHECK_FALSE(attn::short_backward_applies(p));
}

TEST_CASE("CUDA attention reads fused and misaligned rows in place", "[cuda][attention]") {
  const AttentionCase c{2, 100, 4, 64, true};
  const Inputs in = make_inputs(c, 200);
  const Outputs want = reference(c, in);
  SECTION("q, k, v side by side in a fused (B, T, 3C) projection, o rows padded") {
    check_against<float>(c, run_cuda<float>(c, in, 3 * c.C(), c.C() + 8), want);
    check_against<bf16>(c, run_cuda<bf16>(c, in, 3 * c.C(), c.C() + 8), want);
    // The tensor-core path reads a fused buffer exactly as a contiguous one.
    const Outputs fused = run_cuda<bf16>(c, in, 3 * c.C());
    const Outputs separate = run_cuda<bf16>(c, in, c.C());
    CHECK(fused.o == separate.o);
    CHECK(fused.dq == separate.dq);
    CHECK(fused.dk == separate.dk);
    CHECK(fused.dv == separate.dv);
  }
  SECTION("rows that are not 16-byte aligned fall back to the tiled kernels") {
    check_against<bf16>(c, run_cuda<bf16>(c, in, c.C() + 1, c.C() + 1), want);
  }
}

TEST_CASE("CUDA attention op: forward and gradients through autograd", "[cuda][attention]") {
  const AttentionCase c{2, 70, 2, 64, true};
  const Inputs in = make_inputs(c, 300);
  Outputs want = reference(c, in);
  for (std::size_t i = 0; i < c.n(); ++i) {  // the op's gradients start from zero
    want.dq[i] -= in.dq0[i];
    want.dk[i] -= in.dk0[i];
    want.dv[i] -= in.dv0[i];
  }
  const Shape shape{c.B, c.T, c.C()};
  auto var = [&](const std::vector<double>& x) {
    return fathom::Var<bf16, Cuda>(Tensor<bf16, Cuda>::from_vector(shape, cast_to<bf16>(x)), true);
  };
  auto q = var(in.q), k = var(in.k), v = var(in.v);
  auto y = fathom::autograd::attention(q, k, v, static_cast<int>(c.H));
  fathom::autograd::backward(y, Tensor<bf16, Cuda>::from_vector(shape, cast_to<bf16>(in.d_o)));
  Outputs got;
  got.o = to_double(y.value().to_vector());
  got.lse = want.lse;  // not visible through the op
  got.dq = to_double(q.grad().to_vector());
  got.dk = to_double(k.grad().to_vector());
  got.dv = to_double(v.grad().to_vector());
  check_against<bf16>(c, got, want);
}

// RoPE's inverse turn fused into the tensor-core backward's dQ and dK stores (rope_theta > 0),
// against the CPU reference, which turns its gathered gradients: model shapes and awkward ones
// (T not a multiple of the tiles, head_dim 32, a start position, Llama 3's theta), adding onto
// random gradients and overwriting NaN-poisoned fresh ones; dV is not turned.
TEST_CASE("CUDA attention backward turns dq and dk back by RoPE's inverse as the CPU does",
          "[cuda][attention][rope]") {
  const AttentionCase c = GENERATE(AttentionCase{2, 256, 12, 64, true, 0.0, 10000.0, 0},
                                   AttentionCase{1, 1024, 4, 64, true, 0.0, 500000.0, 0},
                                   AttentionCase{3, 100, 4, 32, true, 0.0, 10000.0, 7},
                                   AttentionCase{2, 129, 3, 64, false, 0.0, 10000.0, 3},
                                   AttentionCase{1, 77, 2, 64, true, 0.0, 300.0, 1000},
                                   AttentionCase{1, 1, 1, 64, true, 0.0, 10000.0, 5});
  const bool accumulate = GENERATE(true, false);
  INFO(c << (accumulate ? " accumulate" : " overwrite"));
  Inputs in = make_inputs(c, 500);
  Inputs start = in;
  if (!accumulate) {  // the reference adds onto zeros; the kernels get NaN
    std::fill(start.dq0.begin(), start.dq0.end(), 0.0);
    std::fill(start.dk0.begin(), start.dk0.end(), 0.0);
    std::fill(start.dv0.begin(), start.dv0.end(), 0.0);
  }
  const Outputs want = reference(c, start);
  check_against<bf16>(c, run_cuda<bf16>(c, in, 0, 0, accumulate), want);
  // Only dq and dk are turned: dv is the plain backward's.
  AttentionCase plain = c;
  plain.rope_theta = 0.0;
  CHECK(run_cuda<bf16>(plain, in, 0, 0, accumulate).dv ==
        run_cuda<bf16>(c, in, 0, 0, accumulate).dv);
}

TEST_CASE("CUDA attention backward refuses RoPE's inverse turn where it cannot fuse it",
          "[cuda][attention][rope]") {
  for (const AttentionCase& c : {AttentionCase{1, 10, 2, 96, true, 0.0, 10000.0, 0},
                                 AttentionCase{1, 10, 2, 64, true, 0.0, 10000.0, 0}}) {
    INFO(c);
    const Inputs in = make_inputs(c, 510);
    REQUIRE_NOTHROW(run_cuda<bf16>(AttentionCase{c.B, c.T, c.H, c.hd, c.causal}, in));
    if (c.hd == 96) CHECK_THROWS_AS(run_cuda<bf16>(c, in), fathom::Error);  // tiled kernels
    CHECK_THROWS_AS(run_cuda<float>(c, in), fathom::Error);                 // float: tiled
  }
}

// The autograd op on CUDA against the CPU op on the same values: bf16 (the fused turn) and float
// (the tiled kernels, then the rope pass over the gradient), with qkv's gradient fresh or already
// holding a gradient (the accumulate route).
TEMPLATE_TEST_CASE("CUDA rope_attention_qkv op matches the CPU op, values and gradients",
                   "[cuda][attention][rope]", bf16, float) {
  using T = TestType;
  namespace ag = fathom::autograd;
  const std::int64_t B = 2, Tn = 70, H = 3, hd = 64, C = H * hd;
  const bool accumulate = GENERATE(false, true);
  INFO(Precision<T>::name << (accumulate ? " accumulate" : " fresh"));
  const Shape shape{B, Tn, 3 * C};
  const auto n = static_cast<std::size_t>(B * Tn * 3 * C);
  const auto x0 = bf16_values(n, 600), w0 = bf16_values(n / 3, 601), u0 = bf16_values(n, 602);
  auto run = [&](auto device) {
    using D = decltype(device);
    using V = std::conditional_t<std::is_same_v<D, Cpu>, double, T>;
    ag::clear_tape();
    auto tensor = [&](const std::vector<double>& v, Shape s) {
      return Tensor<V, D>::from_vector(s, cast_to<V>(v));
    };
    fathom::Var<V, D> x(tensor(x0, shape), true);
    fathom::Var<V, D> in = x * 1.0;
    fathom::Var<V, D> extra =
        accumulate ? ag::sum(in * fathom::Var<V, D>(tensor(u0, shape))) : fathom::Var<V, D>();
    auto out = ag::rope_attention_qkv(std::move(in), static_cast<int>(H), 10000.0, 2);
    auto loss = ag::sum(out * fathom::Var<V, D>(tensor(w0, Shape{B, Tn, C})));
    ag::backward(accumulate ? loss + extra : loss);
    return std::pair{to_double(out.value().to_vector()), to_double(x.grad().to_vector())};
  };
  const auto [want_o, want_g] = run(Cpu{});
  const auto [got_o, got_g] = run(Cuda{});
  using Tol = Tolerance<T>;
  const AttentionCase c{B, Tn, H, hd, true};
  CHECK(compare("o", c, false, got_o, want_o, Tol::rtol, Tol::atol) == "");
  CHECK(compare("dqkv", c, false, got_g, want_g, Tol::grad_rtol, Tol::grad_atol) == "");
}
