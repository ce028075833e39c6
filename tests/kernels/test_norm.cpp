// Tests for the CPU norm kernels (include/fathom/kernels/norm.hpp): RMSNorm and LayerNorm forward
// against the formula in double, backward against the explicit Jacobian, with output scales,
// accumulation into existing gradients, and the saved statistics.
#include <fathom/kernels/norm.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/support.hpp"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Precision;
using fathom::scalar_cast;

using namespace fathom::test;

namespace {

// The formulas in double, straight from the definitions. For backward, dx_j = sum_i dy_i dy_i/dx_j
// with the Jacobian written out element by element (O(C^2), independent of the kernels' algebra).
struct NormReference {
  std::vector<double> y, mean, rstd, dx, dw, db;
};

NormReference reference_norm(bool layer, const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>* b, const std::vector<double>& dy,
                             std::int64_t rows, std::int64_t cols, double eps, double s) {
  NormReference r;
  const auto C = static_cast<std::size_t>(cols);
  r.y.assign(x.size(), 0.0);
  r.dx.assign(x.size(), 0.0);
  r.dw.assign(C, 0.0);
  r.db.assign(C, 0.0);
  for (std::size_t row = 0; row < static_cast<std::size_t>(rows); ++row) {
    const double* xr = x.data() + row * C;
    double mu = 0.0;
    if (layer) {
      for (std::size_t c = 0; c < C; ++c) mu += xr[c];
      mu /= static_cast<double>(C);
    }
    double var = 0.0;
    for (std::size_t c = 0; c < C; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= static_cast<double>(C);
    const double rs = 1.0 / std::sqrt(var + eps);
    r.mean.push_back(mu);
    r.rstd.push_back(rs);
    std::vector<double> xhat(C);
    for (std::size_t c = 0; c < C; ++c) xhat[c] = (xr[c] - mu) * rs;
    for (std::size_t c = 0; c < C; ++c)
      r.y[row * C + c] = (w[c] * xhat[c] + (b ? (*b)[c] : 0.0)) * s;
    for (std::size_t j = 0; j < C; ++j) {
      double sum = 0.0;
      for (std::size_t i = 0; i < C; ++i) {
        // d xhat_i / d x_j; for RMSNorm mu = 0 and the 1/C term is absent.
        double dxhat = rs * ((i == j ? 1.0 : 0.0) - (layer ? 1.0 / static_cast<double>(C) : 0.0)) -
                       xhat[i] * xhat[j] * rs / static_cast<double>(C);
        sum += dy[row * C + i] * s * w[i] * dxhat;
      }
      r.dx[row * C + j] = sum;
      r.dw[j] += dy[row * C + j] * xhat[j] * s;
      r.db[j] += dy[row * C + j] * s;
    }
  }
  return r;
}

}  // namespace

TEMPLATE_TEST_CASE("rms_norm forward matches the formula, with an output scale", "[kernels][norm]",
                   double, float, bf16) {
  using T = TestType;
  using A = fathom::accum_t<T>;
  const std::int64_t rows = GENERATE(1, 3, 8);
  const std::int64_t cols = GENERATE(1, 2, 7, 64, 129);
  const double scale = GENERATE(1.0, 0.5773502691896258);  // LNS at l = 3
  const double eps = 1e-6;
  CAPTURE(rows, cols, scale, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols);
  auto x = normal_values<T>(n, 11, 1.5, 0.3);
  auto w = normal_values<T>(static_cast<std::size_t>(cols), 12, 0.3, 1.0);
  std::vector<T> y(n);
  std::vector<A> rstd(static_cast<std::size_t>(rows));
  fathom::kernels::rms_norm(
      Cpu{}, fathom::kernels::RmsNormParams<T>{x.data(), w.data(), y.data(), rstd.data(), rows,
                                               cols, eps, scale});
  std::vector<double> dy(n, 0.0);
  auto ref = reference_norm(false, to_double(x), to_double(w), nullptr, dy, rows, cols, eps, scale);
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("y", to_double(y), ref.y, rtol, atol, cols) == "");
  CHECK(first_mismatch("rstd", to_double(rstd), ref.rstd, rtol, atol, 1) == "");
}

