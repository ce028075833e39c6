// [cuda] tests for the CUDA embedding kernels (include/fathom/kernels/cuda/embedding.cuh) and the
// embedding op on CUDA: the gather against the CPU kernel (vocabulary 50257, widths 768, 37 and
// 1, unaligned output), the sorted scatter-add with heavily repeated ids against a double
// reference and bitwise run to run, runs of ids across the backward's chunk boundaries, NaN rows
// and skipped gradients for out-of-range ids.
#include <fathom/autograd/ops/embedding.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/embedding.cuh>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Precision;
using fathom::scalar_cast;
using fathom::Shape;
using fathom::Tensor;
using fathom::kernels::EmbeddingBackwardParams;
using fathom::kernels::EmbeddingParams;

using namespace fathom::test;

namespace {

// n ids in [0, vocab): half from the first 5 ids (long runs of repeats, like frequent tokens),
// half from the whole vocabulary.
std::vector<std::int32_t> random_ids(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t range = i % 2 == 0 ? std::min<std::int64_t>(vocab, 5) : vocab;
    ids[i] = static_cast<std::int32_t>(hashed_uniform(seed, static_cast<std::uint64_t>(i)) *
                                       static_cast<double>(range));
  }
  return ids;
}

struct Sizes {
  std::int64_t n, vocab, channels;
};

}  // namespace

TEMPLATE_TEST_CASE("CUDA embedding gathers the rows the CPU gathers", "[cuda][embedding]", double,
                   float, bf16) {
  const Sizes s =
      GENERATE(values<Sizes>({{8192, 50257, 768}, {1000, 50257, 37}, {300, 7, 1}, {1, 1, 8}}));
  const std::int64_t offset = GENERATE(0, 1);  // 1: output off the 16-byte grid
  const auto ids = random_ids(s.n, s.vocab, 1);
  const auto table = uniform_values<TestType>(static_cast<std::size_t>(s.vocab * s.channels), 2);
  std::vector<TestType> want(static_cast<std::size_t>(s.n * s.channels));
  fathom::kernels::embedding(Cpu{}, EmbeddingParams<TestType>{.ids = ids.data(),
                                                              .table = table.data(),
                                                              .out = want.data(),
                                                              .n = s.n,
                                                              .vocab = s.vocab,
                                                              .channels = s.channels});
  auto ids_dev = to_device(ids);
  auto table_dev = to_device(table);
  Tensor<TestType, Cuda> out_dev(Shape{offset + s.n * s.channels});
  fathom::kernels::embedding(Cuda{}, EmbeddingParams<TestType>{.ids = ids_dev.data(),
                                                               .table = table_dev.data(),
                                                               .out = out_dev.data() + offset,
                                                               .n = s.n,
                                                               .vocab = s.vocab,
                                                               .channels = s.channels});
  auto got = out_dev.to_vector();
  got.erase(got.begin(), got.begin() + offset);
  INFO(Precision<TestType>::name << " n " << s.n << ", vocab " << s.vocab << ", channels "
                                 << s.channels << ", offset " << offset);
  CHECK(same_bits(got, want));
}

