// [cuda] tests for the CUDA norm kernels (include/fathom/kernels/cuda/norm.cuh): RMSNorm and
// LayerNorm forward (y, saved statistics) and backward (dx, dw, db accumulated onto random
// gradients) in float and bf16 against the CPU reference in double, at the model widths (768,
// 1024, 2048), widths held in registers by one kernel and walked by the other (8 to 4104),
// awkward ones (5461, 1, 7), more rows than the backward grid has blocks, base pointers off the
// 16-byte grid, the same bits from the register kernels as from the walking ones, run-to-run
// determinism, and the autograd ops on CUDA.
#include <fathom/autograd/ops/norm.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/norm.cuh>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fathom/core/rng.hpp>

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

struct NormCase {
  std::int64_t rows, cols;
  std::int64_t offset;  // elements by which every device array is shifted off the 16-byte grid
};

std::ostream& operator<<(std::ostream& os, const NormCase& c) {
  return os << "rows " << c.rows << " cols " << c.cols << " offset " << c.offset;
}

// Rows held in registers (C * sizeof(T) a multiple of 16, C up to 4096 forward, 1024 backward in
// bf16; half that in fp32), walked beyond (1536 and 2048 backward in bf16, 4104 either way), and
// walked when unaligned (5461, 7, 1, offsets).
const NormCase cases[] = {
    {1, 768, 0}, {37, 768, 0},   {300, 1024, 0}, {129, 2048, 0}, {65, 5461, 0}, {3, 1, 0},
    {5, 7, 0},   {4099, 768, 0}, {2500, 96, 0},  {33, 768, 1},   {17, 2048, 3}, {9, 5461, 1},
    {19, 8, 0},  {1001, 512, 0}, {41, 1536, 0},  {23, 4096, 0},  {70, 4104, 0}};

struct NormData {
  std::vector<double> x, w, b, dy, dx0, dw0, db0;
};
NormData make_data(const NormCase& c, std::uint64_t seed) {
  const auto n = static_cast<std::size_t>(c.rows * c.cols), C = static_cast<std::size_t>(c.cols);
  return {bf16_values(n, seed, 1.5, 0.4), bf16_values(C, seed + 1, 0.3, 1.0),
          bf16_values(C, seed + 2, 0.5),  bf16_values(n, seed + 3),
          bf16_values(n, seed + 4),       bf16_values(C, seed + 5),
          bf16_values(C, seed + 6)};
}

struct NormResult {
  std::vector<double> y, mean, rstd, dx, dw, db;
};

