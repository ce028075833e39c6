// [cuda] tests for the CUDA softmax and cross-entropy kernels
// (include/fathom/kernels/cuda/softmax.cuh) in float and bf16 against the CPU reference in double:
// softmax forward and backward, cross-entropy loss, logsumexp and gradient (backward kernel and
// fused forward) at vocabularies 32000, 50257 (rows off the 16-byte grid) and 50304, ignored rows,
// the fused gradient written over the logits (its row kept in shared memory or reread), its
// rescaling, an all-ignored batch, a target out of range (NaN loss), determinism, and the
// cross_entropy and cross_entropy_fused ops on CUDA.
#include <fathom/autograd/ops/gemm.hpp>
#include <fathom/autograd/ops/softmax.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/softmax.cuh>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
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

struct SoftmaxCase {
  std::int64_t rows, cols, offset;
};
std::ostream& operator<<(std::ostream& os, const SoftmaxCase& c) {
  return os << "rows " << c.rows << " cols " << c.cols << " offset " << c.offset;
}

// Targets in [0, V), about one row in five ignored (never row 0).
std::vector<std::int32_t> random_targets(std::int64_t rows, std::int64_t vocab, int ignore_index,
                                         std::uint64_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(rows));
  for (std::size_t r = 0; r < t.size(); ++r) {
    t[r] = static_cast<std::int32_t>(fathom::rng::uniform(seed, 2 * r + 1) *
                                     static_cast<double>(vocab));
    if (r > 0 && fathom::rng::uniform(seed, 2 * r) < 0.2) t[r] = ignore_index;
  }
  return t;
}

struct CrossEntropyResult {
  double loss = 0;
  std::int32_t valid = 0;
  std::vector<double> lse, grad, fused;
  double in_place_loss = 0;
  std::vector<double> in_place;   // the fused gradient written over the logits themselves
  std::vector<double> reread;     // CUDA: the fused gradient with the row reread, not kept shared
  std::uint64_t shared_runs = 0;  // CUDA: fused forwards that kept the row in shared memory
};

