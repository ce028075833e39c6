// Tests for fathom/data/glob.hpp: wildcard matching and shard-pattern expansion.
#include <fathom/data/glob.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "data/fixtures.hpp"
#include "support/catch.hpp"

using fathom::data::expand_glob;
using fathom::data::wildcard_match;
using fathom::test::has;
using fathom::test::TempDir;

TEST_CASE("wildcard_match handles * and ?", "[data][glob]") {
  CHECK(wildcard_match("*_train_*.bin", "fineweb_train_000001.bin"));
  CHECK(wildcard_match("*", ""));
  CHECK(wildcard_match("a*b*c", "aXXbYYc"));
  CHECK(wildcard_match("a*b*c", "abc"));
  CHECK(wildcard_match("a?c", "abc"));
  CHECK(wildcard_match("**a", "bba"));
  CHECK(wildcard_match("*ab", "aab"));  // needs the backtrack after a partial match
  CHECK_FALSE(wildcard_match("a?c", "ac"));
  CHECK_FALSE(wildcard_match("*_train_*.bin", "fineweb_val_000000.bin"));
  CHECK_FALSE(wildcard_match("*.bin", "x.bin.tmp"));
  CHECK_FALSE(wildcard_match("a*b", "aXbY"));
  CHECK_FALSE(wildcard_match("", "a"));
}

TEST_CASE("expand_glob lists matching files sorted", "[data][glob]") {
  TempDir dir;
  for (const char* name : {"d_train_000002.bin", "d_val_000000.bin", "d_train_000000.bin",
                           "d_train_000001.bin", "notes.txt"})
    std::ofstream(dir / name) << "x";
  std::filesystem::create_directory(dir / "d_train_folder.bin");  // folders never match
  auto files = expand_glob((dir / "*_train_*.bin").string());
  REQUIRE(files.size() == 3);
  CHECK(files[0].filename() == "d_train_000000.bin");
  CHECK(files[1].filename() == "d_train_000001.bin");
  CHECK(files[2].filename() == "d_train_000002.bin");
  CHECK(files[0].parent_path() == dir.path());

  auto one = expand_glob((dir / "d_val_000000.bin").string());
  REQUIRE(one.size() == 1);
  CHECK(one[0].filename() == "d_val_000000.bin");
  CHECK(expand_glob((dir / "d_val_00000?.bin").string()).size() == 1);
}

TEST_CASE("a glob matching nothing names the pattern", "[data][glob][errors]") {
  TempDir dir;
  std::ofstream(dir / "a_val_0.bin") << "x";
  const std::string pattern = (dir / "*_train_*.bin").string();
  CHECK_THROWS_WITH(expand_glob(pattern), has(pattern) && has("matches no file"));
  const std::string missing_dir = (dir / "nowhere" / "*.bin").string();
  CHECK_THROWS_WITH(expand_glob(missing_dir), has(missing_dir) && has("does not exist"));
  const std::string missing_file = (dir / "train.bin").string();
  CHECK_THROWS_WITH(expand_glob(missing_file), has(missing_file) && has("no such file"));
  CHECK_THROWS_WITH(expand_glob((dir / "*" / "x.bin").string()), has("file name only"));
  CHECK_THROWS_WITH(expand_glob(""), has("empty"));
}
