// [cuda] tests for the CUDA tensor primitives (include/fathom/kernels/cuda/primitives.cuh):
// device_fill, device_strided_copy and device_cast through Tensor<T, Cuda> (fill_, contiguous(),
// copy_, cast), each compared exactly with the same operation on the CPU, at awkward sizes and on
// pointers off the 16-byte grid; WordPack, a pack kept as 32-bit words, read back element by
// element; and the bf16 conversions of the device code (the hardware rounding of bf16 itself,
// round_store's two-at-a-time rounding, unpack and WordPack::get), bit for bit against the CPU's
// bf16 over every class of float.
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/primitives.cuh>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <sstream>
#include <string>
#include <vector>

#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Shape;
using fathom::Tensor;

namespace {

template <class T>
Tensor<T, Cuda> to_gpu(const Tensor<T, Cpu>& t) {
  return t.template to<Cuda>();
}

// Bit patterns, so bf16 and float compare exactly (and NaN-free data compares as equal values).
template <class T>
std::vector<std::uint64_t> bits(const std::vector<T>& v) {
  std::vector<std::uint64_t> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    std::uint64_t b = 0;
    std::memcpy(&b, &v[i], sizeof(T));
    out[i] = b;
  }
  return out;
}

template <class T>
std::string first_difference(const std::vector<T>& gpu, const std::vector<T>& cpu) {
  if (gpu.size() != cpu.size()) return "sizes differ";
  const auto g = bits(gpu), c = bits(cpu);
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (g[i] != c[i]) {
      std::ostringstream s;
      s << "element " << i << " of " << g.size() << ": gpu " << gpu[i] << ", cpu " << cpu[i];
      return s.str();
    }
  }
  return {};
}

}  // namespace

TEMPLATE_TEST_CASE("device_fill writes the value to every element", "[cuda][primitives]", float,
                   double, bf16, std::int32_t) {
  using T = TestType;
  const std::int64_t n = GENERATE(1, 7, 8, 1000, 5461, 50257);
  const std::int64_t offset = GENERATE(0, 1);  // 1: off the 16-byte grid
  INFO("n " << n << " offset " << offset);
  const T value = fathom::scalar_cast<T>(-3.25);
  auto base = Tensor<T, Cuda>::zeros(Shape{n + offset});
  auto view = base.slice(0, offset, n + offset);
  view.fill_(value);
  auto got = base.to_vector();
  std::vector<T> want(got.size(), value);
  if (offset) want[0] = fathom::scalar_cast<T>(0.0);  // the element before the view is untouched
  CHECK(first_difference(got, want) == "");
}

TEMPLATE_TEST_CASE("device_strided_copy packs views exactly as the CPU does", "[cuda][primitives]",
                   float, double, bf16) {
  using T = TestType;
  auto cpu = Tensor<double>::randn(Shape{6, 35, 17}, 1).template cast<T>();
  auto gpu = to_gpu(cpu);
  auto check = [](const char* what, const Tensor<T, Cpu>& c, const Tensor<T, Cuda>& g) {
    INFO(what << " shape " << c.shape() << " strides " << c.strides());
    REQUIRE(g.shape() == c.shape());
    CHECK(first_difference(g.contiguous().to_vector(), c.contiguous().to_vector()) == "");
  };
  check("transpose(0, 2)", cpu.transpose(0, 2), gpu.transpose(0, 2));
  check("transpose(1, 2)", cpu.transpose(1, 2), gpu.transpose(1, 2));
  check("slice(2, 3, 16)", cpu.slice(2, 3, 16), gpu.slice(2, 3, 16));
  check("slice(1, 1, 34)", cpu.slice(1, 1, 34), gpu.slice(1, 1, 34));
  check("select(1, 4)", cpu.select(1, 4), gpu.select(1, 4));
  check("transpose(0, 1).slice(2, 0, 5)", cpu.transpose(0, 1).slice(2, 0, 5),
        gpu.transpose(0, 1).slice(2, 0, 5));
  check("select(2, 16).transpose(0, 1)", cpu.select(2, 16).transpose(0, 1),
        gpu.select(2, 16).transpose(0, 1));
  check("slice(0, 2, 3) (extent 1)", cpu.slice(0, 2, 3).transpose(0, 2),
        gpu.slice(0, 2, 3).transpose(0, 2));

  // A large strided copy: the grid-stride loop covers more elements than one launch has threads.
  auto big_cpu = Tensor<double>::randn(Shape{2048, 1031}, 2).template cast<T>();
  auto big_gpu = to_gpu(big_cpu);
  check("(2048, 1031) transpose", big_cpu.transpose(0, 1), big_gpu.transpose(0, 1));

  // copy_ into a contiguous destination from a strided device source.
  Tensor<T, Cuda> dst(Shape{17, 35, 6});
  dst.copy_(gpu.transpose(0, 2));
  CHECK(first_difference(dst.to_vector(), cpu.transpose(0, 2).contiguous().to_vector()) == "");
}

