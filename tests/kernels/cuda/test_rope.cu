// [cuda] tests for the CUDA RoPE kernels (include/fathom/kernels/cuda/rope.cuh): forward and
// backward (accumulated onto random gradients) in float and bf16 against the CPU kernels in the
// same precision (so both turn by the same fp32 angles), at the Llama head sizes (64, 128), odd
// half-head sizes (element-at-a-time path), large start positions, data off the 16-byte grid, and
// the rope op on CUDA; rope_qkv (in place on the q and k thirds of a fused (B, T, 3C) projection,
// v NaN-poisoned to show it is never read nor written) against the CPU kernel, and the rope_qkv op
// on CUDA against the CPU op.
#include <fathom/autograd/ops/rope.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/rope.cuh>

#include <cmath>
#include <cstdint>
#include <limits>
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

using namespace fathom::test;

namespace {

struct RopeCase {
  std::int64_t B, T, H, hd, pos0, offset;
  std::int64_t C() const { return H * hd; }
  std::size_t n() const { return static_cast<std::size_t>(B * T * H * hd); }
};
std::ostream& operator<<(std::ostream& os, const RopeCase& c) {
  return os << "B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd << " pos0 " << c.pos0
            << " offset " << c.offset;
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA rope forward and backward match the CPU kernels", "[cuda][kernels][rope]",
                   float, bf16) {
  using T = TestType;
  const RopeCase c = GENERATE(RopeCase{2, 256, 12, 64, 0, 0}, RopeCase{1, 300, 4, 128, 3000, 0},
                              RopeCase{3, 17, 3, 6, 5, 0}, RopeCase{1, 5, 2, 2, 0, 0},
                              RopeCase{2, 33, 5, 64, 0, 1}, RopeCase{1, 1, 1, 16, 123, 0},
                              RopeCase{4, 255, 16, 64, 17, 0});
  CAPTURE(c, Precision<T>::name);
  const auto x = normal_values<T>(c.n(), 71), dy = normal_values<T>(c.n(), 72),
             dx0 = normal_values<T>(c.n(), 73);
  std::vector<T> y_want(c.n()), dx_want = dx0;
  fathom::kernels::rope(Cpu{},
                        fathom::kernels::RopeParams<T>{x.data(), y_want.data(), c.B, c.T, c.C(),
                                                       static_cast<int>(c.H), 10000.0, c.pos0});
  fathom::kernels::rope_backward(
      Cpu{}, fathom::kernels::RopeBackwardParams<T>{dy.data(), dx_want.data(), c.B, c.T, c.C(),
                                                    static_cast<int>(c.H), 10000.0, c.pos0, true});
  DeviceArray<T> xd(x, c.offset), yd(std::vector<T>(c.n(), scalar_cast<T>(7.0)), c.offset),
      dyd(dy, c.offset), dxd(dx0, c.offset);
  fathom::kernels::rope(Cuda{},
                        fathom::kernels::RopeParams<T>{xd.data(), yd.data(), c.B, c.T, c.C(),
                                                       static_cast<int>(c.H), 10000.0, c.pos0});
  fathom::kernels::rope_backward(
      Cuda{}, fathom::kernels::RopeBackwardParams<T>{dyd.data(), dxd.data(), c.B, c.T, c.C(),
                                                     static_cast<int>(c.H), 10000.0, c.pos0, true});
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
  // Same fp32 angles on both sides; sin and cos differ by an ulp or two, times positions' size.
  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  CHECK(first_mismatch("y", to_double(yd.values()), to_double(y_want), rtol, atol, c.C()) == "");
  CHECK(first_mismatch("dx", to_double(dxd.values()), to_double(dx_want), rtol, atol, c.C()) == "");
}

TEST_CASE("CUDA rope in double matches the CPU kernel closely", "[cuda][kernels][rope]") {
  const RopeCase c{2, 40, 3, 32, 77, 0};
  const auto x = normal_values<double>(c.n(), 81);
  std::vector<double> want(c.n());
  fathom::kernels::rope(Cpu{}, fathom::kernels::RopeParams<double>{x.data(), want.data(), c.B, c.T,
                                                                   c.C(), 3, 5e5, c.pos0});
  DeviceArray<double> xd(x, 0), yd(std::vector<double>(c.n(), 7.0), 0);
  fathom::kernels::rope(Cuda{}, fathom::kernels::RopeParams<double>{xd.data(), yd.data(), c.B, c.T,
                                                                    c.C(), 3, 5e5, c.pos0});
  CHECK(first_mismatch("y", yd.values(), want, 1e-12, 1e-13, c.C()) == "");
}

TEMPLATE_TEST_CASE("CUDA rope op matches the CPU op, value and gradient", "[cuda][autograd][rope]",
                   float, bf16) {
  using T = TestType;
  namespace ag = fathom::autograd;
  const RopeCase c{2, 64, 4, 32, 9, 0};
  const auto x = normal_values<T>(c.n(), 91), gy = normal_values<T>(c.n(), 92);
  auto run = [&](auto device) {
    using D = decltype(device);
    const Shape shape{c.B, c.T, c.C()};
    fathom::Var<T, D> xv(Tensor<T, Cpu>::from_vector(shape, x).template to<D>(), true);
    auto y = ag::rope(xv, static_cast<int>(c.H), 10000.0, c.pos0);
    ag::backward(y, Tensor<T, Cpu>::from_vector(shape, gy).template to<D>());
    return std::make_pair(to_double(y.value().to_vector()), to_double(xv.grad().to_vector()));
  };
  const auto cpu = run(Cpu{}), gpu = run(Cuda{});
  CHECK(first_mismatch("y", gpu.first, cpu.first, Precision<T>::rtol, Precision<T>::atol, c.C()) ==
        "");
  CHECK(first_mismatch("dx", gpu.second, cpu.second, Precision<T>::rtol, Precision<T>::atol,
                       c.C()) == "");
}

TEMPLATE_TEST_CASE("CUDA rope_qkv turns q and k in place as the CPU kernel does, v untouched",
                   "[cuda][kernels][rope]", float, bf16) {
  using T = TestType;
  // Llama sizes (packed path), odd half-head sizes (element path), data off the 16-byte grid.
  const RopeCase c = GENERATE(RopeCase{2, 256, 12, 64, 0, 0}, RopeCase{1, 300, 4, 128, 3000, 0},
                              RopeCase{3, 17, 3, 6, 5, 0}, RopeCase{1, 5, 2, 2, 0, 0},
                              RopeCase{2, 33, 5, 64, 0, 1}, RopeCase{4, 255, 16, 64, 17, 0},
                              RopeCase{1, 7, 3, 10, 2, 0}, RopeCase{2, 9, 5, 6, 40, 3});
  const bool inverse = GENERATE(false, true);
  CAPTURE(c, inverse, Precision<T>::name);
  const std::int64_t C = c.C(), rows = c.B * c.T;
  auto qkv = normal_values<T>(3 * c.n(), 101);
  for (std::int64_t r = 0; r < rows; ++r)  // v: NaN, never to be read or written
    for (std::int64_t j = 2 * C; j < 3 * C; ++j)
      qkv[static_cast<std::size_t>(r * 3 * C + j)] =
          scalar_cast<T>(std::numeric_limits<double>::quiet_NaN());
  std::vector<T> want = qkv;
  const fathom::kernels::RopeQkvParams<T> p{nullptr, c.B,    c.T,    C, static_cast<int>(c.H),
                                            10000.0, c.pos0, inverse};
  auto cpu = p;
  cpu.qkv = want.data();
  fathom::kernels::rope_qkv(Cpu{}, cpu);
  DeviceArray<T> qkvd(qkv, c.offset);
  auto gpu = p;
  gpu.qkv = qkvd.data();
  fathom::kernels::rope_qkv(Cuda{}, gpu);
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(fathom::cuda::stream()));
  const auto got = qkvd.values();
  std::vector<double> got_qk, want_qk;
  bool v_nan = true;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < 3 * C; ++j) {
      const auto i = static_cast<std::size_t>(r * 3 * C + j);
      if (j >= 2 * C) {
        v_nan = v_nan && std::isnan(scalar_cast<double>(got[i]));
        continue;
      }
      got_qk.push_back(scalar_cast<double>(got[i]));
      want_qk.push_back(scalar_cast<double>(want[i]));
    }
  CHECK(v_nan);
  CHECK(first_mismatch("qk", got_qk, want_qk, Precision<T>::rtol, Precision<T>::atol, 2 * C) == "");
}