// Forward (plain, then with the fused gradient) and backward, on the CPU in double or on CUDA in T.
// The gradient is written over garbage (accumulate = false), scaled by dloss.
template <class T, class D>
CrossEntropyResult run_cross_entropy(const SoftmaxCase& c, const std::vector<double>& logits,
                                     const std::vector<std::int32_t>& targets, int ignore_index,
                                     double dloss) {
  using A = accum_t<T>;
  CrossEntropyResult r;
  const auto n = static_cast<std::size_t>(c.rows * c.cols);
  fathom::kernels::CrossEntropyParams<T> p;
  p.rows = c.rows;
  p.vocab = c.cols;
  p.ignore_index = ignore_index;
  fathom::kernels::CrossEntropyBackwardParams<T> b;
  b.rows = c.rows;
  b.vocab = c.cols;
  b.ignore_index = ignore_index;
  b.accumulate = false;
  if constexpr (std::is_same_v<D, Cpu>) {
    std::vector<double> lse(static_cast<std::size_t>(c.rows)), grad(n, 1e30), fused(n, 1e30);
    double loss = 0;
    std::int32_t valid = 0;
    p.logits = b.logits = logits.data();
    p.targets = b.targets = targets.data();
    p.loss = &loss;
    p.lse = lse.data();
    p.valid_rows = &valid;
    fathom::kernels::cross_entropy(Cpu{}, p);
    b.lse = lse.data();
    b.valid_rows = &valid;
    b.dloss = &dloss;
    b.dlogits = grad.data();
    fathom::kernels::cross_entropy_backward(Cpu{}, b);
    p.dlogits = fused.data();
    p.grad_scale = dloss;
    fathom::kernels::cross_entropy(Cpu{}, p);
    r.loss = loss;
    r.valid = valid;
    r.lse = lse;
    r.grad = grad;
    r.fused = fused;
    std::vector<double> in_place = logits;
    p.logits = p.dlogits = in_place.data();
    p.loss = &r.in_place_loss;
    fathom::kernels::cross_entropy(Cpu{}, p);
    r.in_place = in_place;
  } else {
    DeviceArray<T> x(logits, c.offset), grad(std::vector<double>(n, 1e30), c.offset),
        fused(std::vector<double>(n, 1e30), c.offset);
    auto t = Tensor<std::int32_t, Cuda>::from_vector(Shape{c.rows}, targets);
    auto loss = Tensor<A, Cuda>::zeros(Shape{}), lse = Tensor<A, Cuda>::zeros(Shape{c.rows});
    auto valid = Tensor<std::int32_t, Cuda>::zeros(Shape{});
    auto dl = Tensor<A, Cuda>::from_vector(Shape{}, {static_cast<A>(dloss)});
    p.logits = b.logits = x.data();
    p.targets = b.targets = t.data();
    p.loss = loss.data();
    p.lse = lse.data();
    p.valid_rows = valid.data();
    fathom::kernels::cross_entropy(Cuda{}, p);
    b.lse = lse.data();
    b.valid_rows = valid.data();
    b.dloss = dl.data();
    b.dlogits = grad.data();
    fathom::kernels::cross_entropy_backward(Cuda{}, b);
    const double first_loss = static_cast<double>(loss.item());
    p.dlogits = fused.data();
    p.grad_scale = dloss;
    fathom::kernels::cross_entropy(Cuda{}, p);
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
    // The fused pass computes the same loss (NaN, too, when a logit is).
    const double fused_loss = static_cast<double>(loss.item());
    CHECK((fused_loss == first_loss || (std::isnan(fused_loss) && std::isnan(first_loss))));
    r.loss = first_loss;
    r.valid = valid.item();
    r.lse = to_double(lse.to_vector());
    r.grad = to_double(grad.values());
    r.fused = to_double(fused.values());
    const auto shared_before = fathom::kernels::detail::cross_entropy_shared_row_runs();
    DeviceArray<T> in_place(logits, c.offset);
    p.logits = p.dlogits = in_place.data();
    fathom::kernels::cross_entropy(Cuda{}, p);
    r.in_place_loss = static_cast<double>(loss.item());
    r.in_place = to_double(in_place.values());
    r.shared_runs = fathom::kernels::detail::cross_entropy_shared_row_runs() - shared_before;
    DeviceArray<T> reread(std::vector<double>(n, 1e30), c.offset);
    p.logits = x.data();
    p.dlogits = reread.data();
    fathom::kernels::set_cross_entropy_shared_row(false);
    fathom::kernels::cross_entropy(Cuda{}, p);
    fathom::kernels::set_cross_entropy_shared_row(true);
    r.reread = to_double(reread.values());
  }
  return r;
}

const SoftmaxCase ce_cases[] = {{1, 2, 0},       {5, 7, 0},      {17, 32000, 0},
                                {600, 32000, 0}, {64, 50257, 0}, {130, 50304, 0},
                                {33, 50304, 1},  {9, 4099, 3},   {1000, 512, 0}};

}  // namespace