TEMPLATE_TEST_CASE("rms_norm backward matches the Jacobian and accumulates", "[kernels][norm]",
                   double, float, bf16) {
  using T = TestType;
  using A = fathom::accum_t<T>;
  const std::int64_t rows = GENERATE(1, 4);
  const std::int64_t cols = GENERATE(1, 3, 33, 128);
  const double scale = GENERATE(1.0, 0.35);
  const bool accumulate_dx = GENERATE(true, false);
  const double eps = 1e-6;
  CAPTURE(rows, cols, scale, accumulate_dx, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols), C = static_cast<std::size_t>(cols);
  auto x = normal_values<T>(n, 21, 1.2, -0.2);
  auto w = normal_values<T>(C, 22, 0.4, 1.0);
  auto dy = normal_values<T>(n, 23);
  std::vector<T> y(n);
  std::vector<A> rstd(static_cast<std::size_t>(rows));
  fathom::kernels::rms_norm(
      Cpu{}, fathom::kernels::RmsNormParams<T>{x.data(), w.data(), y.data(), rstd.data(), rows,
                                               cols, eps, scale});
  const auto dx0 = normal_values<T>(n, 24), dw0 = normal_values<T>(C, 25);
  auto dx = dx0, dw = dw0;
  fathom::kernels::rms_norm_backward(
      Cpu{}, fathom::kernels::RmsNormBackwardParams<T>{dy.data(), x.data(), w.data(), rstd.data(),
                                                       dx.data(), dw.data(), rows, cols, scale,
                                                       accumulate_dx});
  auto ref = reference_norm(false, to_double(x), to_double(w), nullptr, to_double(dy), rows, cols,
                            eps, scale);
  for (std::size_t i = 0; i < n; ++i)
    ref.dx[i] += accumulate_dx ? scalar_cast<double>(dx0[i]) : 0.0;
  for (std::size_t c = 0; c < C; ++c)
    ref.dw[c] += scalar_cast<double>(dw0[c]);  // dw always accumulates
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("dx", to_double(dx), ref.dx, rtol, atol, cols) == "");
  CHECK(first_mismatch("dw", to_double(dw), ref.dw, rtol, atol, cols) == "");
}

TEST_CASE("rms_norm backward computes only the gradients asked for", "[kernels][norm]") {
  const std::int64_t rows = 3, cols = 5;
  auto x = normal_values<double>(15, 31), w = normal_values<double>(5, 32, 0.2, 1.0),
       dy = normal_values<double>(15, 33);
  std::vector<double> y(15), rstd(3);
  fathom::kernels::rms_norm(
      Cpu{}, fathom::kernels::RmsNormParams<double>{x.data(), w.data(), y.data(), rstd.data(), rows,
                                                    cols, 1e-6, 2.0});
  auto ref = reference_norm(false, x, w, nullptr, dy, rows, cols, 1e-6, 2.0);
  std::vector<double> dx(15, 0.0), dw(5, 0.0);
  fathom::kernels::rms_norm_backward(Cpu{}, fathom::kernels::RmsNormBackwardParams<double>{
                                                dy.data(), x.data(), w.data(), rstd.data(), nullptr,
                                                dw.data(), rows, cols, 2.0, true});
  CHECK(first_mismatch("dw", dw, ref.dw, 1e-12, 1e-12, cols) == "");
  fathom::kernels::rms_norm_backward(Cpu{}, fathom::kernels::RmsNormBackwardParams<double>{
                                                dy.data(), x.data(), w.data(), rstd.data(),
                                                dx.data(), nullptr, rows, cols, 2.0, true});
  CHECK(first_mismatch("dx", dx, ref.dx, 1e-12, 1e-12, cols) == "");
}

TEMPLATE_TEST_CASE("layer_norm forward matches the formula, with and without bias",
                   "[kernels][norm]", double, float, bf16) {
  using T = TestType;
  using A = fathom::accum_t<T>;
  const std::int64_t rows = GENERATE(1, 3, 8);
  const std::int64_t cols = GENERATE(1, 2, 7, 64, 129);
  const double scale = GENERATE(1.0, 0.7071067811865476);
  const bool with_bias = GENERATE(true, false);
  const double eps = 1e-5;
  CAPTURE(rows, cols, scale, with_bias, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols), C = static_cast<std::size_t>(cols);
  auto x = normal_values<T>(n, 41, 2.0, 3.0);  // a mean far from 0: LayerNorm must remove it
  auto w = normal_values<T>(C, 42, 0.3, 1.0);
  auto b = normal_values<T>(C, 43, 0.5);
  std::vector<T> y(n);
  std::vector<A> mean(static_cast<std::size_t>(rows)), rstd(static_cast<std::size_t>(rows));
  fathom::kernels::layer_norm(
      Cpu{}, fathom::kernels::LayerNormParams<T>{x.data(), w.data(), with_bias ? b.data() : nullptr,
                                                 y.data(), mean.data(), rstd.data(), rows, cols,
                                                 eps, scale});
  const auto bd = to_double(b);
  auto ref = reference_norm(true, to_double(x), to_double(w), with_bias ? &bd : nullptr,
                            std::vector<double>(n, 0.0), rows, cols, eps, scale);
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("y", to_double(y), ref.y, rtol, atol, cols) == "");
  CHECK(first_mismatch("mean", to_double(mean), ref.mean, rtol, atol, 1) == "");
  // rstd of a one-element row is 1/sqrt(eps) (~316): compare relatively.
  CHECK(first_mismatch("rstd", to_double(rstd), ref.rstd, rtol, atol, 1) == "");
}

