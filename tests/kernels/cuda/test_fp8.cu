// [cuda] tests for the CUDA fp8 kernels (include/fathom/kernels/cuda/fp8.cuh) against the CPU
// reference (include/fathom/kernels/fp8.hpp): CUDA's conversions against fathom's encoding bit for
// bit (hand-picked values, ties, saturation, NaN, and random values); amax, quantize (with the
// transposed copy) and dequantize on random inputs of odd shapes into NaN-poisoned buffers; and
// the fp8 GEMM for a linear layer's three products (forward E4M3 x E4M3, dgrad and wgrad
// E5M2 x E4M3), through cuBLASLt where the layout allows (with GEMM autotuning off and on) and the
// tiled kernel elsewhere, with the beta term read from C or from a separate c_in (C NaN-filled);
// the SwiGLU quantize passes (values computed from gate, up and dh) and their amax.
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/fp8.cuh>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::fp8_e4m3;
using fathom::fp8_e5m2;
using fathom::Fp8Format;
using fathom::scalar_cast;
using fathom::Shape;
using fathom::Tensor;
namespace kernels = fathom::kernels;

using namespace fathom::test;

namespace {

constexpr std::uint8_t fp8_test_poison = 0x7f;  // NaN in both formats

float fp8_test_nan() { return std::numeric_limits<float>::quiet_NaN(); }

// Values over many binades (some in the subnormals once scaled), both signs, never zero-filled.
std::vector<bf16> fp8_test_values(std::size_t n, std::uint64_t seed, double spread = 10.0) {
  std::vector<bf16> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = bf16(static_cast<float>((2.0 * fathom::rng::uniform(seed, i) - 1.0) *
                                   std::exp2(-spread * fathom::rng::uniform(seed + 1, i))));
  return v;
}

template <class F>
Tensor<F, Cuda> fp8_test_poisoned(std::int64_t n) {
  return Tensor<F, Cuda>::from_vector(
      Shape{n}, std::vector<F>(static_cast<std::size_t>(n), F::from_bits(fp8_test_poison)));
}

// One float read back on fathom's stream, after the kernels queued there (a plain cudaMemcpy runs
// on the legacy default stream, which does not wait for fathom's non-blocking one: it could read
// the value before the kernel that writes it had run).
float fp8_test_device_float(const float* p) {
  float v = 0.0f;
  FATHOM_CUDA_CHECK(
      cudaMemcpyAsync(&v, p, sizeof v, cudaMemcpyDeviceToHost, fathom::cuda::stream()));
  fathom::cuda::synchronize();
  return v;
}

// The first index where the codes differ ("" when none); NaN codes match any NaN code.
template <class F>
std::string fp8_test_first_code_mismatch(const std::vector<F>& got, const std::vector<F>& want) {
  if (got.size() != want.size()) return "sizes differ";
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool both_nan =
        std::isnan(static_cast<float>(got[i])) && std::isnan(static_cast<float>(want[i]));
    if (got[i].bits != want[i].bits && !both_nan)
      return "element " + std::to_string(i) + ": got code " + std::to_string(got[i].bits) +
             ", want " + std::to_string(want[i].bits);
  }
  return {};
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA fp8 conversion matches fathom's encoding bit for bit", "[cuda][fp8]",
                   fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  const float max_value = F::traits::max_value;
  // The hand-checked values of the CPU tests, every midpoint between neighbouring codes and its
  // float neighbours, infinities, NaN, and log-uniform random values across the whole range.
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           0.5f,
                           -2.0f,
                           max_value,
                           -max_value,
                           max_value * 1.01f,
                           1e6f,
                           -1e6f,
                           1.0625f,
                           1.1875f,
                           1.125f,
                           1.375f,
                           0.0009765625f,
                           0.0029296875f,
                           7.62939453125e-06f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           fp8_test_nan()};
  for (unsigned c = 0; c < F::traits::max_code; ++c) {
    const float lo = fathom::fp8_decode<F::format>(static_cast<std::uint8_t>(c));
    const float hi = fathom::fp8_decode<F::format>(static_cast<std::uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;
    for (float x : {mid, -mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)})
      xs.push_back(x);
  }
  for (std::uint64_t i = 0; i < 20001; ++i)
    xs.push_back(static_cast<float>((i % 2 ? -1.0 : 1.0) *
                                    std::exp2(-22.0 + 40.0 * fathom::rng::uniform(9, i))));
  const auto n = static_cast<std::int64_t>(xs.size());
  // amax = the format's maximum gives scale 1: the kernel converts x itself.
  auto gx = to_device(xs);
  auto gamax = to_device(std::vector<float>{max_value});
  auto gscale_inv = to_device(std::vector<float>{fp8_test_nan()});
  auto gq = fp8_test_poisoned<F>(n);
  kernels::quantize_fp8(Cuda{},
                        kernels::QuantizeFp8Params<float, F>{.x = gx.data(),
                                                             .out = gq.data(),
                                                             .rows = 1,
                                                             .cols = n,
                                                             .amax = gamax.data(),
                                                             .scale_inv = gscale_inv.data()});
  std::vector<F> want(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) want[i] = F(xs[i]);
  const std::string mismatch = fp8_test_first_code_mismatch(gq.to_vector(), want);
  INFO(mismatch);
  CHECK(mismatch.empty());
  CHECK(gscale_inv.to_vector()[0] == 1.0f);

  // And back: every code decoded on the device, scale_inv 1, equals fathom's decoding.
  std::vector<F> codes(256);
  for (unsigned c = 0; c < 256; ++c) codes[c] = F::from_bits(static_cast<std::uint8_t>(c));
  auto gcodes = to_device(codes);
  auto gone = to_device(std::vector<float>{1.0f});
  auto gback = Tensor<float, Cuda>::full(Shape{256}, fp8_test_nan());
  kernels::dequantize_fp8(Cuda{}, kernels::DequantizeFp8Params<F, float>{
                                      gcodes.data(), gback.data(), 256, gone.data()});
  const auto back = gback.to_vector();
  for (unsigned c = 0; c < 256; ++c) {
    const float w = fathom::fp8_decode<F::format>(static_cast<std::uint8_t>(c));
    INFO("code " << c);
    CHECK((back[c] == w || (std::isnan(back[c]) && std::isnan(w))));
  }
}

