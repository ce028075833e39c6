// [cuda] tests for the CUDA reductions (include/fathom/kernels/cuda/reduce.cuh): sum and mean
// against a double loop at lengths from 1 to past a million, bit-identical results run to run,
// sum_backward, the multi-tensor sum_squares over many tensors of awkward sizes (some empty, some
// off the 16-byte grid) on the host and into device memory, and sum/mean of Var<T, Cuda>.
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/reduce.cuh>
#include <fathom/optim/clip.hpp>
#include <fathom/optim/param_group.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
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
using fathom::Var;
namespace optim = fathom::optim;
namespace kernels = fathom::kernels;
namespace ag = fathom::autograd;

using namespace fathom::test;

namespace {

// The tolerance of a sum of n terms of total magnitude `mass`, accumulated in accum_t<T> by a tree
// (blocks of 256 threads, then the partials): the error is at most about log2(n) + (n / threads)
// roundings of the running magnitude, bounded here by sqrt(n) + 64 of them; plus rounding to T.
template <class T>
double tree_sum_tolerance(double want, double mass, std::int64_t n) {
  const double eps = std::numeric_limits<accum_t<T>>::epsilon();
  return Precision<T>::atol + Precision<T>::rtol * std::abs(want) +
         (std::sqrt(static_cast<double>(n)) + 64.0) * eps * mass;
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA sum and mean match a double loop", "[cuda][reduce]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 256, 4097, 50257, (1 << 20) + 5, 5000011);
  const std::int64_t offset = GENERATE(0, 1);
  const double shift = GENERATE(0.0, 2.0);
  INFO(Precision<T>::name << " n " << n << " offset " << offset << " values N(" << shift << ", 1)");
  const auto x = normal_values<T>(n + offset, 1, 1.0, shift);
  double want = 0, mass = 0;
  for (std::size_t i = static_cast<std::size_t>(offset); i < x.size(); ++i) {
    want += scalar_cast<double>(x[i]);
    mass += std::abs(scalar_cast<double>(x[i]));
  }
  auto gx = to_device(x);
  Tensor<T, Cuda> out(Shape{});
  kernels::sum(Cuda{}, kernels::SumParams<T>{gx.data() + offset, out.data(), n, 1.0});
  const double got = scalar_cast<double>(out.item());
  CHECK(std::abs(got - want) <= tree_sum_tolerance<T>(want, mass, n));

  const double inv = 1.0 / static_cast<double>(n);
  kernels::sum(Cuda{}, kernels::SumParams<T>{gx.data() + offset, out.data(), n, inv});
  CHECK(std::abs(scalar_cast<double>(out.item()) - want * inv) <=
        tree_sum_tolerance<T>(want * inv, mass * inv, n));

  // Deterministic: the same bits on every run.
  kernels::sum(Cuda{}, kernels::SumParams<T>{gx.data() + offset, out.data(), n, 1.0});
  const T first = out.item();
  for (int run = 0; run < 3; ++run) {
    kernels::sum(Cuda{}, kernels::SumParams<T>{gx.data() + offset, out.data(), n, 1.0});
    const T again = out.item();
    CHECK(std::memcmp(&first, &again, sizeof(T)) == 0);
  }
}

TEST_CASE("CUDA sum of an empty array is zero", "[cuda][reduce]") {
  auto out = Tensor<float, Cuda>::full(Shape{}, 5.0f);
  kernels::sum(Cuda{}, kernels::SumParams<float>{nullptr, out.data(), 0, 1.0});
  CHECK(out.item() == 0.0f);
}

