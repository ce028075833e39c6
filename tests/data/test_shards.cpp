// Tests for fathom/data/shards.hpp: round trips in both widths and every malformed-shard error.
#include <fathom/data/shards.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "data/fixtures.hpp"
#include "support/catch.hpp"

using fathom::data::Shard;
using fathom::data::ShardView;
using fathom::data::TokenWidth;
using fathom::data::write_shard;
using fathom::test::has;
using fathom::test::random_tokens;
using fathom::test::TempDir;

namespace {

std::uintmax_t file_bytes(const std::filesystem::path& p) { return std::filesystem::file_size(p); }

}  // namespace

TEST_CASE("shards round-trip in the narrowest width", "[data][shards]") {
  TempDir dir;
  const std::size_t n = GENERATE(1, 7, 5000, 10007);
  SECTION("uint16 when every id < 65536") {
    auto tokens = random_tokens<std::uint32_t>(n, 50257, static_cast<unsigned>(n));
    tokens.back() = 65535;  // the largest id uint16 holds
    write_shard(dir / "a.bin", tokens);
    CHECK(file_bytes(dir / "a.bin") == 1024 + 2 * n);
    Shard s = fathom::data::read_shard(dir / "a.bin");
    CHECK(s.width == TokenWidth::u16);
    CHECK(s.tokens == tokens);
    CHECK(fathom::data::read_shard_header(dir / "a.bin").num_tokens == n);
  }
  SECTION("uint32 when an id is >= 65536") {
    auto tokens = random_tokens<std::uint32_t>(n, 128256, static_cast<unsigned>(n) + 1);
    tokens.front() = 65536;
    write_shard(dir / "b.bin", tokens);
    CHECK(file_bytes(dir / "b.bin") == 1024 + 4 * n);
    Shard s = fathom::data::read_shard(dir / "b.bin");
    CHECK(s.width == TokenWidth::u32);
    CHECK(s.tokens == tokens);
  }
  SECTION("uint32 on request even when ids fit uint16") {
    auto tokens = random_tokens<std::uint32_t>(n, 300, static_cast<unsigned>(n) + 2);
    write_shard(dir / "c.bin", tokens, TokenWidth::u32);
    Shard s = fathom::data::read_shard(dir / "c.bin");
    CHECK(s.width == TokenWidth::u32);
    CHECK(s.tokens == tokens);
  }
}

TEST_CASE("shard header matches the llm.c layout", "[data][shards]") {
  TempDir dir;
  std::vector<std::uint32_t> tokens{3, 1, 4, 1, 5};
  write_shard(dir / "a.bin", tokens);
  std::ifstream in(dir / "a.bin", std::ios::binary);
  std::int32_t header[256];
  in.read(reinterpret_cast<char*>(header), sizeof header);
  CHECK(header[0] == 20240520);
  CHECK(header[1] == 1);
  CHECK(header[2] == 5);
  for (int i = 3; i < 256; ++i) REQUIRE(header[i] == 0);
  std::uint16_t body[5];
  in.read(reinterpret_cast<char*>(body), sizeof body);
  CHECK(std::vector<std::uint32_t>(body, body + 5) == tokens);

  write_shard(dir / "b.bin", tokens, TokenWidth::u32);
  std::ifstream in32(dir / "b.bin", std::ios::binary);
  in32.read(reinterpret_cast<char*>(header), sizeof header);
  CHECK(header[0] == 20240801);
  CHECK(header[1] == 7);
  CHECK(header[2] == 5);
}

TEST_CASE("ShardView maps the same tokens read_shard reads", "[data][shards]") {
  TempDir dir;
  auto narrow = random_tokens<std::uint32_t>(3001, 65536, 11);
  auto wide = random_tokens<std::uint32_t>(2999, 200000, 12);
  write_shard(dir / "n.bin", narrow);
  write_shard(dir / "w.bin", wide);
  ShardView vn(dir / "n.bin"), vw(dir / "w.bin");
  REQUIRE(vn.size() == narrow.size());
  REQUIRE(vw.size() == wide.size());
  CHECK(vn.width() == TokenWidth::u16);
  CHECK(vw.width() == TokenWidth::u32);
  for (std::size_t i = 0; i < narrow.size(); ++i) REQUIRE(vn[i] == narrow[i]);
  for (std::size_t i = 0; i < wide.size(); ++i) REQUIRE(vw[i] == wide[i]);
  std::vector<std::int32_t> out(10);
  vw.copy_to(100, 10, out.data());
  for (int k = 0; k < 10; ++k) CHECK(out[k] == static_cast<std::int32_t>(wide[100 + k]));
  CHECK(vn.name().find("n.bin") != std::string::npos);
}

TEST_CASE("a missing shard names the file", "[data][shards][errors]") {
  TempDir dir;
  const std::string path = (dir / "nope.bin").string();
  CHECK_THROWS_WITH(fathom::data::read_shard(path), has(path) && has("no such file"));
  CHECK_THROWS_WITH(ShardView(path), has(path) && has("no such file"));
}