TEMPLATE_TEST_CASE("CUDA amax matches the CPU exactly", "[cuda][fp8]", float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 4099, 1000003);
  const std::int64_t offset = GENERATE(0, 1);
  INFO("n " << n << " offset " << offset);
  auto x = normal_values<T>(static_cast<std::size_t>(n), 21, 3.0, 0.25);
  const DeviceArray<T> gx(x, offset);
  auto gout = to_device(std::vector<float>{fp8_test_nan()});
  float want = 0.0f;
  kernels::amax(Cpu{}, kernels::AmaxParams<T>{x.data(), n, &want});
  kernels::amax(Cuda{}, kernels::AmaxParams<T>{gx.data(), n, gout.data()});
  CHECK(fp8_test_device_float(gout.data()) == want);
  CHECK(want > 0.0f);

  // Again over a result that holds a larger value: the output is reset, not maxed into.
  auto big = to_device(std::vector<float>{1e30f});
  kernels::amax(Cuda{}, kernels::AmaxParams<T>{gx.data(), n, big.data()});
  CHECK(fp8_test_device_float(big.data()) == want);

  // A NaN anywhere makes the amax NaN (so the scale falls back to 1 and the NaN reaches the loss).
  x[static_cast<std::size_t>(n / 2)] = scalar_cast<T>(fp8_test_nan());
  const DeviceArray<T> gnan(x, offset);
  kernels::amax(Cuda{}, kernels::AmaxParams<T>{gnan.data(), n, gout.data()});
  CHECK(std::isnan(fp8_test_device_float(gout.data())));
}

TEST_CASE("CUDA amax of nothing is zero", "[cuda][fp8]") {
  auto gout = to_device(std::vector<float>{fp8_test_nan()});
  kernels::amax(Cuda{}, kernels::AmaxParams<bf16>{nullptr, 0, gout.data()});
  CHECK(fp8_test_device_float(gout.data()) == 0.0f);
}

TEMPLATE_TEST_CASE("CUDA quantize_fp8 (amax on the device) matches the CPU code for code",
                   "[cuda][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  struct Dims {
    std::int64_t rows, cols;
  };
  // The first six take the plain kernel; the rest (rows and cols multiples of 8) the wide one,
  // with whole 64 x 64 tiles, partial ones, and many row tiles of one column (200008 x 8), the
  // last partial.
  const Dims d = GENERATE(Dims{1, 1}, Dims{3, 37}, Dims{37, 3}, Dims{129, 300}, Dims{1000, 33},
                          Dims{2053, 96}, Dims{8, 8}, Dims{64, 64}, Dims{72, 136}, Dims{520, 1000},
                          Dims{2048, 96}, Dims{40, 4104}, Dims{200008, 8});
  const int margin = GENERATE(0, 3);
  const bool transposed = GENERATE(false, true);
  INFO(d.rows << " x " << d.cols << " margin " << margin << " transposed " << transposed);
  const std::int64_t n = d.rows * d.cols;
  const auto x = fp8_test_values(static_cast<std::size_t>(n), 31);

  float amax = 0.0f, scale_inv = 0.0f;
  std::vector<F> want(x.size()), want_t(x.size());
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{x.data(), n, &amax});
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, F>{.x = x.data(),
                                                                   .out = want.data(),
                                                                   .out_t = want_t.data(),
                                                                   .rows = d.rows,
                                                                   .cols = d.cols,
                                                                   .amax = &amax,
                                                                   .scale_inv = &scale_inv,
                                                                   .margin = margin});

  auto gx = to_device(x);
  auto gamax = to_device(std::vector<float>{fp8_test_nan()});
  auto gscale_inv = to_device(std::vector<float>{fp8_test_nan()});
  auto gq = fp8_test_poisoned<F>(n), gqt = fp8_test_poisoned<F>(n);
  kernels::amax(Cuda{}, kernels::AmaxParams<bf16>{gx.data(), n, gamax.data()});
  kernels::quantize_fp8(
      Cuda{}, kernels::QuantizeFp8Params<bf16, F>{.x = gx.data(),
                                                  .out = gq.data(),
                                                  .out_t = transposed ? gqt.data() : nullptr,
                                                  .rows = d.rows,
                                                  .cols = d.cols,
                                                  .amax = gamax.data(),
                                                  .scale_inv = gscale_inv.data(),
                                                  .margin = margin});
  CHECK(fp8_test_device_float(gamax.data()) == amax);
  CHECK(fp8_test_device_float(gscale_inv.data()) == scale_inv);
  // The poison (NaN) never survives: every input is finite, so every code is.
  const auto got = gq.to_vector();
  const std::string mismatch = fp8_test_first_code_mismatch(got, want);
  INFO("out: " << mismatch);
  CHECK(mismatch.empty());
  for (const F& q : got) {
    if (std::isnan(static_cast<float>(q))) FAIL("a NaN code was left in out");
  }
  if (transposed) {
    const std::string mismatch_t = fp8_test_first_code_mismatch(gqt.to_vector(), want_t);
    INFO("out_t: " << mismatch_t);
    CHECK(mismatch_t.empty());
  } else {
    for (const F& q : gqt.to_vector()) REQUIRE(q.bits == fp8_test_poison);  // untouched
  }
}