// Forward then backward (accumulating onto dx0, dw0, db0) with the CPU kernels in double or the
// CUDA kernels in T.
template <class T, class D>
NormResult run_norm(bool layer, const NormCase& c, const NormData& in, double eps, double scale) {
  NormResult r;
  const std::int64_t off = std::is_same_v<D, Cuda> ? c.offset : 0;
  auto make = [&](const std::vector<double>& v) {
    if constexpr (std::is_same_v<D, Cuda>)
      return DeviceArray<T>(v, off);
    else
      return v;
  };
  auto x = make(in.x), w = make(in.w), b = make(in.b), dy = make(in.dy), dx = make(in.dx0),
       dw = make(in.dw0), db = make(in.db0), y = make(std::vector<double>(in.x.size(), 7.0));
  using A = accum_t<T>;
  auto stats = [&](std::int64_t n) {
    if constexpr (std::is_same_v<D, Cuda>)
      return Tensor<A, Cuda>::from_vector(Shape{n},
                                          std::vector<A>(static_cast<std::size_t>(n), A(-1)));
    else
      return std::vector<double>(static_cast<std::size_t>(n), -1.0);
  };
  auto mean = stats(c.rows), rstd = stats(c.rows);
  if (layer) {
    fathom::kernels::layer_norm(D{}, fathom::kernels::LayerNormParams<T>{
                                         x.data(), w.data(), b.data(), y.data(), mean.data(),
                                         rstd.data(), c.rows, c.cols, eps, scale});
    fathom::kernels::layer_norm_backward(
        D{}, fathom::kernels::LayerNormBackwardParams<T>{dy.data(), x.data(), w.data(), mean.data(),
                                                         rstd.data(), dx.data(), dw.data(),
                                                         db.data(), c.rows, c.cols, scale, true});
  } else {
    fathom::kernels::rms_norm(
        D{}, fathom::kernels::RmsNormParams<T>{x.data(), w.data(), y.data(), rstd.data(), c.rows,
                                               c.cols, eps, scale});
    fathom::kernels::rms_norm_backward(D{}, fathom::kernels::RmsNormBackwardParams<T>{
                                                dy.data(), x.data(), w.data(), rstd.data(),
                                                dx.data(), dw.data(), c.rows, c.cols, scale, true});
  }
  if constexpr (std::is_same_v<D, Cuda>) {
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
    r = {to_double(y.values()),  to_double(mean.to_vector()), to_double(rstd.to_vector()),
         to_double(dx.values()), to_double(dw.values()),      to_double(db.values())};
  } else {
    r = {y, mean, rstd, dx, dw, db};
  }
  return r;
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA rms_norm and layer_norm match the CPU reference", "[cuda][kernels][norm]",
                   float, bf16) {
  using T = TestType;
  const NormCase c = GENERATE(from_range(std::begin(cases), std::end(cases)));
  const bool layer = GENERATE(false, true);
  const double scale = GENERATE(1.0, 0.5773502691896258);
  CAPTURE(c, layer, scale, Precision<T>::name);
  const double eps = layer ? 1e-5 : 1e-6;
  const auto in = make_data(c, 1000 + static_cast<std::uint64_t>(c.cols));
  const auto want = run_norm<double, Cpu>(layer, c, in, eps, scale);
  const auto got = run_norm<T, Cuda>(layer, c, in, eps, scale);
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  // Statistics are kept in accum precision (fp32): hold them to fp32's tolerance.
  const double srtol = Precision<accum_t<T>>::rtol, satol = Precision<accum_t<T>>::atol;
  CHECK(first_mismatch("y", got.y, want.y, rtol, atol, c.cols) == "");
  CHECK(first_mismatch("rstd", got.rstd, want.rstd, srtol, satol, 1) == "");
  if (layer) CHECK(first_mismatch("mean", got.mean, want.mean, srtol, satol, 1) == "");
  CHECK(first_mismatch("dx", got.dx, want.dx, rtol, atol, c.cols) == "");
  // dw and db are fp32 sums of `rows` terms of size ~1 that mostly cancel: their rounding error
  // grows like sqrt(rows), whatever the size of the result.
  const double sum_atol = atol * std::sqrt(static_cast<double>(c.rows));
  CHECK(first_mismatch("dw", got.dw, want.dw, rtol, sum_atol, c.cols) == "");
  if (layer) CHECK(first_mismatch("db", got.db, want.db, rtol, sum_atol, c.cols) == "");
}

TEST_CASE("CUDA norm backward computes only the gradients asked for", "[cuda][kernels][norm]") {
  const NormCase c{70, 768, 0};
  const auto in = make_data(c, 77);
  const auto want = run_norm<double, Cpu>(true, c, in, 1e-5, 0.8);
  NormResult r;
  DeviceArray<float> x(in.x, 0), w(in.w, 0), b(in.b, 0), dy(in.dy, 0), y(in.x, 0), db(in.db0, 0);
  auto mean = Tensor<float, Cuda>::zeros(Shape{c.rows}),
       rstd = Tensor<float, Cuda>::zeros(Shape{c.rows});
  fathom::kernels::layer_norm(Cuda{}, fathom::kernels::LayerNormParams<float>{
                                          x.data(), w.data(), b.data(), y.data(), mean.data(),
                                          rstd.data(), c.rows, c.cols, 1e-5, 0.8});
  // db only (no dx, no dw).
  fathom::kernels::layer_norm_backward(
      Cuda{}, fathom::kernels::LayerNormBackwardParams<float>{
                  dy.data(), x.data(), w.data(), mean.data(), rstd.data(), nullptr, nullptr,
                  db.data(), c.rows, c.cols, 0.8, true});
  CHECK(first_mismatch("db", to_double(db.values()), want.db, 1e-4, 1e-5, c.cols) == "");
  // dx only, written over garbage (accumulate_dx = false).
  DeviceArray<float> dx(std::vector<double>(in.x.size(), 1e30), 0);
  fathom::kernels::layer_norm_backward(
      Cuda{}, fathom::kernels::LayerNormBackwardParams<float>{
                  dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), nullptr,
                  nullptr, c.rows, c.cols, 0.8, false});
  auto want_dx = want.dx;
  for (std::size_t i = 0; i < want_dx.size(); ++i) want_dx[i] -= in.dx0[i];
  CHECK(first_mismatch("dx", to_double(dx.values()), want_dx, 1e-4, 1e-5, c.cols) == "");
}