TEMPLATE_TEST_CASE("layer_norm backward matches the Jacobian and accumulates", "[kernels][norm]",
                   double, float, bf16) {
  using T = TestType;
  using A = fathom::accum_t<T>;
  const std::int64_t rows = GENERATE(1, 4);
  const std::int64_t cols = GENERATE(2, 3, 33, 128);
  const double scale = GENERATE(1.0, 0.35);
  const bool accumulate_dx = GENERATE(true, false);
  const double eps = 1e-5;
  CAPTURE(rows, cols, scale, accumulate_dx, Precision<T>::name);
  const auto n = static_cast<std::size_t>(rows * cols), C = static_cast<std::size_t>(cols);
  auto x = normal_values<T>(n, 51, 1.3, 0.4);
  auto w = normal_values<T>(C, 52, 0.4, 1.0);
  auto b = normal_values<T>(C, 53, 0.5);
  auto dy = normal_values<T>(n, 54);
  std::vector<T> y(n);
  std::vector<A> mean(static_cast<std::size_t>(rows)), rstd(static_cast<std::size_t>(rows));
  fathom::kernels::layer_norm(
      Cpu{}, fathom::kernels::LayerNormParams<T>{x.data(), w.data(), b.data(), y.data(),
                                                 mean.data(), rstd.data(), rows, cols, eps, scale});
  const auto dx0 = normal_values<T>(n, 55), dw0 = normal_values<T>(C, 56),
             db0 = normal_values<T>(C, 57);
  auto dx = dx0, dw = dw0, db = db0;
  fathom::kernels::layer_norm_backward(
      Cpu{}, fathom::kernels::LayerNormBackwardParams<T>{
                 dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                 db.data(), rows, cols, scale, accumulate_dx});
  const auto bd = to_double(b);
  auto ref =
      reference_norm(true, to_double(x), to_double(w), &bd, to_double(dy), rows, cols, eps, scale);
  for (std::size_t i = 0; i < n; ++i)
    ref.dx[i] += accumulate_dx ? scalar_cast<double>(dx0[i]) : 0.0;
  for (std::size_t c = 0; c < C; ++c) {
    ref.dw[c] += scalar_cast<double>(dw0[c]);
    ref.db[c] += scalar_cast<double>(db0[c]);
  }
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("dx", to_double(dx), ref.dx, rtol, atol, cols) == "");
  CHECK(first_mismatch("dw", to_double(dw), ref.dw, rtol, atol, cols) == "");
  CHECK(first_mismatch("db", to_double(db), ref.db, rtol, atol, cols) == "");
}

TEST_CASE("norm output scale multiplies the output exactly as a separate scaling would",
          "[kernels][norm]") {
  // LNS folds 1/sqrt(l) into the norm: rms_norm(x, s) must equal s * rms_norm(x, 1).
  const std::int64_t rows = 5, cols = 24;
  auto x = normal_values<double>(120, 61, 1.0, 0.5), w = normal_values<double>(24, 62, 0.3, 1.0);
  std::vector<double> y1(120), ys(120), rstd(5);
  const double s = 1.0 / std::sqrt(7.0);
  fathom::kernels::rms_norm(
      Cpu{}, fathom::kernels::RmsNormParams<double>{x.data(), w.data(), y1.data(), nullptr, rows,
                                                    cols, 1e-6, 1.0});
  fathom::kernels::rms_norm(
      Cpu{}, fathom::kernels::RmsNormParams<double>{x.data(), w.data(), ys.data(), rstd.data(),
                                                    rows, cols, 1e-6, s});
  for (auto& v : y1) v *= s;
  CHECK(first_mismatch("y", ys, y1, 1e-14, 1e-15, cols) == "");
}