TEMPLATE_TEST_CASE("CUDA quantize_fp8 with an amax history matches the CPU: codes, scale, history",
                   "[cuda][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  struct Dims {
    std::int64_t rows, cols;
  };
  // Plain kernel (odd shapes, and 2053 rows: several row tiles a block), wide kernel (multiples of
  // 8; 200008 x 8: 3126 row tiles, whose blocks all record into one amax), and an empty tensor.
  const Dims d = GENERATE(Dims{3, 37}, Dims{129, 300}, Dims{2053, 96}, Dims{72, 136},
                          Dims{520, 1000}, Dims{200008, 8}, Dims{0, 16});
  const int record = GENERATE(0, 6, 15);  // 15: the cleared slot wraps to 0
  const bool record_amax = GENERATE(true, false);
  const bool current = GENERATE(false, true);  // the first quantization of a history
  INFO(d.rows << " x " << d.cols << " record " << record << (record_amax ? "" : " (reading)")
              << (current ? ", current scale" : ", delayed scale"));
  const std::int64_t n = d.rows * d.cols;
  auto x = fp8_test_values(static_cast<std::size_t>(n), 57, 4.0);
  if (n > 40) {  // non-finite values: codes NaN or saturated, never in the history
    x[5] = bf16(fp8_test_nan());
    x[39] = bf16(-std::numeric_limits<float>::infinity());
    x[24] = bf16(9.0f);  // the largest finite value, in the first tile
  }
  constexpr int len = 16;
  std::vector<float> history(len);
  for (int i = 0; i < len; ++i)
    history[static_cast<std::size_t>(i)] =
        static_cast<float>(0.05 + 0.9 * fathom::rng::uniform(58, i));
  history[static_cast<std::size_t>(record)] = 0.0f;
  float amax = 0.0f;
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{x.data(), n, &amax});
  if (std::isnan(amax)) amax = 0.75f;  // a current scale that is not 1

  auto params = [&](auto* xs, F* out, F* out_t, float* a, float* si, float* h) {
    return kernels::QuantizeFp8Params<bf16, F>{.x = xs,
                                               .out = out,
                                               .out_t = out_t,
                                               .rows = d.rows,
                                               .cols = d.cols,
                                               .amax = current ? a : nullptr,
                                               .scale_inv = si,
                                               .history = h,
                                               .history_len = len,
                                               .record = record,
                                               .record_amax = record_amax};
  };
  std::vector<F> want(x.size()), want_t(x.size());
  std::vector<float> want_history = history;
  float scale_inv = 0.0f;
  kernels::quantize_fp8(
      Cpu{}, params(x.data(), want.data(), want_t.data(), &amax, &scale_inv, want_history.data()));

  auto gx = to_device(x);
  auto gamax = to_device(std::vector<float>{amax});
  auto gscale_inv = to_device(std::vector<float>{fp8_test_nan()});
  auto ghistory = to_device(history);
  auto gq = fp8_test_poisoned<F>(n), gqt = fp8_test_poisoned<F>(n);
  kernels::quantize_fp8(Cuda{}, params(gx.data(), gq.data(), gqt.data(), gamax.data(),
                                       gscale_inv.data(), ghistory.data()));
  CHECK(fp8_test_device_float(gscale_inv.data()) == scale_inv);
  CHECK(ghistory.to_vector() == want_history);
  if (record_amax && n > 0) CHECK(want_history[static_cast<std::size_t>(record)] > 0.0f);
  const std::string mismatch = fp8_test_first_code_mismatch(gq.to_vector(), want);
  INFO("out: " << mismatch);
  CHECK(mismatch.empty());
  const std::string mismatch_t = fp8_test_first_code_mismatch(gqt.to_vector(), want_t);
  INFO("out_t: " << mismatch_t);
  CHECK(mismatch_t.empty());
}

TEMPLATE_TEST_CASE("CUDA dequantize_fp8 matches the CPU", "[cuda][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  const std::int64_t n = GENERATE(1, 255, 70001);
  std::vector<F> codes(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < codes.size(); ++i) {
    auto c = static_cast<std::uint8_t>(fathom::test::hashed_uniform(41, i) * 256.0);
    if ((c & 0x7f) >= F::traits::max_code) c = static_cast<std::uint8_t>(c & 0x80);  // finite
    codes[i] = F::from_bits(c);
  }
  const float scale_inv = 0.0078125f * 3.0f;
  std::vector<float> want(codes.size());
  std::vector<bf16> want_bf16(codes.size());
  kernels::dequantize_fp8(
      Cpu{}, kernels::DequantizeFp8Params<F, float>{codes.data(), want.data(), n, &scale_inv});
  kernels::dequantize_fp8(
      Cpu{}, kernels::DequantizeFp8Params<F, bf16>{codes.data(), want_bf16.data(), n, &scale_inv});
  auto gcodes = to_device(codes);
  auto gs = to_device(std::vector<float>{scale_inv});
  auto gout = Tensor<float, Cuda>::full(Shape{n}, fp8_test_nan());
  auto gout_bf16 = Tensor<bf16, Cuda>::full(Shape{n}, bf16(fp8_test_nan()));
  kernels::dequantize_fp8(
      Cuda{}, kernels::DequantizeFp8Params<F, float>{gcodes.data(), gout.data(), n, gs.data()});
  kernels::dequantize_fp8(
      Cuda{}, kernels::DequantizeFp8Params<F, bf16>{gcodes.data(), gout_bf16.data(), n, gs.data()});
  CHECK(same_bits(gout.to_vector(), want));
  CHECK(same_bits(gout_bf16.to_vector(), want_bf16));
}