TEST_CASE("CUDA norm kernels hold rows in registers up to 4096 (forward) and 1024 (backward) bf16",
          "[cuda][kernels][norm]") {
  using fathom::kernels::detail::norm_lane_packs;
  using fathom::kernels::detail::NormBackwardLanePacks;
  using fathom::kernels::detail::NormForwardLanePacks;
  // The smallest K (packs of 16 bytes per lane) that holds the row, 0 when the row is walked.
  CHECK(norm_lane_packs<bf16>(8, NormForwardLanePacks{}) == 2);
  CHECK(norm_lane_packs<bf16>(768, NormForwardLanePacks{}) == 4);
  CHECK(norm_lane_packs<bf16>(2048, NormForwardLanePacks{}) == 8);
  CHECK(norm_lane_packs<bf16>(4096, NormForwardLanePacks{}) == 16);
  CHECK(norm_lane_packs<bf16>(4104, NormForwardLanePacks{}) == 0);
  CHECK(norm_lane_packs<bf16>(768, NormBackwardLanePacks{}) == 3);
  CHECK(norm_lane_packs<bf16>(1024, NormBackwardLanePacks{}) == 4);
  CHECK(norm_lane_packs<bf16>(1536, NormBackwardLanePacks{}) == 0);
  CHECK(norm_lane_packs<float>(2048, NormForwardLanePacks{}) == 16);
  CHECK(norm_lane_packs<float>(512, NormBackwardLanePacks{}) == 4);
  CHECK(norm_lane_packs<float>(768, NormBackwardLanePacks{}) == 0);
}

namespace {

// Which gradients a backward computes.
struct NormGrads {
  bool dx, dw, db;
};

std::ostream& operator<<(std::ostream& os, const NormGrads& g) {
  return os << (g.dx ? "dx " : "") << (g.dw ? "dw " : "") << (g.db ? "db" : "");
}

// y, mean, rstd, dx, dw, db of one path, as stored (T, or accum for the statistics).
template <class T>
struct NormPathResult {
  std::vector<T> y, dx, dw, db;
  std::vector<accum_t<T>> mean, rstd;
};

// Forward then backward with the kernels `path` allows, straight through the launchers.
template <class T, bool Layer>
NormPathResult<T> run_norm_path(const NormCase& c, const NormData& in, NormGrads grads,
                                bool accumulate, fathom::kernels::detail::NormPath path) {
  namespace kd = fathom::kernels::detail;
  using A = accum_t<T>;
  DeviceArray<T> x(in.x, 0), w(in.w, 0), b(in.b, 0), dy(in.dy, 0), dx(in.dx0, 0), dw(in.dw0, 0),
      db(in.db0, 0), y(std::vector<double>(in.x.size(), 7.0), 0);
  auto mean = Tensor<A, Cuda>::zeros(Shape{c.rows}), rstd = Tensor<A, Cuda>::zeros(Shape{c.rows});
  const A eps = A(1e-5), scale = A(0.75);
  kd::launch_norm_forward<T, Layer>(
      kd::NormForwardArgs<T>{x.data(), w.data(), Layer ? b.data() : nullptr, y.data(),
                             Layer ? mean.data() : nullptr, rstd.data(), c.rows, c.cols, eps,
                             scale},
      path);
  kd::launch_norm_backward<T, Layer>(
      kd::NormBackwardArgs<T>{dy.data(), x.data(), w.data(), Layer ? mean.data() : nullptr,
                              rstd.data(), grads.dx ? dx.data() : nullptr, c.rows, c.cols, scale,
                              accumulate, nullptr, 1},
      grads.dw ? dw.data() : nullptr, Layer && grads.db ? db.data() : nullptr, path);
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
  return {y.values(), dx.values(), dw.values(), db.values(), mean.to_vector(), rstd.to_vector()};
}

}  // namespace

