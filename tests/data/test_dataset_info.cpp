// Tests for fathom/data/dataset_info.hpp: the vocabulary and tokenizer that fathom-prepare's
// dataset.json gives, found from a shard pattern, and every malformed file's error.
#include <fathom/data/dataset_info.hpp>

#include <fstream>
#include <string>

#include "data/fixtures.hpp"
#include "support/catch.hpp"

using fathom::data::find_dataset_info;
using fathom::data::read_dataset_info;
using fathom::test::has;
using fathom::test::TempDir;

namespace {

void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p) << text;
}

}  // namespace

TEST_CASE("dataset.json gives the data's vocabulary and tokenizer", "[data][dataset_info]") {
  TempDir dir;
  SECTION("byte shards") {
    write_text(
        dir / "dataset.json",
        R"({"tokenizer": {"type": "byte", "vocab_size": 257, "eos_id": 256, "bos_id": 256}})");
    const auto info = find_dataset_info((dir / "train_*.bin").string());
    REQUIRE(info.has_value());
    CHECK(info->tokenizer == "byte");
    CHECK(info->vocab_size == 257);
    CHECK(info->eos_id == 256);
    CHECK(info->tokenizer_model.empty());
  }
  SECTION("sentencepiece shards name their model beside them") {
    write_text(
        dir / "dataset.json",
        R"({"tokenizer": {"type": "sentencepiece", "model": "tokenizer.model", "vocab_size": 16384,
                   "eos_id": 2, "bos_id": 1}})");
    write_text(dir / "tokenizer.model", "model bytes");
    const auto info = find_dataset_info((dir / "val_000000.bin").string());
    REQUIRE(info.has_value());
    CHECK(info->tokenizer == "sentencepiece");
    CHECK(info->vocab_size == 16384);
    CHECK(info->bos_id == 1);
    CHECK(info->tokenizer_model == dir / "tokenizer.model");
  }
  SECTION("shards without a dataset.json have none") {
    CHECK_FALSE(find_dataset_info((dir / "train_*.bin").string()).has_value());
    CHECK_FALSE(find_dataset_info("").has_value());
  }
}

TEST_CASE("a malformed dataset.json is refused, naming the file", "[data][dataset_info][errors]") {
  TempDir dir;
  const auto file = dir / "dataset.json";
  SECTION("not JSON") {
    write_text(file, "{not json");
    CHECK_THROWS_WITH(read_dataset_info(file), has("is not valid JSON"));
  }
  SECTION("no vocabulary size") {
    write_text(file, R"({"tokenizer": {"type": "byte"}})");
    CHECK_THROWS_WITH(read_dataset_info(file),
                      has("expected fathom-prepare's dataset.json with tokenizer.vocab_size"));
  }
  SECTION("a sentencepiece model that is not there") {
    write_text(
        file,
        R"({"tokenizer": {"type": "sentencepiece", "model": "gone.model", "vocab_size": 300}})");
    CHECK_THROWS_WITH(read_dataset_info(file),
                      has("names the sentencepiece model 'gone.model', which is not in"));
  }
  SECTION("an unknown tokenizer type") {
    write_text(file, R"({"tokenizer": {"type": "wordpiece", "vocab_size": 300}})");
    CHECK_THROWS_WITH(read_dataset_info(file), has("unknown tokenizer type 'wordpiece'"));
  }
  SECTION("a vocabulary of zero") {
    write_text(file, R"({"tokenizer": {"type": "byte", "vocab_size": 0}})");
    CHECK_THROWS_WITH(read_dataset_info(file), has("expected tokenizer.vocab_size > 0"));
  }
}

TEST_CASE("same_file_contents compares bytes", "[data][dataset_info]") {
  TempDir dir;
  write_text(dir / "a", "abc");
  write_text(dir / "b", "abc");
  write_text(dir / "c", "abd");
  CHECK(fathom::data::same_file_contents(dir / "a", dir / "b"));
  CHECK_FALSE(fathom::data::same_file_contents(dir / "a", dir / "c"));
  CHECK_FALSE(fathom::data::same_file_contents(dir / "a", dir / "missing"));
}
