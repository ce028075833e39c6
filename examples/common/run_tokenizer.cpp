// make_run_tokenizer and checkpoint_tokenizer: the one translation unit of fathom's programs that
// includes libsentencepiece (when built with it).
#include "run_tokenizer.hpp"

#include "fathom/core/error.hpp"

#if FATHOM_WITH_SENTENCEPIECE
#include "fathom/data/sentencepiece_tokenizer.hpp"
#endif

namespace fathom::programs {

bool sentencepiece_built() { return FATHOM_WITH_SENTENCEPIECE != 0; }

std::unique_ptr<data::Tokenizer> make_run_tokenizer(const std::string& type,
                                                    const std::filesystem::path& model,
                                                    const std::string& what) {
  if (type == "byte") return std::make_unique<data::ByteTokenizer>();
  if (type == "sentencepiece") {
#if FATHOM_WITH_SENTENCEPIECE
    return std::make_unique<data::SentencePieceTokenizer>(model);
#else
    FATHOM_FAIL(what << ": the tokenizer is the sentencepiece model '" << model.string()
                     << "', and this program was built without sentencepiece (install "
                        "libsentencepiece-dev and rebuild to decode its tokens)");
#endif
  }
  FATHOM_CHECK(type != "unknown", what << ": the tokenizer is unknown (the shards came without "
                                          "fathom-prepare's dataset.json), so its tokens cannot be "
                                          "decoded; prepare the data with fathom-prepare");
  FATHOM_FAIL(what << ": unknown tokenizer type '" << type << "' (expected byte or sentencepiece)");
}

std::unique_ptr<data::Tokenizer> checkpoint_tokenizer(const std::filesystem::path& ckpt,
                                                      const nlohmann::json& fields) {
  const std::string what = "checkpoint '" + ckpt.string() + "'";
  if (!fields.contains("tokenizer")) return std::make_unique<data::ByteTokenizer>();
  const auto& t = fields.at("tokenizer");
  const std::string type = t.value("type", std::string("unknown"));
  return make_run_tokenizer(type, ckpt / t.value("model", std::string("tokenizer.model")), what);
}

}  // namespace fathom::programs