TEST_CASE("a bad magic names the magic read and the two valid ones", "[data][shards][errors]") {
  TempDir dir;
  const auto path = dir / "bad_magic.bin";
  fathom::test::write_raw_shard(path, 12345678, 1, 2, std::string(4, 'x'));
  CHECK_THROWS_WITH(fathom::data::read_shard(path), has("bad_magic.bin") && has("got 12345678") &&
                                                        has("20240520") && has("20240801"));
  CHECK_THROWS_WITH(ShardView(path), has("bad_magic.bin") && has("got 12345678"));
}

TEST_CASE("a bad version names the magic, the expected and the found version",
          "[data][shards][errors]") {
  TempDir dir;
  const auto p16 = dir / "v16.bin", p32 = dir / "v32.bin";
  fathom::test::write_raw_shard(p16, 20240520, 7, 2, std::string(4, 'x'));
  fathom::test::write_raw_shard(p32, 20240801, 1, 2, std::string(8, 'x'));
  CHECK_THROWS_WITH(fathom::data::read_shard(p16),
                    has("v16.bin") && has("expects version 1") && has("got version 7"));
  CHECK_THROWS_WITH(fathom::data::read_shard(p32),
                    has("v32.bin") && has("expects version 7") && has("got version 1"));
}

TEST_CASE("a truncated shard says how many tokens the header promised and the file holds",
          "[data][shards][errors]") {
  TempDir dir;
  auto tokens = random_tokens<std::uint32_t>(1000, 50000, 3);
  write_shard(dir / "full.bin", tokens);
  const auto path = dir / "cut.bin";
  std::filesystem::copy_file(dir / "full.bin", path);
  std::filesystem::resize_file(path, 1024 + 2 * 998);
  CHECK_THROWS_WITH(fathom::data::read_shard(path), has("cut.bin") &&
                                                        has("header says 1000 uint16 tokens") &&
                                                        has("file holds 998") && has("truncated"));
  CHECK_THROWS_WITH(ShardView(path), has("cut.bin") && has("file holds 998"));

  std::filesystem::resize_file(path, 1024 + 2 * 998 + 1);
  CHECK_THROWS_WITH(fathom::data::read_shard(path), has("file holds 998 and a partial token"));

  std::filesystem::resize_file(path, 100);
  CHECK_THROWS_WITH(fathom::data::read_shard(path),
                    has("cut.bin") && has("100 bytes") && has("1024-byte header"));
}

TEST_CASE("an empty shard is rejected on read and on write", "[data][shards][errors]") {
  TempDir dir;
  const auto path = dir / "empty.bin";
  fathom::test::write_raw_shard(path, 20240520, 1, 0, "");
  CHECK_THROWS_WITH(fathom::data::read_shard(path),
                    has("empty.bin") && has("header says 0 tokens") && has("non-empty"));
  std::vector<std::uint32_t> none;
  CHECK_THROWS_WITH(write_shard(dir / "out.bin", none), has("out.bin") && has("got none"));
  CHECK_FALSE(std::filesystem::exists(dir / "out.bin"));
}

TEST_CASE("validate names the offset and id of a token >= vocab", "[data][shards][errors]") {
  TempDir dir;
  auto tokens = random_tokens<std::uint32_t>(4000, 1000, 5);
  tokens[2718] = 1000;
  tokens[3000] = 4000;
  write_shard(dir / "v.bin", tokens);
  Shard s = fathom::data::read_shard(dir / "v.bin");
  CHECK_NOTHROW(s.validate(4001));
  CHECK_THROWS_WITH(s.validate(1000),
                    has("v.bin") && has("token id 1000 at offset 2718") && has("vocab size 1000"));
  ShardView view(dir / "v.bin");
  CHECK_THROWS_WITH(view.validate(1000), has("v.bin") && has("token id 1000 at offset 2718"));
  CHECK_THROWS_WITH(view.validate(1001), has("token id 4000 at offset 3000"));
}

TEST_CASE("write_shard refuses ids that do not fit the requested width", "[data][shards][errors]") {
  TempDir dir;
  std::vector<std::uint32_t> tokens{1, 2, 70000, 3};
  CHECK_THROWS_WITH(write_shard(dir / "x.bin", tokens, TokenWidth::u16),
                    has("x.bin") && has("token id 70000 at offset 2") && has("uint16"));
}

TEST_CASE("a failed write leaves the previous shard intact", "[data][shards][errors]") {
  TempDir dir;
  std::vector<std::uint32_t> good{9, 8, 7};
  write_shard(dir / "s.bin", good);
  std::vector<std::uint32_t> bad{1, 70000};
  CHECK_THROWS(write_shard(dir / "s.bin", bad, TokenWidth::u16));
  CHECK(fathom::data::read_shard(dir / "s.bin").tokens == good);
}
