// [cuda] tests for the CUDA element-wise kernels (include/fathom/kernels/cuda/elementwise.cuh):
// axpby, axpy, scale, mul, mul_backward and axpy_2d against the CPU reference on the same inputs,
// in fp64, fp32 and bf16, at awkward lengths and on pointers off the 16-byte grid; and the
// differentiable element-wise ops on Var<T, Cuda> against the same ops on the CPU.
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/elementwise.cuh>
#include <fathom/kernels/cuda/reduce.cuh>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <fathom/core/rng.hpp>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Precision;
using fathom::scalar_cast;
using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace kernels = fathom::kernels;
namespace ag = fathom::autograd;

using namespace fathom::test;

TEMPLATE_TEST_CASE("CUDA axpby, axpy, scale and mul match the CPU", "[cuda][elementwise]", double,
                   float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 8, 4099, 16383, 50257, (1 << 20) + 3);
  const std::int64_t offset = GENERATE(0, 1);
  INFO(Precision<T>::name << " n " << n << " offset " << offset);
  const auto a = normal_values<T>(n, 1), b = normal_values<T>(n, 2);
  DeviceArray<T> da(a, offset), db(b, offset);

  SECTION("axpby") {
    std::vector<T> want(a.size());
    kernels::axpby(Cpu{}, kernels::AxpbyParams<T>{a.data(), b.data(), want.data(), n, 0.7, -1.3});
    DeviceArray<T> dy(std::vector<T>(a.size()), offset);
    kernels::axpby(Cuda{}, kernels::AxpbyParams<T>{da.data(), db.data(), dy.data(), n, 0.7, -1.3});
    CHECK(first_mismatch(dy.values(), want) == "");
    // in place, y aliasing a
    kernels::axpby(Cuda{}, kernels::AxpbyParams<T>{da.data(), db.data(), da.data(), n, 0.7, -1.3});
    CHECK(first_mismatch(da.values(), want) == "");
  }
  SECTION("axpy") {
    auto want = b;
    kernels::axpy(Cpu{}, kernels::AxpyParams<T>{a.data(), want.data(), n, -2.5});
    kernels::axpy(Cuda{}, kernels::AxpyParams<T>{da.data(), db.data(), n, -2.5});
    CHECK(first_mismatch(db.values(), want) == "");
  }
  SECTION("scale") {
    std::vector<T> want(a.size());
    kernels::scale(Cpu{}, kernels::ScaleParams<T>{a.data(), want.data(), n, 0.3});
    kernels::scale(Cuda{}, kernels::ScaleParams<T>{da.data(), da.data(), n, 0.3});
    CHECK(first_mismatch(da.values(), want) == "");
  }
  SECTION("mul") {
    std::vector<T> want(a.size());
    kernels::mul(Cpu{}, kernels::MulParams<T>{a.data(), b.data(), want.data(), n});
    DeviceArray<T> dy(std::vector<T>(a.size()), offset);
    kernels::mul(Cuda{}, kernels::MulParams<T>{da.data(), db.data(), dy.data(), n});
    CHECK(first_mismatch(dy.values(), want) == "");
  }
}

TEMPLATE_TEST_CASE("CUDA mul_backward matches the CPU, including da and db in one buffer",
                   "[cuda][elementwise]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 9, 5461, 50257);
  const std::int64_t offset = GENERATE(0, 1);
  INFO(Precision<T>::name << " n " << n << " offset " << offset);
  const auto a = normal_values<T>(n, 3), b = normal_values<T>(n, 4), dy = normal_values<T>(n, 5);
  const auto ga0 = normal_values<T>(n, 6), gb0 = normal_values<T>(n, 7);
  DeviceArray<T> d_a(a, offset), d_b(b, offset), d_dy(dy, offset), d_ga(ga0, offset),
      d_gb(gb0, offset);

  SECTION("both gradients") {
    auto ga = ga0, gb = gb0;
    kernels::mul_backward(Cpu{}, kernels::MulBackwardParams<T>{a.data(), b.data(), dy.data(),
                                                               ga.data(), gb.data(), n});
    kernels::mul_backward(Cuda{}, kernels::MulBackwardParams<T>{d_a.data(), d_b.data(), d_dy.data(),
                                                                d_ga.data(), d_gb.data(), n});
    CHECK(first_mismatch(d_ga.values(), ga) == "");
    CHECK(first_mismatch(d_gb.values(), gb) == "");
  }
  SECTION("one gradient") {
    auto gb = gb0;
    kernels::mul_backward(
        Cpu{}, kernels::MulBackwardParams<T>{a.data(), nullptr, dy.data(), nullptr, gb.data(), n});
    kernels::mul_backward(Cuda{}, kernels::MulBackwardParams<T>{d_a.data(), nullptr, d_dy.data(),
                                                                nullptr, d_gb.data(), n});
    CHECK(first_mismatch(d_gb.values(), gb) == "");
    CHECK(d_ga.values() == ga0);
  }
  SECTION("x * x: da and db are the same buffer") {
    auto g = ga0;
    kernels::mul_backward(
        Cpu{}, kernels::MulBackwardParams<T>{a.data(), a.data(), dy.data(), g.data(), g.data(), n});
    kernels::mul_backward(Cuda{}, kernels::MulBackwardParams<T>{d_a.data(), d_a.data(), d_dy.data(),
                                                                d_ga.data(), d_ga.data(), n});
    CHECK(first_mismatch(d_ga.values(), g) == "");
  }
}