// Both kinds of kernel do the same float operations in the same order (the backward's on the same
// grid, which NormPath::generic keeps), so they must agree to the bit.
TEMPLATE_TEST_CASE("CUDA norm kernels give the same bits holding rows in registers as walking them",
                   "[cuda][kernels][norm]", float, bf16) {
  using T = TestType;
  const NormCase c = GENERATE(values<NormCase>({{19, 8, 0},
                                                {37, 96, 0},
                                                {3001, 384, 0},
                                                {1001, 512, 0},
                                                {4099, 768, 0},
                                                {1030, 1024, 0},
                                                {129, 2048, 0}}));
  const bool layer = GENERATE(false, true);
  const bool accumulate = GENERATE(false, true);
  const NormGrads grads = GENERATE(NormGrads{true, true, true}, NormGrads{true, false, false},
                                   NormGrads{false, true, false}, NormGrads{false, false, true});
  CAPTURE(c, layer, accumulate, grads, Precision<T>::name);
  namespace kd = fathom::kernels::detail;
  // At least the forward holds these rows in registers (the backward too up to 1024 bf16 columns).
  REQUIRE(kd::norm_lane_packs<T>(c.cols, kd::NormForwardLanePacks{}) > 0);
  const auto in = make_data(c, 500 + static_cast<std::uint64_t>(c.cols));
  auto run = [&](kd::NormPath path) {
    return layer ? run_norm_path<T, true>(c, in, grads, accumulate, path)
                 : run_norm_path<T, false>(c, in, grads, accumulate, path);
  };
  const auto held = run(kd::NormPath::any), walked = run(kd::NormPath::generic);
  CHECK(same_bits(held.y, walked.y));
  CHECK(same_bits(held.mean, walked.mean));
  CHECK(same_bits(held.rstd, walked.rstd));
  CHECK(same_bits(held.dx, walked.dx));
  CHECK(same_bits(held.dw, walked.dw));
  CHECK(same_bits(held.db, walked.db));
  // And they did compute: y was overwritten, and each wanted gradient moved off its start.
  CHECK(!same_bits(held.y, cast_to<T>(std::vector<double>(in.x.size(), 7.0))));
  if (grads.dx) CHECK(!same_bits(held.dx, cast_to<T>(in.dx0)));
  if (grads.dw) CHECK(!same_bits(held.dw, cast_to<T>(in.dw0)));
  if (layer && grads.db) CHECK(!same_bits(held.db, cast_to<T>(in.db0)));
}

TEST_CASE("CUDA norm weight gradients are the same run to run", "[cuda][kernels][norm]") {
  const NormCase c{5000, 1024, 0};
  const auto in = make_data(c, 91);
  const auto first = run_norm<bf16, Cuda>(true, c, in, 1e-5, 1.0);
  const auto second = run_norm<bf16, Cuda>(true, c, in, 1e-5, 1.0);
  CHECK(first.dw == second.dw);
  CHECK(first.db == second.db);
  CHECK(first.dx == second.dx);
}

TEMPLATE_TEST_CASE("CUDA rms_norm and layer_norm ops match the CPU ops, values and gradients",
                   "[cuda][autograd][norm]", float, bf16) {
  using T = TestType;
  namespace ag = fathom::autograd;
  const std::int64_t B = 3, S = 5, C = 768;
  const auto x = bf16_values(static_cast<std::size_t>(B * S * C), 5, 1.0, 0.2);
  const auto w = bf16_values(C, 6, 0.2, 1.0), b = bf16_values(C, 7, 0.3),
             gy = bf16_values(x.size(), 8);
  auto run = [&](auto device) {
    using D = decltype(device);
    fathom::Var<T, D> xv(
        Tensor<T, Cpu>::from_vector(Shape{B, S, C}, cast_to<T>(x)).template to<D>(), true);
    fathom::Var<T, D> wv(Tensor<T, Cpu>::from_vector(Shape{C}, cast_to<T>(w)).template to<D>(),
                         true);
    fathom::Var<T, D> bv(Tensor<T, Cpu>::from_vector(Shape{C}, cast_to<T>(b)).template to<D>(),
                         true);
    auto y = ag::layer_norm(ag::rms_norm(xv, wv, 1e-6, 0.5), wv, bv, 1e-5, 0.25);
    ag::backward(y, Tensor<T, Cpu>::from_vector(Shape{B, S, C}, cast_to<T>(gy)).template to<D>());
    return std::vector<std::vector<double>>{
        to_double(y.value().to_vector()), to_double(xv.grad().to_vector()),
        to_double(wv.grad().to_vector()), to_double(bv.grad().to_vector())};
  };
  const auto cpu = run(Cpu{}), gpu = run(Cuda{});
  const char* names[] = {"y", "dx", "dw", "db"};
  for (std::size_t k = 0; k < cpu.size(); ++k) {
    // Both sides round to T in between the two norms; allow two roundings.
    CHECK(first_mismatch(names[k], gpu[k], cpu[k], 2 * Precision<T>::rtol, 2 * Precision<T>::atol,
                         C) == "");
  }
}