TEMPLATE_TEST_CASE("CUDA embedding_backward sums repeated ids like the CPU, bitwise run to run",
                   "[cuda][embedding]", double, float, bf16) {
  const Sizes s =
      GENERATE(values<Sizes>({{256 * 128, 50257, 768}, {4097, 50257, 37}, {513, 3, 1}, {1, 1, 5}}));
  const auto ids = random_ids(s.n, s.vocab, 3);
  const auto dout = uniform_values<TestType>(static_cast<std::size_t>(s.n * s.channels), 4);
  const auto dtable0 = uniform_values<TestType>(static_cast<std::size_t>(s.vocab * s.channels), 5);

  auto ids_dev = to_device(ids);
  auto dout_dev = to_device(dout);
  auto run = [&] {
    auto dtable_dev = to_device(dtable0);
    fathom::kernels::embedding_backward(
        Cuda{}, EmbeddingBackwardParams<TestType>{.ids = ids_dev.data(),
                                                  .dout = dout_dev.data(),
                                                  .dtable = dtable_dev.data(),
                                                  .n = s.n,
                                                  .vocab = s.vocab,
                                                  .channels = s.channels});
    return dtable_dev.to_vector();
  };
  const auto got = run();
  CHECK(same_bits(got, run()));

  std::vector<double> ref(dtable0.size()), abs_sum(dtable0.size());
  for (std::size_t e = 0; e < ref.size(); ++e)
    ref[e] = scalar_cast<double>(dtable0[e]), abs_sum[e] = std::abs(ref[e]);
  for (std::int64_t i = 0; i < s.n; ++i)
    for (std::int64_t c = 0; c < s.channels; ++c) {
      const double g = scalar_cast<double>(dout[i * s.channels + c]);
      ref[ids[i] * s.channels + c] += g;
      abs_sum[ids[i] * s.channels + c] += std::abs(g);
    }
  std::int64_t bad = 0;
  std::size_t first = 0;
  for (std::size_t e = 0; e < ref.size(); ++e) {
    const double tol = Precision<TestType>::atol + Precision<TestType>::rtol * abs_sum[e];
    if (!(std::abs(scalar_cast<double>(got[e]) - ref[e]) <= tol) && bad++ == 0) first = e;
  }
  INFO(Precision<TestType>::name << " n " << s.n << ", vocab " << s.vocab << ", channels "
                                 << s.channels << ": first mismatch at row " << first / s.channels
                                 << ", channel " << first % s.channels << ": got "
                                 << scalar_cast<double>(got[first]) << ", want " << ref[first]);
  CHECK(bad == 0);
}

TEMPLATE_TEST_CASE("CUDA embedding_backward sums runs that start, end and span at chunk boundaries",
                   "[cuda][embedding]", double, float, bf16) {
  // The backward sums sorted ids in chunks of 64 positions. Runs of exactly 64, runs ending one
  // short of or one past a boundary, a run over several chunks and out-of-range ids (sorted last),
  // shuffled so that the sort has work to do.
  const std::int64_t vocab = 8;
  const std::int64_t channels = GENERATE(3, 129);
  std::vector<std::int32_t> ids;
  for (auto [id, count] : std::vector<std::pair<std::int32_t, int>>{{0, 64},
                                                                    {1, 64},
                                                                    {2, 1},
                                                                    {3, 63},
                                                                    {4, 65},
                                                                    {5, 130},
                                                                    {6, 1},
                                                                    {9, 70},
                                                                    {-3, 2},
                                                                    {7, 200}})
    ids.insert(ids.end(), static_cast<std::size_t>(count), id);
  const std::int64_t n = static_cast<std::int64_t>(ids.size());
  for (std::int64_t i = n - 1; i > 0; --i)  // a fixed shuffle
    std::swap(ids[i],
              ids[static_cast<std::int64_t>(hashed_uniform(12, static_cast<std::uint64_t>(i)) *
                                            static_cast<double>(i + 1))]);
  const auto dout = uniform_values<TestType>(static_cast<std::size_t>(n * channels), 13);
  const auto dtable0 = uniform_values<TestType>(static_cast<std::size_t>(vocab * channels), 14);
  auto ids_dev = to_device(ids);
  auto dout_dev = to_device(dout), dtable_dev = to_device(dtable0);
  fathom::kernels::embedding_backward(Cuda{},
                                      EmbeddingBackwardParams<TestType>{.ids = ids_dev.data(),
                                                                        .dout = dout_dev.data(),
                                                                        .dtable = dtable_dev.data(),
                                                                        .n = n,
                                                                        .vocab = vocab,
                                                                        .channels = channels});
  const auto got = dtable_dev.to_vector();
  std::vector<double> ref(dtable0.size()), abs_sum(dtable0.size());
  for (std::size_t e = 0; e < ref.size(); ++e)
    ref[e] = scalar_cast<double>(dtable0[e]), abs_sum[e] = std::abs(ref[e]);
  for (std::int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) continue;
    for (std::int64_t c = 0; c < channels; ++c) {
      const double g = scalar_cast<double>(dout[i * channels + c]);
      ref[ids[i] * channels + c] += g, abs_sum[ids[i] * channels + c] += std::abs(g);
    }
  }
  for (std::size_t e = 0; e < ref.size(); ++e) {
    INFO(Precision<TestType>::name << " channels " << channels << ": row " << e / channels
                                   << ", channel " << e % channels);
    REQUIRE(std::abs(scalar_cast<double>(got[e]) - ref[e]) <=
            Precision<TestType>::atol + Precision<TestType>::rtol * abs_sum[e]);
  }
}