TEMPLATE_TEST_CASE("CUDA axpy_2d matches the CPU on strided rows", "[cuda][elementwise]", float,
                   bf16) {
  using T = TestType;
  auto [rows, cols, ldx, ldy] =
      GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
          {{1, 1, 1, 3}, {7, 5, 5, 15}, {256, 768, 768, 2304}, {1000, 13, 20, 39}}));
  INFO(Precision<T>::name << " rows " << rows << " cols " << cols << " ldx " << ldx << " ldy "
                          << ldy);
  const auto x = normal_values<T>(rows * ldx, 8);
  auto y = normal_values<T>(rows * ldy, 9);
  DeviceArray<T> dx(x, 0), dy(y, 0);
  kernels::axpy_2d(Cpu{}, kernels::Axpy2dParams<T>{x.data(), y.data(), rows, cols, ldx, ldy, 1.5});
  kernels::axpy_2d(Cuda{},
                   kernels::Axpy2dParams<T>{dx.data(), dy.data(), rows, cols, ldx, ldy, 1.5});
  CHECK(first_mismatch(dy.values(), y) == "");
}

// fp64 and fp32 only: a chain of bf16 ops can differ by a bf16 ulp where the GPU contracts a
// multiply-add, and cancellation downstream makes that ulp large relative to the result.
TEMPLATE_TEST_CASE("element-wise Var ops on CUDA match the CPU, forward and backward",
                   "[cuda][elementwise]", double, float) {
  using T = TestType;
  const Shape shape = GENERATE(Shape{3}, Shape{4, 96}, Shape{2, 7, 5461});
  INFO(Precision<T>::name << " shape " << shape);
  auto a_cpu = Tensor<double>::randn(shape, 10).template cast<T>();
  auto b_cpu = Tensor<double>::randn(shape, 11).template cast<T>();
  auto run = [&](auto device) {
    using D = decltype(device);
    Var<T, D> a(a_cpu.template to<D>(), true), b(b_cpu.template to<D>(), true);
    auto parts = ag::split_last(ag::add_scaled(a, 0.5, b, 2.0) * a - 3.0 * b, 1);
    auto y = ag::reshape(parts[0], {-1});
    ag::backward(ag::sum(y * y));
    return std::vector<std::vector<T>>{y.value().to_vector(), a.grad().to_vector(),
                                       b.grad().to_vector()};
  };
  auto cpu = run(Cpu{});
  auto gpu = run(Cuda{});
  CHECK(first_mismatch(gpu[0], cpu[0]) == "");
  CHECK(first_mismatch(gpu[1], cpu[1]) == "");
  CHECK(first_mismatch(gpu[2], cpu[2]) == "");
}

TEST_CASE("split_last on CUDA routes each slice's gradient to its columns", "[cuda][elementwise]") {
  auto x_cpu = Tensor<float>::randn(Shape{5, 3 * 768}, 12);
  auto run = [&](auto device) {
    using D = decltype(device);
    Var<float, D> x(x_cpu.template to<D>(), true);
    auto qkv = ag::split_last(x, 3);
    auto y = ag::add_scaled(qkv[0] * qkv[1], 1.0, qkv[2], 0.25);
    ag::backward(ag::sum(y));
    return std::vector<std::vector<float>>{y.value().to_vector(), x.grad().to_vector()};
  };
  auto cpu = run(Cpu{});
  auto gpu = run(Cuda{});
  CHECK(first_mismatch(gpu[0], cpu[0]) == "");
  CHECK(first_mismatch(gpu[1], cpu[1]) == "");
}