TEMPLATE_TEST_CASE("CUDA softmax forward and backward match the CPU reference",
                   "[cuda][kernels][softmax]", float, bf16) {
  using T = TestType;
  const SoftmaxCase c =
      GENERATE(SoftmaxCase{1, 1, 0}, SoftmaxCase{7, 1000, 0}, SoftmaxCase{33, 4097, 0},
               SoftmaxCase{64, 32000, 0}, SoftmaxCase{300, 64, 0}, SoftmaxCase{5, 1024, 1},
               SoftmaxCase{12, 50257, 0});
  CAPTURE(c, Precision<T>::name);
  const auto n = static_cast<std::size_t>(c.rows * c.cols);
  const auto x = bf16_values(n, 11, 3.0, 40.0), dy = bf16_values(n, 12), dx0 = bf16_values(n, 13);
  std::vector<double> y_want(n), dx_want(n), dx_acc_want = dx0;
  fathom::kernels::softmax(
      Cpu{}, fathom::kernels::SoftmaxParams<double>{x.data(), y_want.data(), c.rows, c.cols});

  DeviceArray<T> xd(x, c.offset), yd(std::vector<double>(n, 7.0), c.offset), dyd(dy, c.offset),
      dxd(std::vector<double>(n, 1e30), c.offset), dx_acc(dx0, c.offset);
  fathom::kernels::softmax(Cuda{},
                           fathom::kernels::SoftmaxParams<T>{xd.data(), yd.data(), c.rows, c.cols});
  const auto y_got = to_double(yd.values());
  // The backward takes the GPU's y (rounded to T) on both sides, so only the backward is compared.
  fathom::kernels::softmax_backward(
      Cpu{}, fathom::kernels::SoftmaxBackwardParams<double>{y_got.data(), dy.data(), dx_want.data(),
                                                            c.rows, c.cols, false});
  fathom::kernels::softmax_backward(
      Cpu{}, fathom::kernels::SoftmaxBackwardParams<double>{
                 y_got.data(), dy.data(), dx_acc_want.data(), c.rows, c.cols, true});
  fathom::kernels::softmax_backward(
      Cuda{}, fathom::kernels::SoftmaxBackwardParams<T>{yd.data(), dyd.data(), dxd.data(), c.rows,
                                                        c.cols, false});
  fathom::kernels::softmax_backward(
      Cuda{}, fathom::kernels::SoftmaxBackwardParams<T>{yd.data(), dyd.data(), dx_acc.data(),
                                                        c.rows, c.cols, true});
  // Probabilities are small (about 1/C): compare relatively, with an absolute floor far below 1/C.
  // dx = y * (dy - sum(dy * y)) may cancel: its floor is proportional to y (the fp32 error of the
  // difference, carried by y).
  const double rtol = Precision<T>::rtol,
               floor = 1e-4 * Precision<T>::atol / static_cast<double>(c.cols);
  CHECK(first_mismatch("y", y_got, y_want, rtol, floor, c.cols) == "");
  CHECK(first_mismatch("dx", to_double(dxd.values()), dx_want, rtol, 1e-5, c.cols, &y_got) == "");
  CHECK(first_mismatch("dx (accumulated)", to_double(dx_acc.values()), dx_acc_want, rtol,
                       Precision<T>::atol, c.cols) == "");
}

TEMPLATE_TEST_CASE(
    "CUDA cross_entropy matches the CPU reference: loss, logsumexp, gradient, fused gradient",
    "[cuda][kernels][softmax]", float, bf16) {
  using T = TestType;
  const SoftmaxCase c = GENERATE(from_range(std::begin(ce_cases), std::end(ce_cases)));
  const int ignore_index = GENERATE(-100, 0);
  CAPTURE(c, ignore_index, Precision<T>::name);
  const auto logits = bf16_values(static_cast<std::size_t>(c.rows * c.cols),
                                  21 + static_cast<std::uint64_t>(c.cols), 2.5, 10.0);
  const auto targets = random_targets(c.rows, c.cols, ignore_index, 22);
  const double dloss = 0.37;
  const auto want = run_cross_entropy<double, Cpu>(c, logits, targets, ignore_index, dloss);
  const auto got = run_cross_entropy<T, Cuda>(c, logits, targets, ignore_index, dloss);
  // The loss, logsumexp and gradient are computed in fp32 from the same (bf16-exact) logits.
  using A = accum_t<T>;
  CHECK(got.valid == want.valid);
  CHECK_THAT(got.loss,
             WithinAbs(want.loss, Precision<A>::atol + Precision<A>::rtol * std::abs(want.loss)));
  CHECK(first_mismatch("lse", got.lse, want.lse, Precision<A>::rtol, Precision<A>::atol, 1) == "");
  // Gradient elements are p * dloss / valid (mostly tiny): compare relatively, with a floor far
  // below the scale of the largest element.
  const double floor = 1e-6 * dloss / std::max(want.valid, 1);
  CHECK(first_mismatch("dlogits", got.grad, want.grad, Precision<T>::rtol, floor, c.cols) == "");
  CHECK(first_mismatch("fused dlogits", got.fused, want.fused, Precision<T>::rtol, floor, c.cols) ==
        "");
  // Written over the logits (the row read whole before it is overwritten): the same loss and the
  // same gradient, bit for bit.
  CHECK(got.in_place_loss == got.loss);
  CHECK(got.in_place == got.fused);
  CHECK(want.in_place == want.fused);
  // Rows of whole 16-byte packs on an aligned base that fit are kept in shared memory between the
  // two passes; the gradient is the same bits as the kernel that rereads the row.
  // (The limit: 110 KiB, or less on a device that lets a block have less.)
  const bool shared = c.offset == 0 && c.cols % fathom::kernels::detail::map_width<T>() == 0 &&
                      c.cols * static_cast<std::int64_t>(sizeof(T)) <=
                          fathom::kernels::detail::cross_entropy_shared_row_limit();
  CHECK(got.shared_runs == (shared ? 1u : 0u));
  CHECK(got.reread == got.fused);
}

