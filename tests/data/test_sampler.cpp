// Tests for fathom/data/sampler.hpp: windows, determinism, resuming, sequential order, bad sizes.
#include <fathom/data/sampler.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "data/fixtures.hpp"
#include "support/catch.hpp"

using fathom::data::Batch;
using fathom::data::SampleOrder;
using fathom::data::SamplerOptions;
using fathom::data::SamplerState;
using fathom::data::ShardView;
using fathom::data::TokenSource;
using fathom::data::write_shard;
using fathom::test::has;
using fathom::test::random_tokens;
using fathom::test::TempDir;

namespace {

std::vector<std::uint32_t> as_u32(const std::vector<std::int32_t>& v) {
  return {v.begin(), v.end()};
}

SamplerOptions opts(std::int64_t B, std::int64_t T, std::uint64_t seed,
                    SampleOrder order = SampleOrder::random) {
  SamplerOptions o;
  o.batch = B;
  o.seq_len = T;
  o.seed = seed;
  o.order = order;
  return o;
}

// Each row of `b` must be data[start .. start + T) with targets shifted by one, where (shard,
// start) is what the source says row r of `step` reads.
void check_rows(const TokenSource& src, const std::vector<std::vector<std::int32_t>>& data,
                const Batch& b, std::uint64_t step) {
  const std::size_t T = static_cast<std::size_t>(b.seq_len);
  for (std::size_t r = 0; r < static_cast<std::size_t>(b.batch); ++r) {
    auto [shard, start] = src.window(step, r);
    REQUIRE(start + T + 1 <= data[shard].size());
    for (std::size_t t = 0; t < T; ++t) {
      REQUIRE(b.inputs[r * T + t] == data[shard][start + t]);
      REQUIRE(b.targets[r * T + t] == data[shard][start + t + 1]);
    }
  }
}

}  // namespace

TEST_CASE("random batches are contiguous windows with next-token targets", "[data][sampler]") {
  TempDir dir;
  std::vector<std::vector<std::int32_t>> data{
      random_tokens<std::int32_t>(3000, 50000, 1), random_tokens<std::int32_t>(700, 50000, 2),
      random_tokens<std::int32_t>(20, 50000, 3), random_tokens<std::int32_t>(1500, 50000, 4)};
  for (std::size_t i = 0; i < data.size(); ++i)
    write_shard(dir / ("d_train_00000" + std::to_string(i) + ".bin"), as_u32(data[i]));
  // Shard 2 (20 tokens) is shorter than a window and must never be read.
  auto src = TokenSource::from_pattern((dir / "d_train_*.bin").string(), opts(8, 32, 7));
  CHECK(src.num_shards() == 4);
  CHECK(src.num_tokens() == 5220);
  CHECK(src.num_windows() == (3000 - 32) + (700 - 32) + (1500 - 32));
  std::set<std::size_t> shards_seen;
  for (std::uint64_t step = 0; step < 50; ++step) {
    Batch b = src.next();
    REQUIRE(b.inputs.size() == 8 * 32);
    REQUIRE(b.targets.size() == 8 * 32);
    check_rows(src, data, b, step);
    for (std::size_t r = 0; r < 8; ++r) shards_seen.insert(src.window(step, r).first);
  }
  CHECK(shards_seen == std::set<std::size_t>{0, 1, 3});
}

TEST_CASE("random batches depend only on seed and step", "[data][sampler]") {
  auto data = random_tokens<std::int32_t>(10000, 257, 9);
  auto a = TokenSource::from_tokens(data, opts(4, 64, 123));
  auto b = TokenSource::from_tokens(data, opts(4, 64, 123));
  auto c = TokenSource::from_tokens(data, opts(4, 64, 124));
  bool any_differs = false;
  for (int s = 0; s < 20; ++s) {
    Batch ba = a.next(), bb = b.next(), bc = c.next();
    REQUIRE(ba.inputs == bb.inputs);
    REQUIRE(ba.targets == bb.targets);
    any_differs = any_differs || ba.inputs != bc.inputs;
  }
  CHECK(any_differs);
  // Consecutive steps draw different windows.
  auto d = TokenSource::from_tokens(data, opts(4, 64, 123));
  CHECK(d.next().inputs != d.next().inputs);
}

