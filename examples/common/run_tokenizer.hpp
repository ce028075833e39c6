// The tokenizer of a run: the one its data was prepared with, as fathom-train records it in each
// checkpoint, so that generation decodes with the tokenizer the model was trained on. SentencePiece
// models need this program to be built with libsentencepiece; without it they are refused with a
// line that says so.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "fathom/data/tokenizer.hpp"

namespace fathom::programs {

// Whether this program was built with libsentencepiece.
bool sentencepiece_built();

// The tokenizer named by `type` ("byte", "sentencepiece" with its `model` file, "unknown");
// `what` names where it was recorded, for the error raised when it cannot be made here.
std::unique_ptr<data::Tokenizer> make_run_tokenizer(const std::string& type,
                                                    const std::filesystem::path& model,
                                                    const std::string& what);

// The tokenizer a checkpoint records (config.json's "tokenizer"; checkpoints older than that
// record were trained on byte tokens).
std::unique_ptr<data::Tokenizer> checkpoint_tokenizer(const std::filesystem::path& ckpt,
                                                      const nlohmann::json& fields);

}  // namespace fathom::programs