TEMPLATE_TEST_CASE("CUDA rope_qkv op matches the CPU op, value and gradient, in place or not",
                   "[cuda][autograd][rope]", float, bf16) {
  using T = TestType;
  namespace ag = fathom::autograd;
  const RopeCase c{2, 64, 4, 32, 9, 0};
  const bool in_place = GENERATE(true, false);
  CAPTURE(in_place);
  const Shape shape{c.B, c.T, 3 * c.C()};
  const auto x = normal_values<T>(3 * c.n(), 93), gy = normal_values<T>(3 * c.n(), 94);
  auto run = [&](auto device) {
    using D = decltype(device);
    fathom::Var<T, D> xv(Tensor<T, Cpu>::from_vector(shape, x).template to<D>(), true);
    auto y = in_place ? ag::rope_qkv(xv * 1.0, static_cast<int>(c.H), 10000.0, c.pos0)
                      : ag::rope_qkv(xv, static_cast<int>(c.H), 10000.0, c.pos0);
    ag::backward(y, Tensor<T, Cpu>::from_vector(shape, gy).template to<D>());
    return std::make_pair(to_double(y.value().to_vector()), to_double(xv.grad().to_vector()));
  };
  const auto cpu = run(Cpu{}), gpu = run(Cuda{});
  CHECK(first_mismatch("y", gpu.first, cpu.first, Precision<T>::rtol, Precision<T>::atol,
                       3 * c.C()) == "");
  CHECK(first_mismatch("dx", gpu.second, cpu.second, Precision<T>::rtol, Precision<T>::atol,
                       3 * c.C()) == "");
}
