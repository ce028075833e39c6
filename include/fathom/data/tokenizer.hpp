// Tokenizers: the Tokenizer interface (text <-> token ids) and ByteTokenizer, the built-in one that
// needs no files: one id per byte plus an end-of-text id.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fathom/core/error.hpp"

namespace fathom::data {

// Text <-> token ids. Programs hold one through a pointer and pick the implementation at run time
// (byte-level by default, a SentencePiece model in fathom-prepare), so it is a virtual interface.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text`, without special tokens.
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  // The text of `ids`; throws on an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const std::int32_t> ids) const = 0;
  // One past the largest id encode or the model may produce.
  virtual std::int32_t vocab_size() const = 0;
  // The id that ends a document (written between documents in shards), or -1 when there is none.
  virtual std::int32_t eos_id() const = 0;
  // The id that starts a document, or -1 when there is none.
  virtual std::int32_t bos_id() const = 0;
  // A short name for logs and tokenizer.json ("byte", "sentencepiece").
  virtual std::string name() const = 0;
};

// Byte-level tokenizer: ids 0..255 are the bytes of the (UTF-8 or any) text, id 256 is
// <|endoftext|>, which ends a document; vocab_size() is 257. Like GPT-2 it has one special token,
// which serves as both eos and bos. encode never produces 256 (the text "<|endoftext|>" encodes as
// its 13 bytes), so any byte string round-trips exactly; decode writes id 256 as "<|endoftext|>".
// A model may pad its embedding past 257 rows for faster kernels; ids >= 257 are never produced.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int32_t end_of_text = 256;
  static constexpr std::int32_t vocab = 257;
  static constexpr std::string_view end_of_text_text = "<|endoftext|>";

  std::vector<std::int32_t> encode(std::string_view text) const override {
    std::vector<std::int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode(std::span<const std::int32_t> ids) const override {
    std::string text;
    text.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      if (id == end_of_text) {
        text += end_of_text_text;
        continue;
      }
      FATHOM_CHECK(id >= 0 && id < 256, "byte tokenizer: expected ids in [0, "
                                            << vocab << "), got " << id << " at position " << i);
      text += static_cast<char>(static_cast<unsigned char>(id));
    }
    return text;
  }

  std::int32_t vocab_size() const override { return vocab; }
  std::int32_t eos_id() const override { return end_of_text; }
  std::int32_t bos_id() const override { return end_of_text; }
  std::string name() const override { return "byte"; }
};

}  // namespace fathom::data