TEST_CASE("a restored state gives the same following batches", "[data][sampler]") {
  TempDir dir;
  write_shard(dir / "a.bin", as_u32(random_tokens<std::int32_t>(5000, 65000, 5)));
  write_shard(dir / "b.bin", as_u32(random_tokens<std::int32_t>(4000, 65000, 6)));
  const auto order = GENERATE(SampleOrder::random, SampleOrder::sequential);
  auto options = opts(3, 50, 99, order);
  auto first = TokenSource::from_pattern((dir / "*.bin").string(), options);
  for (int s = 0; s < 7; ++s) first.next();
  // Through JSON, as a checkpoint's trainer_state.json holds it.
  const std::string saved = nlohmann::json(first.state()).dump();
  std::vector<Batch> expected;
  for (int s = 0; s < 30; ++s) expected.push_back(first.next());

  auto resumed = TokenSource::from_pattern((dir / "*.bin").string(), options);
  resumed.next();  // a position that the restore must overwrite
  SamplerState state = nlohmann::json::parse(saved).get<SamplerState>();
  CHECK(state.step == 7);
  CHECK(state.seed == 99);
  CHECK(state.order == order);
  resumed.set_state(state);
  for (int s = 0; s < 30; ++s) {
    Batch b = resumed.next();
    REQUIRE(b.inputs == expected[s].inputs);
    REQUIRE(b.targets == expected[s].targets);
  }
  CHECK(resumed.state() == first.state());
}

TEST_CASE("sampler state JSON has the documented keys", "[data][sampler]") {
  SamplerState s{42, 1000, 16, 512, 2, SampleOrder::sequential};
  nlohmann::json j = s;
  CHECK(j.at("seed") == 42);
  CHECK(j.at("step") == 1000);
  CHECK(j.at("batch") == 16);
  CHECK(j.at("seq_len") == 512);
  CHECK(j.at("ranks") == 2);
  CHECK(j.at("order") == "sequential");
  CHECK(j.get<SamplerState>() == s);
  CHECK_THROWS_WITH(nlohmann::json::parse(R"({"seed": 1})").get<SamplerState>(),
                    has("sampler state") && has("step"));
  j["order"] = "shuffled";
  CHECK_THROWS_WITH(j.get<SamplerState>(), has("got 'shuffled'"));
}

TEST_CASE("sequential order reads windows at stride T in order and wraps", "[data][sampler]") {
  std::vector<std::vector<std::int32_t>> data{random_tokens<std::int32_t>(101, 1000, 21),
                                              random_tokens<std::int32_t>(45, 1000, 22)};
  std::vector<ShardView> shards{ShardView(as_u32(data[0]), "first"),
                                ShardView(as_u32(data[1]), "second")};
  // T = 10: shard 0 holds windows at 0, 10, ..., 90 (10 windows); shard 1 at 0, 10, 20, 30 (4).
  TokenSource src(shards, opts(3, 10, 0, SampleOrder::sequential));
  CHECK(src.num_windows() == 14);
  CHECK(src.batches_per_pass() == 4);  // 14 windows / 3 rows; the last 2 windows are dropped
  std::vector<std::pair<std::size_t, std::size_t>> expected;
  for (std::size_t p = 0; p <= 90; p += 10) expected.emplace_back(0, p);
  for (std::size_t p = 0; p <= 30; p += 10) expected.emplace_back(1, p);
  for (std::uint64_t step = 0; step < 4; ++step) {
    Batch b = src.next();
    check_rows(src, data, b, step);
    for (std::size_t r = 0; r < 3; ++r) REQUIRE(src.window(step, r) == expected[step * 3 + r]);
  }
  // After a pass it starts over.
  Batch again = src.next();
  CHECK(src.window(4, 0) == expected[0]);
  CHECK(std::vector<std::int32_t>(again.inputs.begin(), again.inputs.begin() + 10) ==
        std::vector<std::int32_t>(data[0].begin(), data[0].begin() + 10));
  src.reset();
  CHECK(src.next().inputs ==
        TokenSource(shards, opts(3, 10, 0, SampleOrder::sequential)).next().inputs);
}