TEMPLATE_TEST_CASE("CUDA sum_backward matches the CPU", "[cuda][reduce]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 9, 50257);
  const std::int64_t offset = GENERATE(0, 1);
  INFO(Precision<T>::name << " n " << n << " offset " << offset);
  auto dx = normal_values<T>(n + offset, 2);
  const T dy = scalar_cast<T>(-0.625);
  auto gdx = to_device(dx);
  auto gdy = Tensor<T, Cuda>::full(Shape{}, dy);
  kernels::sum_backward(Cpu{}, kernels::SumBackwardParams<T>{&dy, dx.data() + offset, n, 0.5});
  kernels::sum_backward(Cuda{},
                        kernels::SumBackwardParams<T>{gdy.data(), gdx.data() + offset, n, 0.5});
  auto got = gdx.to_vector();
  std::size_t bad = got.size();
  for (std::size_t i = 0; i < got.size() && bad == got.size(); ++i) {
    const double g = scalar_cast<double>(got[i]), c = scalar_cast<double>(dx[i]);
    if (!(std::abs(g - c) <= Precision<T>::atol + Precision<T>::rtol * std::abs(c))) bad = i;
  }
  INFO("first differing element " << bad << " of " << got.size());
  CHECK(bad == got.size());
}

TEMPLATE_TEST_CASE("CUDA sum_squares over many tensors matches the CPU", "[cuda][reduce]", double,
                   float, bf16) {
  using T = TestType;
  using A = accum_t<T>;
  // Sizes of a small model's parameters and gradients: embeddings (50257 x 64), d_ff 5461, biases,
  // an empty tensor, one element; one tensor starts one element into its buffer.
  const std::vector<std::int64_t> sizes{50257 * 64, 768,   0,     5461 * 64,   1,
                                        7,          16384, 16385, 3 * 768 * 64};
  std::vector<std::vector<T>> host;
  std::vector<Tensor<T, Cuda>> device;
  kernels::SumSquaresParams<T> cpu, gpu;
  double want = 0;
  std::int64_t total = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const std::int64_t offset = k == 5 ? 1 : 0;
    host.push_back(normal_values<T>(sizes[k] + offset, 10 + k));
    device.push_back(to_device(host.back()));
    cpu.tensors.push_back({host.back().data() + offset, sizes[k]});
    gpu.tensors.push_back({device.back().data() + offset, sizes[k]});
    for (std::size_t i = static_cast<std::size_t>(offset); i < host.back().size(); ++i)
      want += scalar_cast<double>(host.back()[i]) * scalar_cast<double>(host.back()[i]);
    total += sizes[k];
  }
  INFO(Precision<T>::name << ", " << sizes.size() << " tensors, " << total << " elements");
  const A got = kernels::sum_squares(Cuda{}, gpu);
  const double eps = std::numeric_limits<A>::epsilon();
  CHECK(std::abs(static_cast<double>(got) - want) <=
        (std::sqrt(static_cast<double>(total)) + 64.0) * eps * want);
  const A ref = kernels::sum_squares(Cpu{}, cpu);
  CHECK(std::abs(static_cast<double>(got) - static_cast<double>(ref)) <=
        static_cast<double>(total) * eps * want);

  // Into device memory, without a host round trip; and the same bits as the host version.
  Tensor<A, Cuda> out(Shape{});
  kernels::sum_squares(Cuda{}, gpu, out.data());
  const A written = out.item();
  CHECK(std::memcmp(&written, &got, sizeof(A)) == 0);

  // An empty list gives zero.
  CHECK(kernels::sum_squares(Cuda{}, kernels::SumSquaresParams<T>{}) == A(0));
}

