// [cuda] tests for CUDA dropout (include/fathom/kernels/cuda/dropout.cuh): the mask on the GPU is
// the CPU's mask element for element (same seed and offset), kept values equal the CPU's, backward
// matches, at awkward lengths and on pointers off the 16-byte grid; and dropout of Var<T, Cuda>.
#include <fathom/autograd/ops/dropout.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/dropout.cuh>

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

namespace {

// Values 0.5 to 2.5 in magnitude: a dropped element (0) never looks like a kept one.
template <class T>
std::vector<T> random_nonzero(std::int64_t n, std::uint64_t seed) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double u = fathom::rng::uniform(seed, i);
    v[i] = scalar_cast<T>((u < 0.5 ? -1.0 : 1.0) * (0.5 + 4.0 * std::abs(u - 0.5)));
  }
  return v;
}

// "" when the zero patterns agree exactly and the values within Precision<T>; else the first
// element that differs.
template <class T>
std::string first_dropout_mismatch(const std::vector<T>& gpu, const std::vector<T>& cpu) {
  for (std::size_t i = 0; i < cpu.size() && i < gpu.size(); ++i) {
    if ((scalar_cast<double>(gpu[i]) == 0.0) != (scalar_cast<double>(cpu[i]) == 0.0)) {
      std::ostringstream s;
      s << "element " << i << ": gpu " << scalar_cast<double>(gpu[i]) << ", cpu "
        << scalar_cast<double>(cpu[i]) << " (dropped on one side only)";
      return s.str();
    }
  }
  return first_mismatch(gpu, cpu);
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA dropout draws the CPU's mask", "[cuda][dropout]", double, float, bf16) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 4099, 50257, (1 << 20) + 1);
  const std::int64_t offset = GENERATE(0, 1);
  const double p = GENERATE(0.1, 0.5);
  const std::uint64_t seed = 1234, stream_offset = GENERATE(0ull, 987654321ull);
  INFO(Precision<T>::name << " n " << n << " offset " << offset << " p " << p << " stream offset "
                          << stream_offset);
  const auto x = random_nonzero<T>(n, 1);
  std::vector<T> y(x.size());
  kernels::dropout(Cpu{}, kernels::DropoutParams<T>{x.data(), y.data(), n, p, seed, stream_offset});
  DeviceArray<T> gx(x, offset), gy(std::vector<T>(x.size()), offset);
  kernels::dropout(Cuda{},
                   kernels::DropoutParams<T>{gx.data(), gy.data(), n, p, seed, stream_offset});
  const auto got = gy.values();
  CHECK(first_dropout_mismatch(got, y) == "");
  // The forward is a multiply by the same float on both sides: the values agree exactly too.
  CHECK(got == y);

  const auto dy = random_nonzero<T>(n, 2), dx0 = random_nonzero<T>(n, 3);
  auto dx = dx0;
  DeviceArray<T> gdy(dy, offset), gdx(dx0, offset);
  kernels::dropout_backward(
      Cpu{}, kernels::DropoutBackwardParams<T>{dy.data(), dx.data(), n, p, seed, stream_offset});
  kernels::dropout_backward(
      Cuda{}, kernels::DropoutBackwardParams<T>{gdy.data(), gdx.data(), n, p, seed, stream_offset});
  // Backward accumulates onto nonzero dx, so compare values (a multiply-add may be fused).
  const auto gdx_values = gdx.values();
  std::size_t bad = dx.size();
  for (std::size_t i = 0; i < dx.size() && bad == dx.size(); ++i) {
    const double g = scalar_cast<double>(gdx_values[i]), c = scalar_cast<double>(dx[i]);
    if (!(std::abs(g - c) <= Precision<T>::atol + Precision<T>::rtol * std::abs(c))) bad = i;
  }
  INFO("first differing gradient element " << bad);
  CHECK(bad == dx.size());
}

TEMPLATE_TEST_CASE("dropout of Var<T, Cuda> matches the CPU, forward and backward",
                   "[cuda][dropout]", float, bf16) {
  using T = TestType;
  const Shape shape = GENERATE(Shape{3}, Shape{8, 64, 768});
  INFO(Precision<T>::name << " shape " << shape);
  auto x_cpu = Tensor<double>::randn(shape, 4).template cast<T>();
  auto run = [&](auto device) {
    using D = decltype(device);
    Var<T, D> x(x_cpu.template to<D>(), true);
    Var<T, D> y = ag::dropout(x, 0.2, 77, 1000);
    ag::backward(ag::sum(y));
    return std::vector<std::vector<T>>{y.value().to_vector(), x.grad().to_vector()};
  };
  auto cpu = run(Cpu{});
  auto gpu = run(Cuda{});
  CHECK(gpu[0] == cpu[0]);
  CHECK(first_dropout_mismatch(gpu[1], cpu[1]) == "");
}