namespace {

// Which kernel a problem must take: cuBLASLt (on sm_89+), the tiled kernel, or either (sizes
// cuBLASLt may or may not take, such as M not a multiple of 16).
enum class Fp8TestRoute { cublaslt, tiled, either };

// One fp8 GEMM on the device against the CPU reference on the same codes and scales (tight: only
// the order of the float sums differs) and against the unquantized double product (loose: the
// quantization error of each operand), C NaN-poisoned when beta is 0. With `with_c_in` the beta
// term reads a separate c_in (`c_in_offset` elements into its buffer: 1 puts it off the 16-byte
// grid) and C is all NaN on the device; c_in must come back unchanged.
template <class FA, class FB, class T>
void fp8_test_gemm(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb, bool bias,
                   double beta, std::uint64_t seed, Fp8TestRoute route, bool with_c_in = false,
                   std::int64_t c_in_offset = 0) {
  INFO("M " << m << " N " << n << " K " << k << " trans_a " << ta << " trans_b " << tb << " bias "
            << bias << " beta " << beta << " A " << FA::traits::name << " B " << FB::traits::name
            << " c_in " << with_c_in << " (offset " << c_in_offset << ")");
  const std::int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
  const std::int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
  // Operands in bf16, quantized on the host (the codes are what is compared; quantize itself is
  // tested above), with current scaling.
  const auto a_x = fp8_test_values(static_cast<std::size_t>(a_rows * a_cols), seed, 3.0);
  const auto b_x = fp8_test_values(static_cast<std::size_t>(b_rows * b_cols), seed + 7, 3.0);
  float a_amax = 0, b_amax = 0, a_si = 0, b_si = 0;
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{a_x.data(), a_rows * a_cols, &a_amax});
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{b_x.data(), b_rows * b_cols, &b_amax});
  std::vector<FA> a(a_x.size());
  std::vector<FB> b(b_x.size());
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, FA>{.x = a_x.data(),
                                                                    .out = a.data(),
                                                                    .rows = a_rows,
                                                                    .cols = a_cols,
                                                                    .amax = &a_amax,
                                                                    .scale_inv = &a_si});
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, FB>{.x = b_x.data(),
                                                                    .out = b.data(),
                                                                    .rows = b_rows,
                                                                    .cols = b_cols,
                                                                    .amax = &b_amax,
                                                                    .scale_inv = &b_si});
  std::vector<T> bias_v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < bias_v.size(); ++i)
    bias_v[i] = scalar_cast<T>(fathom::rng::uniform(seed + 3, i) - 0.5);
  std::vector<T> c0(static_cast<std::size_t>(m * n));
  for (std::size_t i = 0; i < c0.size(); ++i)
    c0[i] = scalar_cast<T>(beta == 0.0 ? fp8_test_nan() : float(fathom::rng::uniform(seed + 4, i)));

  std::vector<T> want = c0;
  kernels::Fp8GemmParams<FA, FB, T> p{.bias = bias ? bias_v.data() : nullptr,
                                      .m = m,
                                      .n = n,
                                      .k = k,
                                      .trans_a = ta,
                                      .trans_b = tb,
                                      .beta = beta};
  auto cpu = p;
  cpu.a = a.data(), cpu.b = b.data(), cpu.c = want.data(), cpu.a_scale_inv = &a_si,
  cpu.b_scale_inv = &b_si;
  kernels::gemm_fp8(Cpu{}, cpu);

  auto ga = to_device(a);
  auto gb = to_device(b);
  auto gc = with_c_in ? to_device(std::vector<T>(c0.size(), scalar_cast<T>(fp8_test_nan())))
                      : to_device(c0);
  std::vector<T> c_in(static_cast<std::size_t>(c_in_offset), scalar_cast<T>(0.0));
  c_in.insert(c_in.end(), c0.begin(), c0.end());
  auto gc_in = to_device(c_in);
  auto gbias = to_device(bias_v);
  auto gsa = to_device(std::vector<float>{a_si});
  auto gsb = to_device(std::vector<float>{b_si});
  auto gpu = p;
  gpu.a = ga.data(), gpu.b = gb.data(), gpu.c = gc.data(), gpu.bias = bias ? gbias.data() : nullptr,
  gpu.a_scale_inv = gsa.data(), gpu.b_scale_inv = gsb.data();
  gpu.c_in = with_c_in ? gc_in.data() + c_in_offset : nullptr;
  const std::uint64_t runs_before = kernels::detail::lt_gemm_fp8_runs();
  kernels::gemm_fp8(Cuda{}, gpu);
  const auto got = gc.to_vector();
  CHECK(same_bits(gc_in.to_vector(), c_in));  // only read
  if (route == Fp8TestRoute::cublaslt && kernels::device_supports_fp8())
    CHECK(kernels::detail::lt_gemm_fp8_runs() == runs_before + 1);
  if (route == Fp8TestRoute::tiled) CHECK(kernels::detail::lt_gemm_fp8_runs() == runs_before);

  const double out_round = std::is_same_v<T, bf16> ? std::exp2(-7) : std::exp2(-21);
  std::string tight, loose;
  for (std::int64_t i = 0; i < m && tight.empty() && loose.empty(); ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double exact = 0, mass = 0, qmass = 0;
      for (std::int64_t q = 0; q < k; ++q) {
        const std::size_t ai = static_cast<std::size_t>(ta ? q * a_cols + i : i * a_cols + q);
        const std::size_t bi = static_cast<std::size_t>(tb ? j * b_cols + q : q * b_cols + j);
        exact += double(static_cast<float>(a_x[ai])) * double(static_cast<float>(b_x[bi]));
        mass += std::abs(double(static_cast<float>(a_x[ai])) * double(static_cast<float>(b_x[bi])));
        qmass += std::abs(double(static_cast<float>(a[ai])) * double(static_cast<float>(b[bi])));
      }
      qmass *= double(a_si) * double(b_si);
      const std::size_t ci = static_cast<std::size_t>(i * n + j);
      const double g = scalar_cast<double>(got[ci]), w = scalar_cast<double>(want[ci]);
      const double extra = std::abs((beta != 0.0 ? beta * scalar_cast<double>(c0[ci]) : 0.0) +
                                    (bias ? scalar_cast<double>(bias_v[j]) : 0.0));
      // The CPU sums in float; Hopper's fp8 tensor cores keep about 14 bits of the running sum
      // between cuBLASLt's promotions to float (every few k-blocks): allow 2^-12 of the sum of
      // |products| per 128 terms. Each result is rounded to T once. A wrong layout or scale is
      // off by a sizeable fraction of the result, far beyond this.
      // With beta or a bias the product is rounded to T before they are added: one more
      // rounding of up to |product| (bounded by qmass).
      const double tol_tight = (1.0 + double(k) / 128) * std::exp2(-12) * (qmass + extra) +
                               out_round * (std::abs(w) + 1e-30) +
                               (extra > 0 ? out_round * qmass : 0.0);
      if (!(std::abs(g - w) <= tol_tight)) {
        tight = "C[" + std::to_string(i) + ", " + std::to_string(j) + "] got " + std::to_string(g) +
                ", CPU reference " + std::to_string(w);
        break;
      }
      double want_exact = exact;
      if (beta != 0.0) want_exact += beta * scalar_cast<double>(c0[ci]);
      if (bias) want_exact += scalar_cast<double>(bias_v[j]);
      // Each product off by at most (1 + 2^-4) (1 + 2^-3) - 1 < 0.2 of itself, plus subnormals.
      const double tol_loose =
          0.2 * mass + 2 * out_round * std::abs(want_exact) + 1e-3 * (extra + 1);
      if (!(std::abs(g - want_exact) <= tol_loose)) {
        loose = "C[" + std::to_string(i) + ", " + std::to_string(j) + "] got " + std::to_string(g) +
                ", unquantized product " + std::to_string(want_exact);
        break;
      }
    }
  }
  INFO(tight);
  CHECK(tight.empty());
  INFO(loose);
  CHECK(loose.empty());
}

}  // namespace

