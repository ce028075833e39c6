// What the data tests share: a scratch folder removed when the test ends (support/temp_dir.hpp), a
// substring matcher under one name for Catch2 v2 and v3, random token ids, and writing raw bytes
// (for malformed shards).
#pragma once

#include <cstdint>
#include <fstream>
#include <filesystem>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "support/catch.hpp"
#include "support/temp_dir.hpp"

namespace fathom::test {

#if FATHOM_CATCH_V3
inline auto has(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
inline auto has(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif

// n token ids uniform in [0, vocab), reproducible from `seed`.
template <class T>
std::vector<T> random_tokens(std::size_t n, std::type_identity_t<T> vocab, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<T> dist(0, vocab - 1);
  std::vector<T> t(n);
  for (auto& x : t) x = dist(gen);
  return t;
}

// An llm.c shard header followed by `payload` raw bytes, written without any checks.
inline void write_raw_shard(const std::filesystem::path& path, std::int32_t magic,
                            std::int32_t version, std::int32_t count, const std::string& payload) {
  std::int32_t header[256] = {};
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header), sizeof header);
  out.write(payload.data(), static_cast<std::streamsize>(payload.size()));
}

}  // namespace fathom::test