TEST_CASE("ranks split the rows one process would read", "[data][sampler]") {
  auto data = random_tokens<std::int32_t>(2000, 500, 31);
  auto single = TokenSource::from_tokens(data, opts(2, 16, 5, SampleOrder::sequential));
  auto options = opts(2, 16, 5, SampleOrder::sequential);
  options.ranks = 2;
  options.rank = 0;
  auto r0 = TokenSource::from_tokens(data, options);
  options.rank = 1;
  auto r1 = TokenSource::from_tokens(data, options);
  CHECK(r0.batches_per_pass() * 2 == single.batches_per_pass());
  for (int s = 0; s < 5; ++s) {
    REQUIRE(r0.next().inputs == single.next().inputs);
    REQUIRE(r1.next().inputs == single.next().inputs);
  }
  // Random order: rank r's step s is the one process's rows for counter (s * ranks + r).
  auto rs = opts(2, 16, 5);
  auto one = TokenSource::from_tokens(data, rs);
  rs.ranks = 2;
  rs.rank = 1;
  auto two = TokenSource::from_tokens(data, rs);
  CHECK(two.window(3, 1) == one.window(7, 1));
}

TEST_CASE("empty data is rejected", "[data][sampler][errors]") {
  CHECK_THROWS_WITH(TokenSource(std::vector<ShardView>{}, opts(1, 4, 0)),
                    has("empty data") && has("got none"));
  CHECK_THROWS_WITH(TokenSource::from_tokens({}, opts(1, 4, 0), "the built-in corpus"),
                    has("empty data") && has("the built-in corpus"));
}

TEST_CASE("a batch or sequence larger than the data names both sizes", "[data][sampler][errors]") {
  auto data = random_tokens<std::int32_t>(500, 100, 41);
  CHECK_THROWS_WITH(
      TokenSource::from_tokens(data, opts(1, 500, 0), "small data"),
      has("sequence length 500 needs 501 tokens") && has("small data") && has("holds 500"));
  CHECK_THROWS_WITH(TokenSource::from_tokens(data, opts(16, 63, 0)),
                    has("a batch of 16 x 64 tokens") && has("= 1024 tokens") &&
                        has("larger than the data, 500 tokens"));
  // Sequential windows do not overlap, so they can run out before tokens do: 150 + 60 tokens at
  // T = 50 hold 2 + 1 windows, fewer than 4 rows, though 4 x 51 tokens < 210.
  std::vector<ShardView> two{ShardView(as_u32(random_tokens<std::int32_t>(150, 100, 42))),
                             ShardView(as_u32(random_tokens<std::int32_t>(60, 100, 43)))};
  CHECK_THROWS_WITH(TokenSource(two, opts(4, 50, 0, SampleOrder::sequential)),
                    has("a batch of 4 rows") && has("210 tokens hold 3") && has("seq_len 50"));
  CHECK_NOTHROW(TokenSource(two, opts(4, 50, 0, SampleOrder::random)));
  CHECK_THROWS_WITH(TokenSource::from_tokens(data, opts(0, 10, 0)), has("got batch 0"));
  CHECK_NOTHROW(TokenSource::from_tokens(data, opts(4, 99, 0, SampleOrder::sequential)));
}

TEST_CASE("a token id >= vocab is found on construction", "[data][sampler][errors]") {
  TempDir dir;
  auto data = random_tokens<std::int32_t>(3000, 1000, 51);
  data[1234] = 5000;
  write_shard(dir / "x_train_0.bin", as_u32(data));
  auto options = opts(2, 16, 0);
  options.vocab = 1000;
  CHECK_THROWS_WITH(
      TokenSource::from_pattern((dir / "x_train_*.bin").string(), options),
      has("x_train_0.bin") && has("token id 5000 at offset 1234") && has("vocab size 1000"));
  options.vocab = 5001;
  CHECK_NOTHROW(TokenSource::from_pattern((dir / "x_train_*.bin").string(), options));
}

TEST_CASE("a state saved for other sizes is refused", "[data][sampler][errors]") {
  auto data = random_tokens<std::int32_t>(3000, 100, 61);
  auto src = TokenSource::from_tokens(data, opts(4, 32, 0));
  SamplerState other = src.state();
  other.batch = 8;
  CHECK_THROWS_WITH(src.set_state(other), has("batch 8") && has("expected order random, batch 4"));
}