TEST_CASE("CUDA gemm_fp8 forward: X (E4M3) W^T (E4M3), cuBLASLt's layout", "[cuda][fp8]") {
  // Autotuned, the candidates of a GEMM that adds into C (beta = 1 below) are timed into a scratch
  // C: the result still adds into C once.
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO("autotune " << autotune);
  // Linear forward: Y (rows, out) = X (rows, in) W^T, W stored (out, in): trans_b. Rows not a
  // multiple of 16 and float outputs may or may not suit cuBLASLt; the sizes of a model do.
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(77, 48, 64, false, true, false, 0.0, 100,
                                          Fp8TestRoute::either);
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(256, 384, 512, false, true, true, 0.0, 101,
                                          Fp8TestRoute::cublaslt);
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, float>(130, 96, 160, false, true, false, 0.0, 102,
                                           Fp8TestRoute::either);
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(64, 32, 48, false, true, false, 1.0, 103,
                                          Fp8TestRoute::cublaslt);
}

TEST_CASE("CUDA gemm_fp8 dgrad and wgrad: dY (E5M2) against E4M3 operands", "[cuda][fp8]") {
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO("autotune " << autotune);
  // dgrad: dX (rows, in) = dY (rows, out) W, with W's transposed copy (in, out) as B.
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(77, 64, 48, false, true, false, 0.0, 200,
                                          Fp8TestRoute::either);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(256, 512, 384, false, true, false, 1.0, 201,
                                          Fp8TestRoute::cublaslt);
  // wgrad: dW (out, in) = dY^T X, with dY^T (out, rows) as A and X^T (in, rows) as B.
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(48, 64, 80, false, true, false, 0.0, 202,
                                          Fp8TestRoute::cublaslt);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(384, 512, 256, false, true, false, 1.0, 203,
                                          Fp8TestRoute::cublaslt);
  // And the other mixed pair.
  fp8_test_gemm<fp8_e4m3, fp8_e5m2, bf16>(96, 80, 64, false, true, true, 0.0, 204,
                                          Fp8TestRoute::cublaslt);
}

