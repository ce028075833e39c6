// What fathom-prepare says about the shards it wrote (DIR/dataset.json beside them): the
// tokenizer, and so the vocabulary a model trained on them needs, and where its model file is.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"

namespace fathom::data {

struct DatasetInfo {
  std::filesystem::path file;      // the dataset.json read
  std::string tokenizer = "byte";  // "byte" or "sentencepiece"
  std::int32_t vocab_size = 0;     // ids in the shards are below this
  std::int32_t eos_id = -1, bos_id = -1;
  std::filesystem::path
      tokenizer_model;  // the sentencepiece model beside the shards; empty for byte
};

// Reads a dataset.json written by fathom-prepare. Throws, naming the file and the field, when it
// is not one.
inline DatasetInfo read_dataset_info(const std::filesystem::path& file) {
  std::ifstream in(file);
  FATHOM_CHECK(in.good(), "cannot open '" << file.string() << "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FATHOM_FAIL("'" << file.string() << "' is not valid JSON: " << e.what());
  }
  FATHOM_CHECK(j.is_object() && j.contains("tokenizer") && j["tokenizer"].is_object() &&
                   j["tokenizer"].contains("vocab_size") &&
                   j["tokenizer"]["vocab_size"].is_number_integer(),
               "'" << file.string() << "': expected fathom-prepare's dataset.json with "
                   << "tokenizer.vocab_size, got " << j.dump().substr(0, 120));
  const auto& t = j["tokenizer"];
  DatasetInfo info;
  info.file = file;
  info.tokenizer = t.value("type", std::string("byte"));
  info.vocab_size = t["vocab_size"].get<std::int32_t>();
  info.eos_id = t.value("eos_id", -1);
  info.bos_id = t.value("bos_id", -1);
  FATHOM_CHECK(info.vocab_size > 0, "'" << file.string()
                                        << "': expected tokenizer.vocab_size > 0, got "
                                        << info.vocab_size);
  if (info.tokenizer == "sentencepiece") {
    const std::string model = t.value("model", std::string("tokenizer.model"));
    info.tokenizer_model = file.parent_path() / model;
    FATHOM_CHECK(std::filesystem::is_regular_file(info.tokenizer_model),
                 "'" << file.string() << "' names the sentencepiece model '" << model
                     << "', which is not in '" << file.parent_path().string() << "'");
  } else {
    FATHOM_CHECK(info.tokenizer == "byte", "'" << file.string() << "': unknown tokenizer type '"
                                               << info.tokenizer
                                               << "' (expected byte or sentencepiece)");
  }
  return info;
}

// Whether two files hold the same bytes (two copies of one tokenizer model).
inline bool same_file_contents(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return false;
  std::string da((std::istreambuf_iterator<char>(fa)), std::istreambuf_iterator<char>());
  std::string db((std::istreambuf_iterator<char>(fb)), std::istreambuf_iterator<char>());
  return da == db;
}

// The dataset.json in the folder of a shard file or pattern ("dir/train_*.bin"), when there is one.
inline std::optional<DatasetInfo> find_dataset_info(const std::string& shard_pattern) {
  if (shard_pattern.empty()) return std::nullopt;
  const std::filesystem::path p(shard_pattern);
  const std::filesystem::path folder =
      p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  const auto file = folder / "dataset.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return std::nullopt;
  return read_dataset_info(file);
}

}  // namespace fathom::data
