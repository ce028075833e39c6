// Tests for the CPU embedding kernels (include/fathom/kernels/embedding.hpp): the gather against
// a naive copy, the scatter-add with repeated ids against a double reference, and the error that
// names an out-of-range id, its position and the vocabulary size.
#include <fathom/kernels/embedding.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "fathom/core/rng.hpp"
#include "kernels/support.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

namespace {

using fathom::bf16;
using fathom::Cpu;
using fathom::kernels::EmbeddingBackwardParams;
using fathom::kernels::EmbeddingParams;
using fathom::test::error_of;
using fathom::test::rng_uniform_values;

// n ids in [0, vocab); every third one drawn from the first three ids so that repeats are common.
std::vector<std::int32_t> random_ids(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t range = i % 3 == 0 ? std::min<std::int64_t>(vocab, 3) : vocab;
    ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(
        fathom::rng::uniform(seed, static_cast<std::uint64_t>(i)) * static_cast<double>(range));
  }
  return ids;
}

struct Sizes {
  std::int64_t n, vocab, channels;
};

}  // namespace

TEMPLATE_TEST_CASE("embedding gathers table rows by id", "[kernels][embedding]", double, float,
                   bf16) {
  const Sizes s = GENERATE(values<Sizes>({{1, 1, 1}, {7, 5, 3}, {64, 1000, 37}, {300, 50257, 8}}));
  const auto ids = random_ids(s.n, s.vocab, 3);
  const auto table =
      rng_uniform_values<TestType>(static_cast<std::size_t>(s.vocab * s.channels), 4);
  std::vector<TestType> out(static_cast<std::size_t>(s.n * s.channels));
  fathom::kernels::embedding(Cpu{}, EmbeddingParams<TestType>{.ids = ids.data(),
                                                              .table = table.data(),
                                                              .out = out.data(),
                                                              .n = s.n,
                                                              .vocab = s.vocab,
                                                              .channels = s.channels});
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < s.n; ++i)
    for (std::int64_t c = 0; c < s.channels; ++c)
      bad += !(out[static_cast<std::size_t>(i * s.channels + c)] ==
               table[static_cast<std::size_t>(ids[static_cast<std::size_t>(i)] * s.channels + c)]);
  INFO("n " << s.n << ", vocab " << s.vocab << ", channels " << s.channels);
  CHECK(bad == 0);
}

TEMPLATE_TEST_CASE("embedding_backward scatter-adds rows of repeated ids", "[kernels][embedding]",
                   double, float, bf16) {
  const Sizes s = GENERATE(values<Sizes>({{1, 1, 1}, {9, 4, 5}, {200, 17, 37}, {513, 50257, 4}}));
  const auto ids = random_ids(s.n, s.vocab, 7);
  const auto dout = rng_uniform_values<TestType>(static_cast<std::size_t>(s.n * s.channels), 8);
  auto dtable = rng_uniform_values<TestType>(static_cast<std::size_t>(s.vocab * s.channels), 9);
  std::vector<double> ref(dtable.size()), abs_sum(dtable.size());
  for (std::size_t e = 0; e < dtable.size(); ++e) {
    ref[e] = fathom::scalar_cast<double>(dtable[e]);
    abs_sum[e] = std::abs(ref[e]);
  }
  for (std::int64_t i = 0; i < s.n; ++i) {
    for (std::int64_t c = 0; c < s.channels; ++c) {
      const auto e = static_cast<std::size_t>(ids[static_cast<std::size_t>(i)] * s.channels + c);
      const double g =
          fathom::scalar_cast<double>(dout[static_cast<std::size_t>(i * s.channels + c)]);
      ref[e] += g;
      abs_sum[e] += std::abs(g);
    }
  }
  fathom::kernels::embedding_backward(Cpu{},
                                      EmbeddingBackwardParams<TestType>{.ids = ids.data(),
                                                                        .dout = dout.data(),
                                                                        .dtable = dtable.data(),
                                                                        .n = s.n,
                                                                        .vocab = s.vocab,
                                                                        .channels = s.channels});
  const double rtol = fathom::Precision<TestType>::rtol, atol = fathom::Precision<TestType>::atol;
  std::int64_t bad = 0;
  std::size_t first = 0;
  for (std::size_t e = 0; e < dtable.size(); ++e) {
    const double got = fathom::scalar_cast<double>(dtable[e]);
    if (!(std::abs(got - ref[e]) <= atol + rtol * abs_sum[e]) && bad++ == 0) first = e;
  }
  INFO("n " << s.n << ", vocab " << s.vocab << ", channels " << s.channels
            << ": first mismatch at row " << first / static_cast<std::size_t>(s.channels)
            << ", channel " << first % static_cast<std::size_t>(s.channels) << ": got "
            << fathom::scalar_cast<double>(dtable[first]) << ", expected " << ref[first]);
  CHECK(bad == 0);
}

TEST_CASE("embedding names an out-of-range id, its position and the vocabulary size",
          "[kernels][embedding]") {
  const std::int64_t vocab = 11, channels = 2;
  const auto table = rng_uniform_values<float>(vocab * channels, 1);
  std::vector<float> out(5 * channels), dout = rng_uniform_values<float>(5 * channels, 2),
                                        dtable = table;
  for (std::int32_t bad_id : {11, -1, 1000}) {
    const std::vector<std::int32_t> ids = {0, 10, 3, bad_id, 4};
    const std::string forward = error_of([&] {
      fathom::kernels::embedding(Cpu{}, EmbeddingParams<float>{.ids = ids.data(),
                                                               .table = table.data(),
                                                               .out = out.data(),
                                                               .n = 5,
                                                               .vocab = vocab,
                                                               .channels = channels});
    });
    const std::string backward = error_of([&] {
      fathom::kernels::embedding_backward(Cpu{},
                                          EmbeddingBackwardParams<float>{.ids = ids.data(),
                                                                         .dout = dout.data(),
                                                                         .dtable = dtable.data(),
                                                                         .n = 5,
                                                                         .vocab = vocab,
                                                                         .channels = channels});
    });
    for (const std::string& msg : {forward, backward}) {
      INFO(msg);
      CHECK(msg.find("id " + std::to_string(bad_id) + " at position 3") != std::string::npos);
      CHECK(msg.find("table of 11 rows") != std::string::npos);
    }
  }
  CHECK(dtable == table);  // the backward checks every id before touching the gradient
}