TEMPLATE_TEST_CASE("CUDA cross_entropy_rescale matches the CPU reference",
                   "[cuda][kernels][softmax]", float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  const std::int64_t n = GENERATE(1, 7, 4099, 1 << 20);
  const std::int64_t offset = GENERATE(0, 3);
  const bool accumulate = GENERATE(false, true);
  CAPTURE(n, offset, accumulate, Precision<T>::name);
  const auto g = bf16_values(static_cast<std::size_t>(n), 71, 1e-3);
  const auto d0 = bf16_values(static_cast<std::size_t>(n), 72, 1e-3);
  const A seed = static_cast<A>(0.5);
  for (const double dloss : {0.5, 0.125}) {
    CAPTURE(dloss);
    std::vector<double> want = d0;
    const double dloss_d = dloss, seed_d = 0.5;
    fathom::kernels::CrossEntropyRescaleParams<double> rc;
    rc.g = g.data();
    rc.dst = want.data();
    rc.dloss = &dloss_d;
    rc.seed = seed_d;
    rc.n = n;
    rc.accumulate = accumulate;
    fathom::kernels::cross_entropy_rescale(Cpu{}, rc);
    DeviceArray<T> gd(g, offset), dst(d0, offset);
    auto dl = Tensor<A, Cuda>::from_vector(Shape{}, {static_cast<A>(dloss)});
    fathom::kernels::CrossEntropyRescaleParams<T> r;
    r.g = gd.data();
    r.dst = dst.data();
    r.dloss = dl.data();
    r.seed = seed;
    r.n = n;
    r.accumulate = accumulate;
    fathom::kernels::cross_entropy_rescale(Cuda{}, r);
    CHECK(first_mismatch("rescaled", to_double(dst.values()), want, Precision<T>::rtol,
                         Precision<T>::atol * 1e-3, 1) == "");
    // In place: unchanged at the seed, scaled otherwise.
    DeviceArray<T> x(g, offset);
    r.g = r.dst = x.data();
    r.accumulate = false;
    fathom::kernels::cross_entropy_rescale(Cuda{}, r);
    std::vector<double> scaled(g.size());
    for (std::size_t i = 0; i < g.size(); ++i)
      scaled[i] = g[i] * dloss / seed_d;  // g is exact in T
    CHECK(first_mismatch("in place", to_double(x.values()), scaled, Precision<T>::rtol,
                         Precision<T>::atol * 1e-3, 1) == "");
  }
}

TEMPLATE_TEST_CASE("CUDA cross_entropy: all rows ignored gives loss 0 and a zero gradient",
                   "[cuda][kernels][softmax]", float, bf16) {
  using T = TestType;
  const SoftmaxCase c{6, 50257, 0};
  const auto logits = bf16_values(static_cast<std::size_t>(c.rows * c.cols), 31, 2.0);
  const std::vector<std::int32_t> targets(6, -100);
  const auto got = run_cross_entropy<T, Cuda>(c, logits, targets, -100, 1.0);
  CHECK(got.loss == 0.0);
  CHECK(got.valid == 0);
  std::size_t nonzero = 0;
  for (double v : got.grad) nonzero += v != 0.0;
  for (double v : got.fused) nonzero += v != 0.0;
  CHECK(nonzero == 0);
}

TEST_CASE("CUDA cross_entropy: a target out of range makes the loss NaN",
          "[cuda][kernels][softmax]") {
  const SoftmaxCase c{3, 100, 0};
  const auto logits = bf16_values(300, 41);
  const std::vector<std::int32_t> targets{5, 100, 7};
  auto x = Tensor<float, Cuda>::from_vector(Shape{3, 100},
                                            std::vector<float>(logits.begin(), logits.end()));
  auto t = Tensor<std::int32_t, Cuda>::from_vector(Shape{3}, targets);
  auto loss = Tensor<float, Cuda>::zeros(Shape{});
  fathom::kernels::CrossEntropyParams<float> p;
  p.logits = x.data();
  p.targets = t.data();
  p.loss = loss.data();
  p.rows = c.rows;
  p.vocab = c.cols;
  fathom::kernels::cross_entropy(Cuda{}, p);  // valid_rows and lse not requested: scratch is used
  CHECK(std::isnan(loss.item()));
}