TEST_CASE("CUDA sum_squares over more tensors than one launch takes", "[cuda][reduce]") {
  // 300 tensors (three launches of up to 128), sizes 0 to 40000, some off the 16-byte grid.
  std::vector<std::vector<float>> host;
  std::vector<Tensor<float, Cuda>> device;
  kernels::SumSquaresParams<float> gpu;
  double want = 0, total = 0;
  for (int k = 0; k < 300; ++k) {
    const auto n = static_cast<std::int64_t>(
        fathom::rng::uniform(99, static_cast<std::uint64_t>(k)) * 40000.0);
    const std::int64_t offset = k % 3 == 0 ? 1 : 0;
    host.push_back(normal_values<float>(n + offset, 1000 + static_cast<std::uint64_t>(k)));
    device.push_back(to_device(host.back()));
    gpu.tensors.push_back({device.back().data() + offset, n});
    for (std::size_t i = static_cast<std::size_t>(offset); i < host.back().size(); ++i)
      want += static_cast<double>(host.back()[i]) * host.back()[i];
    total += static_cast<double>(n);
  }
  INFO("300 tensors, " << total << " elements");
  const float got = kernels::sum_squares(Cuda{}, gpu);
  CHECK(std::abs(static_cast<double>(got) - want) <=
        (std::sqrt(total) + 64.0) * std::numeric_limits<float>::epsilon() * want);
}

TEMPLATE_TEST_CASE("sum and mean of Var<T, Cuda> match the CPU, forward and backward",
                   "[cuda][reduce]", float, bf16) {
  using T = TestType;
  const Shape shape = GENERATE(Shape{1}, Shape{64, 768}, Shape{3, 5461});
  INFO(Precision<T>::name << " shape " << shape);
  auto x_cpu = Tensor<double>::randn(shape, 20, 1.0, 0.5).template cast<T>();
  auto run = [&](auto device) {
    using D = decltype(device);
    Var<T, D> x(x_cpu.template to<D>(), true);
    auto s = ag::sum(x), m = ag::mean(x);
    ag::backward(m);
    return std::vector<double>{scalar_cast<double>(s.value().item()),
                               scalar_cast<double>(m.value().item()),
                               scalar_cast<double>(x.grad().to_vector()[0]),
                               scalar_cast<double>(x.grad().to_vector().back())};
  };
  auto cpu = run(Cpu{});
  auto gpu = run(Cuda{});
  double mass = 0;
  for (T v : x_cpu.to_vector()) mass += std::abs(scalar_cast<double>(v));
  CHECK(std::abs(gpu[0] - cpu[0]) <= tree_sum_tolerance<T>(cpu[0], mass, shape.numel()) * 2.0);
  CHECK(std::abs(gpu[1] - cpu[1]) <=
        tree_sum_tolerance<T>(cpu[1], mass / static_cast<double>(shape.numel()), shape.numel()) *
            2.0);
  CHECK(gpu[2] == cpu[2]);
  CHECK(gpu[3] == cpu[3]);
}

TEMPLATE_TEST_CASE("CUDA clip_factor_on_device matches the host computation", "[cuda][reduce]",
                   float, bf16) {
  using T = TestType;
  const double spread = GENERATE(0.001, 1.0);
  INFO(Precision<T>::name << ", spread " << spread);
  std::vector<optim::NamedParameter<T, Cpu>> cpu;
  std::vector<optim::NamedParameter<T, Cuda>> gpu;
  const std::int64_t sizes[] = {50304 * 8, 768, 5461, 3};
  for (int k = 0; k < 4; ++k) {
    auto g = Tensor<T>::randn(Shape{sizes[k]}, 50 + k, spread);
    Var<T, Cpu> c(Tensor<T>::zeros(Shape{sizes[k]}), true);
    c.grad_accumulator().copy_(g);
    Var<T, Cuda> d(Tensor<T, Cuda>::zeros(Shape{sizes[k]}), true);
    d.grad_accumulator().copy_(g.template to<Cuda>());
    cpu.push_back({"p", c});
    gpu.push_back({"p", d});
  }
  const double want = optim::clip_factor(optim::global_grad_norm<T, Cpu>(cpu), 1.0);
  Tensor<float, Cuda> factor(Shape{});
  optim::clip_factor_on_device<T, Cuda>(gpu, 1.0, factor);
  // The host sums fp32 gradients in fp32 one after another, the device in a tree: 1e-3 apart at
  // most.
  CHECK_THAT(static_cast<double>(factor.item()), WithinRel(want, 1e-3));
  if (spread == 1.0) CHECK(factor.item() < 0.1f);
}