TEST_CASE("CUDA embedding writes NaN rows for out-of-range ids and its backward skips them",
          "[cuda][embedding]") {
  const std::int64_t vocab = 6, channels = 4;
  const std::vector<std::int32_t> ids = {2, 6, 2, -1, 5, 1000, 0};
  const std::int64_t n = static_cast<std::int64_t>(ids.size());
  const auto table = uniform_values<float>(vocab * channels, 7);
  auto ids_dev = to_device(ids);
  auto table_dev = to_device(table);
  Tensor<float, Cuda> out_dev(Shape{n * channels});
  fathom::kernels::embedding(Cuda{}, EmbeddingParams<float>{.ids = ids_dev.data(),
                                                            .table = table_dev.data(),
                                                            .out = out_dev.data(),
                                                            .n = n,
                                                            .vocab = vocab,
                                                            .channels = channels});
  const auto out = out_dev.to_vector();
  for (std::int64_t i = 0; i < n; ++i) {
    const bool valid = ids[i] >= 0 && ids[i] < vocab;
    for (std::int64_t c = 0; c < channels; ++c) {
      INFO("position " << i << " (id " << ids[i] << "), channel " << c);
      if (valid)
        CHECK(out[i * channels + c] == table[ids[i] * channels + c]);
      else
        CHECK(std::isnan(out[i * channels + c]));
    }
  }

  const auto dout = uniform_values<float>(n * channels, 8);
  auto dout_dev = to_device(dout), dtable_dev = to_device(table);
  fathom::kernels::embedding_backward(Cuda{},
                                      EmbeddingBackwardParams<float>{.ids = ids_dev.data(),
                                                                     .dout = dout_dev.data(),
                                                                     .dtable = dtable_dev.data(),
                                                                     .n = n,
                                                                     .vocab = vocab,
                                                                     .channels = channels});
  const auto dtable = dtable_dev.to_vector();
  std::vector<double> ref(table.begin(), table.end());
  for (std::int64_t i = 0; i < n; ++i)
    if (ids[i] >= 0 && ids[i] < vocab)
      for (std::int64_t c = 0; c < channels; ++c)
        ref[ids[i] * channels + c] += dout[i * channels + c];
  for (std::size_t e = 0; e < ref.size(); ++e) {
    INFO("table element " << e);
    CHECK_THAT(static_cast<double>(dtable[e]), WithinAbs(ref[e], 1e-5));
  }
}

TEMPLATE_TEST_CASE("embedding op on CUDA matches the CPU, forward and backward",
                   "[cuda][embedding]", float, bf16) {
  using T = TestType;
  using fathom::autograd::Var;
  const std::int64_t vocab = 50257, channels = 64;
  const Shape ids_shape{4, 33};
  const auto ids = random_ids(ids_shape.numel(), vocab, 9);
  const auto table = uniform_values<T>(static_cast<std::size_t>(vocab * channels), 10);
  const auto gy = uniform_values<T>(static_cast<std::size_t>(ids_shape.numel() * channels), 11);
  auto run = [&]<class D>(D) {
    Var<T, D> t(Tensor<T, Cpu>::from_vector({vocab, channels}, table).template to<D>(), true);
    auto y = fathom::autograd::embedding(
        Tensor<std::int32_t, Cpu>::from_vector(ids_shape, ids).template to<D>(), t);
    REQUIRE(y.shape() == Shape{4, 33, channels});
    fathom::autograd::backward(y,
                               Tensor<T, Cpu>::from_vector({4, 33, channels}, gy).template to<D>());
    return std::make_pair(y.value().template to<Cpu>().to_vector(),
                          t.grad().template to<Cpu>().to_vector());
  };
  const auto cpu = run(Cpu{}), gpu = run(Cuda{});
  CHECK(same_bits(gpu.first, cpu.first));
  std::int64_t bad = 0;
  for (std::size_t e = 0; e < cpu.second.size(); ++e) {
    const double want = scalar_cast<double>(cpu.second[e]);
    bad += !(std::abs(scalar_cast<double>(gpu.second[e]) - want) <=
             Precision<T>::atol + Precision<T>::rtol * std::abs(want));
  }
  INFO(Precision<T>::name << ": " << bad << " table-gradient elements differ");
  CHECK(bad == 0);
}