TEMPLATE_TEST_CASE("CUDA cross_entropy and softmax: a NaN logit makes its row NaN, as on the CPU",
                   "[cuda][kernels][softmax]", float, bf16) {
  using T = TestType;
  // One NaN where a thread's first value lies (column 0, column 8), a whole pack of NaNs, a NaN
  // among -inf, the last column; row 3 has none. The row statistics take a pack's maximum before
  // its sum: a NaN there must still reach the sum (and the log-sum-exp), not be passed over.
  const SoftmaxCase c{6, 32000, 0};
  auto logits = bf16_values(static_cast<std::size_t>(c.rows * c.cols), 61, 2.0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto at = [&](std::int64_t row, std::int64_t col) -> double& {
    return logits[static_cast<std::size_t>(row * c.cols + col)];
  };
  at(0, 0) = nan;
  at(1, 8) = nan;
  for (int j = 0; j < 8; ++j) at(2, j) = nan;
  for (std::int64_t col = 0; col < c.cols; ++col)
    at(4, col) = -std::numeric_limits<double>::infinity();
  at(4, 16) = nan;
  at(5, c.cols - 1) = nan;
  const std::vector<std::int32_t> targets{3, 3, 3, 3, 3, 3};
  const auto cpu = run_cross_entropy<double, Cpu>(c, logits, targets, -100, 1.0);
  const auto gpu = run_cross_entropy<T, Cuda>(c, logits, targets, -100, 1.0);
  for (std::int64_t row = 0; row < c.rows; ++row) {
    INFO("row " << row);
    const bool poisoned = row != 3;
    const auto r = static_cast<std::size_t>(row);
    CHECK(std::isnan(cpu.lse[r]) == poisoned);
    CHECK(std::isnan(gpu.lse[r]) == poisoned);
    std::size_t nan_fused = 0, nan_in_place = 0, nan_reread = 0;
    for (std::int64_t col = 0; col < c.cols; ++col) {
      const auto i = static_cast<std::size_t>(row * c.cols + col);
      nan_fused += std::isnan(gpu.fused[i]);
      nan_in_place += std::isnan(gpu.in_place[i]);
      nan_reread += std::isnan(gpu.reread[i]);
    }
    const std::size_t want = poisoned ? static_cast<std::size_t>(c.cols) : 0;
    CHECK(nan_fused == want);
    CHECK(nan_in_place == want);
    CHECK(nan_reread == want);
  }
  CHECK(std::isnan(cpu.loss));
  CHECK(std::isnan(gpu.loss));

  DeviceArray<T> x(logits, 0), y(std::vector<double>(logits.size(), 0.0), 0);
  fathom::kernels::SoftmaxParams<T> sp;
  sp.x = x.data();
  sp.y = y.data();
  sp.rows = c.rows;
  sp.cols = c.cols;
  fathom::kernels::softmax(Cuda{}, sp);
  const auto probs = to_double(y.values());
  for (std::int64_t row = 0; row < c.rows; ++row) {
    INFO("softmax row " << row);
    std::size_t nans = 0;
    for (std::int64_t col = 0; col < c.cols; ++col)
      nans += std::isnan(probs[static_cast<std::size_t>(row * c.cols + col)]);
    CHECK(nans == (row != 3 ? static_cast<std::size_t>(c.cols) : 0));
  }
}

TEST_CASE("CUDA cross_entropy loss and gradient are the same run to run",
          "[cuda][kernels][softmax]") {
  const SoftmaxCase c{512, 32000, 0};
  const auto logits = bf16_values(static_cast<std::size_t>(c.rows * c.cols), 51, 2.0);
  const auto targets = random_targets(c.rows, c.cols, -100, 52);
  const auto a = run_cross_entropy<bf16, Cuda>(c, logits, targets, -100, 1.0);
  const auto b = run_cross_entropy<bf16, Cuda>(c, logits, targets, -100, 1.0);
  CHECK(a.loss == b.loss);
  CHECK(a.grad == b.grad);
}

TEMPLATE_TEST_CASE(
    "CUDA cross_entropy op matches the CPU op and accumulates over two backward passes",
    "[cuda][autograd][softmax]", float, bf16) {
  using T = TestType;
  namespace ag = fathom::autograd;
  const std::int64_t B = 4, S = 33, V = 50257;
  const auto logits = bf16_values(static_cast<std::size_t>(B * S * V), 61, 2.0);
  const auto targets = random_targets(B * S, V, -100, 62);
  std::vector<T> lt(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) lt[i] = scalar_cast<T>(logits[i]);
  auto run = [&](auto device) {
    using D = decltype(device);
    fathom::Var<T, D> x(Tensor<T, Cpu>::from_vector(Shape{B, S, V}, lt).template to<D>(), true);
    auto t = Tensor<std::int32_t, Cpu>::from_vector(Shape{B, S}, targets).template to<D>();
    auto loss = ag::cross_entropy(x, t);
    const double value = static_cast<double>(loss.value().item());
    ag::backward(loss);
    auto once = to_double(x.grad().to_vector());
    ag::backward(ag::cross_entropy(x, t));  // adds to the existing gradient
    return std::make_tuple(value, once, to_double(x.grad().to_vector()));
  };
  const auto [cpu_loss, cpu_once, cpu_twice] = run(Cpu{});
  const auto [gpu_loss, gpu_once, gpu_twice] = run(Cuda{});
  CHECK_THAT(gpu_loss, WithinRel(cpu_loss, 1e-4));
  const double floor = 1e-6 / static_cast<double>(B * S);
  CHECK(first_mismatch("grad", gpu_once, cpu_once, 2 * Precision<T>::rtol, floor, V) == "");
  CHECK(first_mismatch("grad twice", gpu_twice, cpu_twice, 2 * Precision<T>::rtol, floor, V) == "");
}

TEMPLATE_TEST_CASE(
    "CUDA cross_entropy_fused: cross_entropy's loss and gradient, bit for bit, over the logits",
    "[cuda][autograd][softmax]", float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  namespace ag = fathom::autograd;
  const std::int64_t N = 2 * 65, V = 32000;
  const auto values = bf16_values(static_cast<std::size_t>(N * 96), 81, 1.0);
  const auto w = bf16_values(static_cast<std::size_t>(96 * V), 82, 0.3);
  const auto targets = random_targets(N, V, -100, 83);
  auto t = Tensor<std::int32_t, Cpu>::from_vector(Shape{N}, targets).to<Cuda>();
  auto device = [](const std::vector<double>& v, Shape s) {
    std::vector<T> h(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) h[i] = scalar_cast<T>(v[i]);
    return Tensor<T, Cpu>::from_vector(s, h).template to<Cuda>();
  };
  // logits = h W (an op, so they are an intermediate the loss can consume); the gradients of h
  // and W are what is compared.
  auto run = [&](bool fused, double seed) {
    ag::clear_tape();
    fathom::Var<T, Cuda> h(device(values, Shape{N, 96}), true), wv(device(w, Shape{96, V}), true);
    auto logits = ag::matmul(h, wv);
    auto loss =
        fused ? ag::cross_entropy_fused(std::move(logits), t, 0.5) : ag::cross_entropy(logits, t);
    logits = fathom::Var<T, Cuda>();
    const double value = static_cast<double>(loss.value().item());
    ag::backward(loss, Tensor<A, Cuda>::full(Shape{}, static_cast<A>(seed)));
    return std::make_tuple(value, h.grad().to_vector(), wv.grad().to_vector());
  };
  const auto runs_before = ag::detail::fused_cross_entropy_runs();
  const auto [plain_loss, plain_h, plain_w] = run(false, 0.5);
  const auto [fused_loss, fused_h, fused_w] = run(true, 0.5);
  CHECK(ag::detail::fused_cross_entropy_runs() == runs_before + 1);
  CHECK(fused_loss == plain_loss);
  CHECK(fused_h == plain_h);
  CHECK(fused_w == plain_w);
  // A backward seeded with another d loss than the forward assumed: rescaled, not wrong.
  const auto [loss2, h2, w2] = run(true, 0.125);
  const auto [plain2_loss, plain2_h, plain2_w] = run(false, 0.125);
  CHECK(loss2 == plain2_loss);
  CHECK(first_mismatch("dh", to_double(h2), to_double(plain2_h), 2 * Precision<T>::rtol, 1e-7,
                       96) == "");
  CHECK(first_mismatch("dW", to_double(w2), to_double(plain2_w), 2 * Precision<T>::rtol, 1e-7, V) ==
        "");
}
