// [cuda] tests for the CUDA activation kernels (include/fathom/kernels/cuda/activation.cuh): GELU,
// SiLU and fused SwiGLU, forward and backward, against the CPU reference on the same inputs in
// fp64, fp32 and bf16, at MLP sizes (d_ff 5461, 3072) and awkward lengths, on pointers off the
// 16-byte grid; and gelu/silu/swiglu of Var<T, Cuda> against the CPU.
#include <fathom/autograd/ops/activation.hpp>
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
