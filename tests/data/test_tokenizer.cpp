// Tests for fathom/data/tokenizer.hpp: the byte tokenizer round-trips any bytes.
#include <fathom/data/tokenizer.hpp>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/fixtures.hpp"
#include "support/catch.hpp"

using fathom::data::ByteTokenizer;
using fathom::test::has;

TEST_CASE("ByteTokenizer round-trips random bytes", "[data][tokenizer]") {
  const std::size_t n = GENERATE(1, 17, 4096);
  std::mt19937 gen(static_cast<unsigned>(n));
  std::uniform_int_distribution<int> byte(0, 255);
  std::string text(n, '\0');
  for (char& c : text) c = static_cast<char>(byte(gen));
  std::unique_ptr<fathom::data::Tokenizer> tok = std::make_unique<ByteTokenizer>();
  auto ids = tok->encode(text);
  REQUIRE(ids.size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(ids[i] >= 0);
    REQUIRE(ids[i] < 256);
    REQUIRE(ids[i] == static_cast<unsigned char>(text[i]));
  }
  CHECK(tok->decode(ids) == text);
}

TEST_CASE("ByteTokenizer has one special token, id 256", "[data][tokenizer]") {
  ByteTokenizer tok;
  CHECK(tok.vocab_size() == 257);
  CHECK(tok.eos_id() == 256);
  CHECK(tok.bos_id() == 256);
  CHECK(tok.name() == "byte");
  // The special token's text is ordinary bytes when encoded, so encode never yields 256.
  auto ids = tok.encode("a<|endoftext|>b");
  CHECK(ids.size() == 15);
  for (auto id : ids) CHECK(id < 256);
  std::vector<std::int32_t> with_eos{'h', 'i', 256, 'x'};
  CHECK(tok.decode(with_eos) == "hi<|endoftext|>x");
}

TEST_CASE("ByteTokenizer rejects ids outside the vocabulary", "[data][tokenizer][errors]") {
  ByteTokenizer tok;
  std::vector<std::int32_t> bad{'a', 257};
  CHECK_THROWS_WITH(tok.decode(bad), has("got 257 at position 1"));
  std::vector<std::int32_t> negative{-3};
  CHECK_THROWS_WITH(tok.decode(negative), has("got -3"));
}