TEST_CASE("device_cast converts exactly as the CPU does, bf16 to nearest even",
          "[cuda][primitives]") {
  const std::int64_t n = GENERATE(1, 9, 4096, 50257);
  const std::int64_t offset = GENERATE(0, 1);
  INFO("n " << n << " offset " << offset);
  auto d =
      Tensor<double>::randn(Shape{n + offset}, 3, 10.0).slice(0, offset, n + offset).contiguous();
  auto f = d.cast<float>();
  auto h = f.cast<bf16>();
  // Sources on the device at the same offset: the cast sees pointers off the 16-byte grid.
  auto on_device = [offset, n](const auto& t) {
    using T = typename std::decay_t<decltype(t)>::value_type;
    auto base = Tensor<T, Cuda>::zeros(Shape{n + offset});
    auto v = base.slice(0, offset, n + offset);
    v.copy_(t);
    return v;
  };
  auto dg = on_device(d);
  auto fg = on_device(f);
  auto hg = on_device(h);
  CHECK(first_difference(dg.cast<float>().to_vector(), f.to_vector()) == "");
  CHECK(first_difference(fg.cast<bf16>().to_vector(), h.to_vector()) == "");
  CHECK(first_difference(dg.cast<bf16>().to_vector(), d.cast<bf16>().to_vector()) == "");
  CHECK(first_difference(hg.cast<float>().to_vector(), h.cast<float>().to_vector()) == "");
  CHECK(first_difference(fg.cast<double>().to_vector(), f.cast<double>().to_vector()) == "");
  CHECK(first_difference(hg.cast<double>().to_vector(), h.cast<double>().to_vector()) == "");
}

TEST_CASE("device_cast rounds halfway bf16 cases to even", "[cuda][primitives]") {
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7 (ties to 1); 1 + 3 * 2^-8 ties to 1 + 2^-6.
  auto f = Tensor<float, Cuda>::from_vector(Shape{2}, {1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f});
  auto h = f.cast<bf16>().to_vector();
  CHECK(static_cast<float>(h[0]) == 1.0f);
  CHECK(static_cast<float>(h[1]) == 1.0f + 1.0f / 64.0f);
}

namespace primitives_test {

// out[i] = element i % N of the WordPack loaded from pack i / N of in: a pack read back as words.
template <class T, int N>
__global__ void word_pack_elements(const T* in, T* out, std::int64_t packs) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= packs) return;
  const auto pack = fathom::kernels::detail::word_load<N>(in + k * N);
#pragma unroll
  for (int j = 0; j < N; ++j) out[k * N + j] = pack[j];
}