TEST_CASE("CUDA gemm_fp8 on odd shapes and other layouts takes the tiled kernel", "[cuda][fp8]") {
  const bool ta = GENERATE(false, true), tb = GENERATE(false, true);
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(5, 7, 33, ta, tb, false, 0.0, 300, Fp8TestRoute::tiled);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(37, 19, 70, ta, tb, true, 0.0, 301, Fp8TestRoute::tiled);
  fp8_test_gemm<fp8_e4m3, fp8_e5m2, float>(1, 45, 17, ta, tb, false, 1.0, 302, Fp8TestRoute::tiled);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(100, 3, 129, ta, tb, true, 0.5, 303, Fp8TestRoute::tiled);
}

TEST_CASE("CUDA gemm_fp8's beta term reads c_in: cuBLASLt, the tiled kernel and K = 0",
          "[cuda][fp8]") {
  const double beta = GENERATE(1.0, 0.5, -2.0);
  const bool bias = GENERATE(false, true);
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO("autotune " << autotune);
  // cuBLASLt's TN layout (K a multiple of 16, aligned): c_in is its C, our C its D.
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(64, 32, 48, false, true, bias, beta, 700,
                                          Fp8TestRoute::cublaslt, true);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(256, 512, 384, false, true, bias, beta, 701,
                                          Fp8TestRoute::cublaslt, true);
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, float>(130, 96, 160, false, true, bias, beta, 702,
                                           Fp8TestRoute::either, true);
  // A c_in off the 16-byte grid: cuBLASLt declines, the tiled kernel reads it.
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, bf16>(64, 32, 48, false, true, bias, beta, 703,
                                          Fp8TestRoute::tiled, true, 1);
  // K not a multiple of 16 and other layouts: the tiled kernel.
  const bool ta = GENERATE(false, true), tb = GENERATE(false, true);
  fp8_test_gemm<fp8_e5m2, fp8_e4m3, bf16>(37, 19, 70, ta, tb, bias, beta, 704, Fp8TestRoute::tiled,
                                          true);
  fp8_test_gemm<fp8_e4m3, fp8_e5m2, float>(1, 45, 17, ta, tb, bias, beta, 705, Fp8TestRoute::tiled,
                                           true, 1);
  // K = 0: C = beta * c_in + bias.
  fp8_test_gemm<fp8_e4m3, fp8_e4m3, float>(7, 13, 0, ta, tb, bias, beta, 706, Fp8TestRoute::tiled,
                                           true);
}

