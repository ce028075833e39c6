// [cuda] tests for the CUDA activation kernels (include/fathom/kernels/cuda/activation.cuh): GELU,
// SiLU and fused SwiGLU, forward and backward, against the CPU reference on the same inputs in
// fp64, fp32 and bf16, at MLP sizes (d_ff 5461, 3072) and awkward lengths, on pointers off the
// 16-byte grid; SwiGLU on the two halves of stacked rows (F odd, and F a multiple of 8 for the
// packed route); and gelu/silu/swiglu/swiglu_stacked of Var<T, Cuda> against the CPU.
#include <fathom/autograd/ops/activation.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/activation.cuh>

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

TEMPLATE_TEST_CASE("CUDA gelu and silu match the CPU, forward and backward", "[cuda][activation]",
                   double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 4 * 3072, 3 * 5461, 50257);
  const std::int64_t offset = GENERATE(0, 1);
  INFO(Precision<T>::name << " n " << n << " offset " << offset);
  // x N(0, 3^2): both tails (where exp overflows for silu) and the bend near zero.
  const auto x = normal_values<T>(n, 1, 3.0), dy = normal_values<T>(n, 2),
             dx0 = normal_values<T>(n, 3);
  DeviceArray<T> gx(x, offset), gdy(dy, offset);

  SECTION("gelu") {
    std::vector<T> y(x.size());
    kernels::gelu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), n});
    DeviceArray<T> gy(std::vector<T>(x.size()), offset);
    kernels::gelu(Cuda{}, kernels::ActivationParams<T>{gx.data(), gy.data(), n});
    CHECK(first_mismatch(gy.values(), y) == "");
    auto dx = dx0;
    DeviceArray<T> gdx(dx0, offset);
    kernels::gelu_backward(Cpu{},
                           kernels::ActivationBackwardParams<T>{x.data(), dy.data(), dx.data(), n});
    kernels::gelu_backward(
        Cuda{}, kernels::ActivationBackwardParams<T>{gx.data(), gdy.data(), gdx.data(), n});
    CHECK(first_mismatch(gdx.values(), dx) == "");
  }
  SECTION("silu") {
    std::vector<T> y(x.size());
    kernels::silu(Cpu{}, kernels::ActivationParams<T>{x.data(), y.data(), n});
    DeviceArray<T> gy(std::vector<T>(x.size()), offset);
    kernels::silu(Cuda{}, kernels::ActivationParams<T>{gx.data(), gy.data(), n});
    CHECK(first_mismatch(gy.values(), y) == "");
    auto dx = dx0;
    DeviceArray<T> gdx(dx0, offset);
    kernels::silu_backward(Cpu{},
                           kernels::ActivationBackwardParams<T>{x.data(), dy.data(), dx.data(), n});
    kernels::silu_backward(
        Cuda{}, kernels::ActivationBackwardParams<T>{gx.data(), gdy.data(), gdx.data(), n});
    CHECK(first_mismatch(gdx.values(), dx) == "");
  }
  SECTION("gelu and silu backward into fresh buffers (accumulate false): NaN-filled, never read") {
    const std::vector<T> nan(x.size(), scalar_cast<T>(std::nan("")));
    for (const bool gelu : {true, false}) {
      INFO((gelu ? "gelu" : "silu"));
      std::vector<T> dx(x.size(), scalar_cast<T>(0.0));
      DeviceArray<T> gdx(nan, offset);
      const kernels::ActivationBackwardParams<T> cpu{x.data(), dy.data(), dx.data(), n};
      const kernels::ActivationBackwardParams<T> gpu{gx.data(), gdy.data(), gdx.data(), n, false};
      if (gelu) {
        kernels::gelu_backward(Cpu{}, cpu);
        kernels::gelu_backward(Cuda{}, gpu);
      } else {
        kernels::silu_backward(Cpu{}, cpu);
        kernels::silu_backward(Cuda{}, gpu);
      }
      CHECK(first_mismatch(gdx.values(), dx) == "");
    }
  }
}

