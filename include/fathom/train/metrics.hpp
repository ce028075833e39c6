// MetricsLog: DIR/metrics.jsonl, one JSON object a line, flushed as written so a crash loses at
// most the line being written.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"

namespace fathom::train {

class MetricsLog {
 public:
  MetricsLog() = default;
  // Appends to `path` (resumed runs continue the same file).
  explicit MetricsLog(const std::filesystem::path& path) : path_(path) {
    out_.open(path, std::ios::app);
    FATHOM_CHECK(out_.good(), "cannot open metrics file '" << path.string() << "' for appending");
  }

  bool is_open() const { return out_.is_open(); }
  const std::filesystem::path& path() const { return path_; }

  template <class = void>  // instantiated where called (docs/performance.md, Compile time)
  void write(const nlohmann::json& record) {
    if (!out_.is_open()) return;
    out_ << record.dump() << '\n';
    out_.flush();
    FATHOM_CHECK(out_.good(), "writing metrics file '" << path_.string() << "' failed");
  }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace fathom::train