TEST_CASE("CUDA linear-layer fp8 pipeline: amax, quantize with transposes, three GEMMs",
          "[cuda][fp8]") {
  // Everything on the device, no host synchronization between the steps: X (rows, in), W (out,
  // in), dY (rows, out) in bf16 -> amax -> codes (+ transposed copies) -> Y, dX, dW; each checked
  // against the CPU doing the same steps.
  const std::int64_t rows = 96, in = 64, out = 80;
  const auto x = fp8_test_values(static_cast<std::size_t>(rows * in), 400, 4.0);
  const auto w = fp8_test_values(static_cast<std::size_t>(out * in), 401, 4.0);
  const auto dy = fp8_test_values(static_cast<std::size_t>(rows * out), 402, 12.0);
  struct Quantized {
    Tensor<float, Cuda> amax = Tensor<float, Cuda>(Shape{1});
    Tensor<float, Cuda> scale_inv = Tensor<float, Cuda>(Shape{1});
  };
  auto gx = to_device(x), gw = to_device(w), gdy = to_device(dy);
  Quantized qx, qw, qdy;
  auto x8 = fp8_test_poisoned<fp8_e4m3>(rows * in), xt8 = fp8_test_poisoned<fp8_e4m3>(rows * in);
  auto w8 = fp8_test_poisoned<fp8_e4m3>(out * in), wt8 = fp8_test_poisoned<fp8_e4m3>(out * in);
  auto dy8 = fp8_test_poisoned<fp8_e5m2>(rows * out),
       dyt8 = fp8_test_poisoned<fp8_e5m2>(rows * out);
  kernels::amax(Cuda{}, kernels::AmaxParams<bf16>{gx.data(), rows * in, qx.amax.data()});
  kernels::amax(Cuda{}, kernels::AmaxParams<bf16>{gw.data(), out * in, qw.amax.data()});
  kernels::amax(Cuda{}, kernels::AmaxParams<bf16>{gdy.data(), rows * out, qdy.amax.data()});
  kernels::quantize_fp8(
      Cuda{}, kernels::QuantizeFp8Params<bf16, fp8_e4m3>{gx.data(), x8.data(), xt8.data(), rows, in,
                                                         qx.amax.data(), qx.scale_inv.data()});
  kernels::quantize_fp8(
      Cuda{}, kernels::QuantizeFp8Params<bf16, fp8_e4m3>{gw.data(), w8.data(), wt8.data(), out, in,
                                                         qw.amax.data(), qw.scale_inv.data()});
  kernels::quantize_fp8(Cuda{}, kernels::QuantizeFp8Params<bf16, fp8_e5m2>{
                                    gdy.data(), dy8.data(), dyt8.data(), rows, out, qdy.amax.data(),
                                    qdy.scale_inv.data()});
  auto y = Tensor<bf16, Cuda>::full(Shape{rows, out}, bf16(fp8_test_nan()));
  auto dx = Tensor<bf16, Cuda>::full(Shape{rows, in}, bf16(fp8_test_nan()));
  auto dw = Tensor<bf16, Cuda>::full(Shape{out, in}, bf16(fp8_test_nan()));
  kernels::gemm_fp8(
      Cuda{}, kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, bf16>{.a = x8.data(),
                                                               .b = w8.data(),
                                                               .c = y.data(),
                                                               .a_scale_inv = qx.scale_inv.data(),
                                                               .b_scale_inv = qw.scale_inv.data(),
                                                               .m = rows,
                                                               .n = out,
                                                               .k = in});
  kernels::gemm_fp8(
      Cuda{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, bf16>{.a = dy8.data(),
                                                               .b = wt8.data(),
                                                               .c = dx.data(),
                                                               .a_scale_inv = qdy.scale_inv.data(),
                                                               .b_scale_inv = qw.scale_inv.data(),
                                                               .m = rows,
                                                               .n = in,
                                                               .k = out});
  kernels::gemm_fp8(
      Cuda{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, bf16>{.a = dyt8.data(),
                                                               .b = xt8.data(),
                                                               .c = dw.data(),
                                                               .a_scale_inv = qdy.scale_inv.data(),
                                                               .b_scale_inv = qx.scale_inv.data(),
                                                               .m = out,
                                                               .n = in,
                                                               .k = rows});

  // The CPU: the same steps.
  float ax, aw, ady, sx, sw, sdy;
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{x.data(), rows * in, &ax});
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{w.data(), out * in, &aw});
  kernels::amax(Cpu{}, kernels::AmaxParams<bf16>{dy.data(), rows * out, &ady});
  std::vector<fp8_e4m3> cx(x.size()), cxt(x.size()), cw(w.size()), cwt(w.size());
  std::vector<fp8_e5m2> cdy(dy.size()), cdyt(dy.size());
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, fp8_e4m3>{
                                   x.data(), cx.data(), cxt.data(), rows, in, &ax, &sx});
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, fp8_e4m3>{
                                   w.data(), cw.data(), cwt.data(), out, in, &aw, &sw});
  kernels::quantize_fp8(Cpu{}, kernels::QuantizeFp8Params<bf16, fp8_e5m2>{
                                   dy.data(), cdy.data(), cdyt.data(), rows, out, &ady, &sdy});
  CHECK(fp8_test_first_code_mismatch(xt8.to_vector(), cxt).empty());
  CHECK(fp8_test_first_code_mismatch(wt8.to_vector(), cwt).empty());
  CHECK(fp8_test_first_code_mismatch(dyt8.to_vector(), cdyt).empty());
  std::vector<bf16> cy(static_cast<std::size_t>(rows * out)), cdx(x.size()), cdw(w.size());
  kernels::gemm_fp8(Cpu{}, kernels::Fp8GemmParams<fp8_e4m3, fp8_e4m3, bf16>{.a = cx.data(),
                                                                            .b = cw.data(),
                                                                            .c = cy.data(),
                                                                            .a_scale_inv = &sx,
                                                                            .b_scale_inv = &sw,
                                                                            .m = rows,
                                                                            .n = out,
                                                                            .k = in});
  kernels::gemm_fp8(Cpu{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, bf16>{.a = cdy.data(),
                                                                            .b = cwt.data(),
                                                                            .c = cdx.data(),
                                                                            .a_scale_inv = &sdy,
                                                                            .b_scale_inv = &sw,
                                                                            .m = rows,
                                                                            .n = in,
                                                                            .k = out});
  kernels::gemm_fp8(Cpu{}, kernels::Fp8GemmParams<fp8_e5m2, fp8_e4m3, bf16>{.a = cdyt.data(),
                                                                            .b = cxt.data(),
                                                                            .c = cdw.data(),
                                                                            .a_scale_inv = &sdy,
                                                                            .b_scale_inv = &sx,
                                                                            .m = out,
                                                                            .n = in,
                                                                            .k = rows});
  // Same codes and scales: the results differ only by the order of float sums and one bf16
  // rounding, a few bf16 steps at most relative to the largest value.
  auto close = [](const std::vector<bf16>& got, const std::vector<bf16>& want) {
    double largest = 0;
    for (bf16 v : want) largest = std::max(largest, std::abs(double(float(v))));
    return first_mismatch("C", to_double(got), to_double(want), 1.0 / 64, largest / 256);
  };
  const std::string ey = close(y.to_vector(), cy), edx = close(dx.to_vector(), cdx),
                    edw = close(dw.to_vector(), cdw);
  INFO("Y: " << ey << " dX: " << edx << " dW: " << edw);
  CHECK(ey.empty());
  CHECK(edx.empty());
  CHECK(edw.empty());
}