TEMPLATE_TEST_CASE("CUDA swiglu matches the CPU, forward and backward", "[cuda][activation]",
                   double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 9, 8 * 5461, 50257);
  const std::int64_t offset = GENERATE(0, 1);
  INFO(Precision<T>::name << " n " << n << " offset " << offset);
  const auto gate = normal_values<T>(n, 4, 3.0), up = normal_values<T>(n, 5),
             dy = normal_values<T>(n, 6);
  const auto dg0 = normal_values<T>(n, 7), du0 = normal_values<T>(n, 8);
  DeviceArray<T> ggate(gate, offset), gup(up, offset), gdy(dy, offset), gdg(dg0, offset),
      gdu(du0, offset);

  std::vector<T> y(gate.size());
  kernels::swiglu(Cpu{}, kernels::SwigluParams<T>{gate.data(), up.data(), y.data(), n});
  DeviceArray<T> gy(std::vector<T>(gate.size()), offset);
  kernels::swiglu(Cuda{}, kernels::SwigluParams<T>{ggate.data(), gup.data(), gy.data(), n});
  CHECK(first_mismatch(gy.values(), y) == "");

  SECTION("both gradients") {
    auto dg = dg0, du = du0;
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), up.data(), dy.data(), dg.data(),
                                                du.data(), n});
    kernels::swiglu_backward(
        Cuda{}, kernels::SwigluBackwardParams<T>{ggate.data(), gup.data(), gdy.data(), gdg.data(),
                                                 gdu.data(), n});
    CHECK(first_mismatch(gdg.values(), dg) == "");
    CHECK(first_mismatch(gdu.values(), du) == "");
  }
  SECTION("only dup") {
    auto du = du0;
    kernels::swiglu_backward(Cpu{}, kernels::SwigluBackwardParams<T>{
                                        gate.data(), up.data(), dy.data(), nullptr, du.data(), n});
    kernels::swiglu_backward(
        Cuda{}, kernels::SwigluBackwardParams<T>{ggate.data(), gup.data(), gdy.data(), nullptr,
                                                 gdu.data(), n});
    CHECK(first_mismatch(gdu.values(), du) == "");
    CHECK(gdg.values() == dg0);
  }
  SECTION("fresh buffers overwritten (accumulate false): NaN-filled, never read") {
    std::vector<T> dg(gate.size(), scalar_cast<T>(0.0)), du(gate.size(), scalar_cast<T>(0.0));
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), up.data(), dy.data(), dg.data(),
                                                du.data(), n});
    const std::vector<T> nan(gate.size(), scalar_cast<T>(std::nan("")));
    DeviceArray<T> fdg(nan, offset), fdu(nan, offset);
    kernels::swiglu_backward(
        Cuda{}, kernels::SwigluBackwardParams<T>{ggate.data(), gup.data(), gdy.data(), fdg.data(),
                                                 fdu.data(), n, false, false});
    CHECK(first_mismatch(fdg.values(), dg) == "");
    CHECK(first_mismatch(fdu.values(), du) == "");
  }
  SECTION("gate and up one tensor, one gradient buffer") {
    auto g = dg0;
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gate.data(), gate.data(), dy.data(), g.data(),
                                                g.data(), n});
    kernels::swiglu_backward(
        Cuda{}, kernels::SwigluBackwardParams<T>{ggate.data(), ggate.data(), gdy.data(), gdg.data(),
                                                 gdg.data(), n});
    CHECK(first_mismatch(gdg.values(), g) == "");
  }
}

TEMPLATE_TEST_CASE("CUDA swiglu on the halves of stacked rows matches the CPU",
                   "[cuda][activation]", double, float, bf16) {
  // gu (rows, 2F): gate = gu, up = gu + F, rows 2F apart; the gradient into the halves of one
  // (rows, 2F) buffer. F % 8 == 0 in bf16 (F % 4 in float) takes 16-byte packs when aligned
  // (offset 0); odd F and offset 1 go one element at a time.
  using T = TestType;
  const auto [rows, F] = GENERATE(table<std::int64_t, std::int64_t>(
      {{1, 1}, {3, 5}, {7, 13}, {4, 8}, {33, 24}, {16, 2048}, {5, 5461}, {3, 5464}}));
  const std::int64_t offset = GENERATE(0, 1);
  const std::int64_t n = rows * F;
  INFO(Precision<T>::name << " rows " << rows << " F " << F << " offset " << offset);
  const auto gu = normal_values<T>(2 * n, 20, 3.0), dy = normal_values<T>(n, 21),
             dgu0 = normal_values<T>(2 * n, 22);
  DeviceArray<T> ggu(gu, offset), gdy(dy, offset);

  std::vector<T> y(n);
  kernels::swiglu(Cpu{}, kernels::SwigluParams<T>{gu.data(), gu.data() + F, y.data(), n, F, 2 * F});
  DeviceArray<T> gy(std::vector<T>(n), offset);
  kernels::swiglu(Cuda{},
                  kernels::SwigluParams<T>{ggu.data(), ggu.data() + F, gy.data(), n, F, 2 * F});
  CHECK(first_mismatch(gy.values(), y) == "");

  SECTION("backward, adding to the gradient there") {
    auto dgu = dgu0;
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gu.data(), gu.data() + F, dy.data(), dgu.data(),
                                                dgu.data() + F, n, true, true, F, 2 * F, 2 * F});
    DeviceArray<T> gdgu(dgu0, offset);
    kernels::swiglu_backward(Cuda{}, kernels::SwigluBackwardParams<T>{
                                         ggu.data(), ggu.data() + F, gdy.data(), gdgu.data(),
                                         gdgu.data() + F, n, true, true, F, 2 * F, 2 * F});
    CHECK(first_mismatch(gdgu.values(), dgu) == "");
  }
  SECTION("backward into a fresh buffer (accumulate false): NaN-filled, never read") {
    std::vector<T> dgu(2 * n, scalar_cast<T>(0.0));
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gu.data(), gu.data() + F, dy.data(), dgu.data(),
                                                dgu.data() + F, n, false, false, F, 2 * F, 2 * F});
    DeviceArray<T> gdgu(std::vector<T>(2 * n, scalar_cast<T>(std::nan(""))), offset);
    kernels::swiglu_backward(Cuda{}, kernels::SwigluBackwardParams<T>{
                                         ggu.data(), ggu.data() + F, gdy.data(), gdgu.data(),
                                         gdgu.data() + F, n, false, false, F, 2 * F, 2 * F});
    CHECK(first_mismatch(gdgu.values(), dgu) == "");
  }
  SECTION("only d up: the gate half untouched") {
    auto dgu = dgu0;
    kernels::swiglu_backward(
        Cpu{}, kernels::SwigluBackwardParams<T>{gu.data(), gu.data() + F, dy.data(), nullptr,
                                                dgu.data() + F, n, true, true, F, 2 * F, 2 * F});
    DeviceArray<T> gdgu(dgu0, offset);
    kernels::swiglu_backward(
        Cuda{}, kernels::SwigluBackwardParams<T>{ggu.data(), ggu.data() + F, gdy.data(), nullptr,
                                                 gdgu.data() + F, n, true, true, F, 2 * F, 2 * F});
    CHECK(first_mismatch(gdgu.values(), dgu) == "");
    const auto got = gdgu.values();
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < F; ++c)
        REQUIRE(to_double(got[r * 2 * F + c]) == to_double(dgu0[r * 2 * F + c]));
  }
}

