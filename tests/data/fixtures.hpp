// What the data tests share: a scratch folder removed when the test ends, a substring matcher
// under one name for Catch2 v2 and v3, and writing raw bytes (for malformed shards).
#pragma once

#include <atomic>
#include <cstdint>
#include <fstream>
#include <filesystem>
#include <string>
#include <system_error>

#include <unistd.h>

#include "support/catch.hpp"

namespace fathom::test {

#if FATHOM_CATCH_V3
inline auto has(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
inline auto has(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif

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

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("fathom-data-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace fathom::test