namespace {

// Codes that agree but for an element whose value the CPU and CUDA exponentials put on either side
// of a rounding boundary (one code step, same sign): "" when at most `allowed` elements do that and
// none differs by more, else the first that does.
template <class F>
std::string fp8_test_near_codes(const std::vector<F>& got, const std::vector<F>& want,
                                std::size_t allowed) {
  if (got.size() != want.size()) return "sizes differ";
  std::size_t steps = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool both_nan =
        std::isnan(static_cast<float>(got[i])) && std::isnan(static_cast<float>(want[i]));
    if (got[i].bits == want[i].bits || both_nan) continue;
    const int g = got[i].bits, w = want[i].bits;
    if ((g & 0x80) == (w & 0x80) && std::abs(g - w) == 1 && !std::isnan(static_cast<float>(got[i])))
      ++steps;
    else
      return "element " + std::to_string(i) + ": got code " + std::to_string(g) + ", want " +
             std::to_string(w);
  }
  return steps <= allowed ? std::string() : std::to_string(steps) + " codes one step off";
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA quantize_fp8_swiglu and amax_swiglu match the CPU: codes, scale, history",
                   "[cuda][fp8]", fp8_e4m3, fp8_e5m2) {
  using F = TestType;
  struct Dims {
    std::int64_t rows, f;
  };
  // The plain kernel (odd widths, rows not a multiple of 8), the wide kernel (several row tiles,
  // both planes of the backward; 200008 x 8: many row tiles, the last partial), and nothing.
  const Dims d = GENERATE(Dims{3, 13}, Dims{37, 24}, Dims{64, 96}, Dims{520, 200}, Dims{200008, 8},
                          Dims{0, 16});
  const bool backward = GENERATE(false, true);
  const bool delayed = GENERATE(false, true);
  INFO(d.rows << " x " << d.f << (backward ? ", backward" : ", forward")
              << (delayed ? ", delayed" : ", current"));
  const std::int64_t cols = backward ? 2 * d.f : d.f, n = d.rows * cols;
  auto gu = fp8_test_values(static_cast<std::size_t>(d.rows * 2 * d.f), 91, 3.0);
  for (auto& v : gu) v = bf16(4.0f * static_cast<float>(v));
  const auto dh = fp8_test_values(static_cast<std::size_t>(d.rows * d.f), 93, 3.0);
  if (d.rows * d.f > 40) {
    gu[7] = bf16(fp8_test_nan());  // a NaN gate: NaN codes, not in the history
    // The largest values (gate and up 12 in row 0, column 3), in the first tile.
    gu[3] = bf16(12.0f);
    gu[static_cast<std::size_t>(d.f + 3)] = bf16(12.0f);
  }
  const kernels::SwigluFp8Source<bf16> source{gu.data(), dh.data(), d.f, backward};

  float amax = 0.0f;
  kernels::amax_swiglu(Cpu{}, source, d.rows, &amax);
  auto ggu = to_device(gu);
  auto gdh = to_device(dh);
  const kernels::SwigluFp8Source<bf16> gsource{ggu.data(), gdh.data(), d.f, backward};
  auto gamax = to_device(std::vector<float>{fp8_test_nan()});
  kernels::amax_swiglu(Cuda{}, gsource, d.rows, gamax.data());
  const float device_amax = fp8_test_device_float(gamax.data());
  if (std::isnan(amax)) {
    CHECK(std::isnan(device_amax));
    amax = 0.75f;  // a current scale that is not 1, given to both below
  } else {
    CHECK_THAT(device_amax, WithinRel(amax, 1e-6f));
  }

  constexpr int len = 8, record = 3;
  std::vector<float> history(len);
  for (int i = 0; i < len; ++i)
    history[static_cast<std::size_t>(i)] =
        static_cast<float>(0.05 + 4.0 * fathom::rng::uniform(94, i));
  history[record] = 0.0f;
  auto params = [&](F* out, F* out_t, float* a, float* si, float* h) {
    return kernels::QuantizeFp8Params<bf16, F>{.out = out,
                                               .out_t = out_t,
                                               .rows = d.rows,
                                               .cols = cols,
                                               .amax = delayed ? nullptr : a,
                                               .scale_inv = si,
                                               .history = delayed ? h : nullptr,
                                               .history_len = len,
                                               .record = record};
  };
  std::vector<F> want(static_cast<std::size_t>(n)), want_t(static_cast<std::size_t>(n));
  std::vector<float> want_history = history;
  float scale_inv = 0.0f;
  kernels::quantize_fp8_swiglu(
      Cpu{}, params(want.data(), want_t.data(), &amax, &scale_inv, want_history.data()), source);

  gamax = to_device(std::vector<float>{amax});
  auto gscale_inv = to_device(std::vector<float>{fp8_test_nan()});
  auto ghistory = to_device(history);
  auto gq = fp8_test_poisoned<F>(n), gqt = fp8_test_poisoned<F>(n);
  kernels::quantize_fp8_swiglu(
      Cuda{}, params(gq.data(), gqt.data(), gamax.data(), gscale_inv.data(), ghistory.data()),
      gsource);
  CHECK(fp8_test_device_float(gscale_inv.data()) == scale_inv);
  const auto got_history = ghistory.to_vector();
  for (int i = 0; i < len; ++i) {
    INFO("history slot " << i);
    // The recorded slot is a maximum of values each exponential computes: within rounding.
    if (delayed && i == record)
      CHECK_THAT(got_history[i], WithinRel(want_history[i], 1e-6f));
    else
      CHECK(got_history[i] == want_history[i]);
  }
  if (delayed && n > 0) CHECK(want_history[record] > 0.0f);
  const std::size_t allowed = static_cast<std::size_t>(n / 1000);
  const std::string mismatch = fp8_test_near_codes(gq.to_vector(), want, allowed);
  INFO("out: " << mismatch);
  CHECK(mismatch.empty());
  const std::string mismatch_t = fp8_test_near_codes(gqt.to_vector(), want_t, allowed);
  INFO("out_t: " << mismatch_t);
  CHECK(mismatch_t.empty());
}