TEMPLATE_TEST_CASE("swiglu_stacked on CUDA matches the CPU and swiglu on the split halves",
                   "[cuda][activation]", float, bf16) {
  using T = TestType;
  const Shape shape = GENERATE(Shape{5, 10}, Shape{2, 3, 2 * 5461}, Shape{2, 3, 4096});
  const bool seeded = GENERATE(false, true);  // a gradient already in gu: accumulate
  INFO(Precision<T>::name << " shape " << shape << " gradient already there " << seeded);
  auto gu_cpu = Tensor<double>::randn(shape, 23, 2.0).template cast<T>();
  Shape half = shape;
  half[half.rank() - 1] /= 2;
  auto dy_cpu = Tensor<double>::randn(half, 24).template cast<T>();
  auto seed_cpu = Tensor<double>::randn(shape, 25).template cast<T>();
  auto run = [&](auto device, bool stacked) {
    using D = decltype(device);
    ag::clear_tape();
    Var<T, D> gu(gu_cpu.template to<D>(), true);
    if (seeded) ag::backward(ag::sum(gu * Var<T, D>(seed_cpu.template to<D>())));
    Var<T, D> y;
    if (stacked) {
      y = ag::swiglu_stacked(gu);
    } else {
      auto halves = ag::split_last(gu, 2);
      y = ag::swiglu(halves[0], halves[1]);
    }
    ag::backward(ag::sum(y * Var<T, D>(dy_cpu.template to<D>())));
    return std::vector<std::vector<T>>{y.value().to_vector(), gu.grad().to_vector()};
  };
  const auto cpu = run(Cpu{}, true);
  const auto gpu = run(Cuda{}, true);
  const auto split = run(Cuda{}, false);
  const char* names[] = {"y", "grad gu"};
  for (std::size_t k = 0; k < cpu.size(); ++k) {
    INFO(names[k]);
    CHECK(first_mismatch(gpu[k], cpu[k]) == "");
  }
  // The value is the same kernel math on the same elements: equal bit for bit to the split route.
  // Without a gradient there, the gradient too (with one, the split route rounds d gate and d up
  // to T before adding them, swiglu_stacked adds in the accumulator type).
  CHECK(to_double(gpu[0]) == to_double(split[0]));
  if (!seeded) CHECK(to_double(gpu[1]) == to_double(split[1]));
}

TEMPLATE_TEST_CASE("activation Var ops on CUDA match the CPU", "[cuda][activation]", float, bf16) {
  using T = TestType;
  const Shape shape = GENERATE(Shape{5}, Shape{2, 3, 5461});
  INFO(Precision<T>::name << " shape " << shape);
  auto a_cpu = Tensor<double>::randn(shape, 9, 2.0).template cast<T>();
  auto b_cpu = Tensor<double>::randn(shape, 10).template cast<T>();
  auto run = [&](auto device) {
    using D = decltype(device);
    Var<T, D> a(a_cpu.template to<D>(), true), b(b_cpu.template to<D>(), true);
    Var<T, D> g = ag::gelu(a), s = ag::silu(b), w = ag::swiglu(a, b);
    // One backward over all three: backward() consumes the whole tape (autograd/var.hpp).
    ag::backward(ag::sum(g) + ag::sum(s) + ag::sum(w));
    return std::vector<std::vector<T>>{g.value().to_vector(), s.value().to_vector(),
                                       w.value().to_vector(), a.grad().to_vector(),
                                       b.grad().to_vector()};
  };
  auto cpu = run(Cpu{});
  auto gpu = run(Cuda{});
  const char* names[] = {"gelu", "silu", "swiglu", "grad a", "grad b"};
  for (std::size_t k = 0; k < cpu.size(); ++k) {
    INFO(names[k]);
    CHECK(first_mismatch(gpu[k], cpu[k]) == "");
  }
}