// Each thread rounds pack k of `in` (8 floats) three ways: element by element through bf16's own
// conversion (scalar_cast), as a pack (round_store), and reads the CPU-rounded pack `rounded` back
// to floats through unpack and WordPack::get.
__global__ void bf16_conversions(const float* in, const bf16* rounded, bf16* by_scalar,
                                 bf16* by_pack, float* by_unpack, float* by_word,
                                 std::int64_t packs) {
  namespace d = fathom::kernels::detail;
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= packs) return;
  float v[8];
  for (int j = 0; j < 8; ++j) {
    v[j] = in[k * 8 + j];
    by_scalar[k * 8 + j] = fathom::scalar_cast<bf16>(v[j]);
  }
  d::round_store<8>(by_pack + k * 8, v);
  float back[8];
  d::unpack(d::map_load<8>(rounded + k * 8), back);
  const auto words = d::word_load<8>(rounded + k * 8);
  for (int j = 0; j < 8; ++j) {
    by_unpack[k * 8 + j] = back[j];
    by_word[k * 8 + j] = words.template get<float>(j);
  }
}

}  // namespace primitives_test

TEMPLATE_TEST_CASE("WordPack gives back each element of a 16-byte pack as stored",
                   "[cuda][primitives]", float, double, bf16) {
  using T = TestType;
  constexpr int N = fathom::kernels::detail::map_width<T>();
  const std::int64_t packs = 333;
  // Distinct values in every element, so a half or word read from the wrong place shows.
  const auto x = Tensor<double>::randn(Shape{packs * N}, 17).template cast<T>();
  const auto in = to_gpu(x);
  Tensor<T, Cuda> out(Shape{packs * N});
  out.fill_(T(7));
  primitives_test::word_pack_elements<T, N>
      <<<static_cast<unsigned>((packs + 127) / 128), 128, 0, fathom::cuda::stream()>>>(
          in.data(), out.data(), packs);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  CHECK(first_difference(out.to_vector(), x.to_vector()) == "");
}

TEST_CASE("bf16 rounding and widening in device code give the CPU's bits for every kind of float",
          "[cuda][primitives]") {
  // Every bf16 upper half with low halves that round down, tie (to even both ways), round up and
  // carry into the exponent: zeros, subnormals, normals, the largest finite values (which round
  // to infinity), infinities, and NaNs of both signs with payloads in either half, in packs of 8
  // with and without a NaN (round_store converts a NaN-free pack two values an instruction).
  const std::uint32_t lows[] = {0x0000u, 0x0001u, 0x7fffu, 0x8000u,
                                0x8001u, 0xffffu, 0x4321u, 0xbeefu};
  std::vector<float> x;
  for (std::uint32_t hi = 0; hi <= 0xffffu; ++hi) {
    for (std::uint32_t lo : lows) {
      const std::uint32_t u = (hi << 16) | lo;
      float f;
      std::memcpy(&f, &u, sizeof f);
      x.push_back(f);
    }
  }
  const auto n = static_cast<std::int64_t>(x.size());
  REQUIRE(n % 8 == 0);
  std::vector<bf16> want(x.size());
  std::vector<float> widened(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    want[i] = bf16(x[i]);
    widened[i] = static_cast<float>(want[i]);
  }
  const auto in = Tensor<float, Cuda>::from_vector(Shape{n}, x);
  const auto rounded = Tensor<bf16, Cuda>::from_vector(Shape{n}, want);
  Tensor<bf16, Cuda> by_scalar(Shape{n}), by_pack(Shape{n});
  Tensor<float, Cuda> by_unpack(Shape{n}), by_word(Shape{n});
  by_scalar.fill_(bf16(7.0f));
  by_pack.fill_(bf16(7.0f));
  by_unpack.fill_(7.0f);
  by_word.fill_(7.0f);
  const std::int64_t packs = n / 8;
  primitives_test::bf16_conversions<<<static_cast<unsigned>((packs + 255) / 256), 256, 0,
                                      fathom::cuda::stream()>>>(
      in.data(), rounded.data(), by_scalar.data(), by_pack.data(), by_unpack.data(), by_word.data(),
      packs);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  CHECK(first_difference(by_scalar.to_vector(), want) == "");
  CHECK(first_difference(by_pack.to_vector(), want) == "");
  CHECK(first_difference(by_unpack.to_vector(), widened) == "");
  CHECK(first_difference(by_word.to_vector(), widened) == "");
}
