// A Tokenizer backed by a SentencePiece model, and training one. Optional: include it only where
// libsentencepiece is linked (pkg-config sentencepiece); <fathom/fathom.hpp> does not include it.
#pragma once

#if !__has_include(<sentencepiece_processor.h>)
#error "sentencepiece_tokenizer.hpp needs libsentencepiece (apt-get install libsentencepiece-dev)"
#endif

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/data/tokenizer.hpp"

namespace fathom::data {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& model) : path_(model.string()) {
    FATHOM_CHECK(std::filesystem::is_regular_file(model),
                 "sentencepiece model '" << path_ << "': no such file");
    auto status = processor_.Load(path_);
    FATHOM_CHECK(status.ok(),
                 "sentencepiece model '" << path_ << "': cannot load: " << status.ToString());
  }

  std::vector<std::int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    auto status = processor_.Encode(text, &ids);
    FATHOM_CHECK(status.ok(),
                 "sentencepiece model '" << path_ << "': encoding failed: " << status.ToString());
    return {ids.begin(), ids.end()};
  }

  std::string decode(std::span<const std::int32_t> ids) const override {
    std::vector<int> in(ids.begin(), ids.end());
    for (std::size_t i = 0; i < in.size(); ++i)
      FATHOM_CHECK(in[i] >= 0 && in[i] < vocab_size(),
                   "sentencepiece model '" << path_ << "': expected ids in [0, " << vocab_size()
                                           << "), got " << in[i] << " at position " << i);
    std::string text;
    auto status = processor_.Decode(in, &text);
    FATHOM_CHECK(status.ok(),
                 "sentencepiece model '" << path_ << "': decoding failed: " << status.ToString());
    return text;
  }

  std::int32_t vocab_size() const override { return processor_.GetPieceSize(); }
  std::int32_t eos_id() const override { return processor_.eos_id(); }
  std::int32_t bos_id() const override { return processor_.bos_id(); }
  std::string name() const override { return "sentencepiece"; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor processor_;
};

// Feeds training sentences to the SentencePiece trainer from a callback: next(line) fills `line`
// and returns false at the end.
class SentenceFeed final : public sentencepiece::SentenceIterator {
 public:
  explicit SentenceFeed(std::function<bool(std::string&)> next) : next_(std::move(next)) { Next(); }
  bool done() const override { return done_; }
  void Next() override { done_ = !next_(line_); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::function<bool(std::string&)> next_;
  std::string line_;
  bool done_ = false;
};

struct SentencePieceTraining {
  int vocab_size = 8000;
  std::string model_type = "bpe";  // as Llama's tokenizer; "unigram" is the other common choice
  int threads = 2;
  long long max_sentences = 2000000;  // a random sample of this many lines is used
  unsigned int seed = 0;              // of that sample: the same text and seed give the same model
};

// Trains a model on the lines `next` yields and writes `prefix`.model and `prefix`.vocab (each
// piece and its score, a line each). The text is kept as is (identity normalization, spaces kept,
// digits split, bytes as fallback pieces) so decode(encode(text)) gives the text back. The same
// lines and seed give the same .model file, byte for byte, wherever it is written.
inline void train_sentencepiece(const std::filesystem::path& prefix,
                                const SentencePieceTraining& options,
                                std::function<bool(std::string&)> next) {
  FATHOM_CHECK(options.vocab_size >= 300,
               "sentencepiece training: expected a vocab size >= 300 (256 byte pieces + specials "
               "+ merges), got "
                   << options.vocab_size);
  const std::unordered_map<std::string, std::string> args{
      {"vocab_size", std::to_string(options.vocab_size)},
      {"model_type", options.model_type},
      {"num_threads", std::to_string(options.threads)},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"character_coverage", "0.9995"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"hard_vocab_limit", "false"},
      {"minloglevel", "1"},
  };
  // sentencepiece draws its sample of lines from a process-wide generator, seeded from
  // std::random_device unless set: set it, so that training is reproducible.
  sentencepiece::SetRandomGeneratorSeed(options.seed);
  SentenceFeed feed(std::move(next));
  // Trained into a string (sentencepiece then records no model_prefix path in the model, which
  // would make the file depend on where it was written) and saved below.
  std::string model;
  auto status = sentencepiece::SentencePieceTrainer::Train(args, &feed, &model);
  FATHOM_CHECK(status.ok(), "sentencepiece training of '"
                                << prefix.string() << ".model' failed: " << status.ToString());
  const std::string model_file = prefix.string() + ".model",
                    vocab_file = prefix.string() + ".vocab";
  {
    std::ofstream out(model_file, std::ios::binary);
    out.write(model.data(), static_cast<std::streamsize>(model.size()));
    FATHOM_CHECK(out.good(), "sentencepiece training: cannot write '" << model_file << "'");
  }
  sentencepiece::SentencePieceProcessor trained;
  status = trained.LoadFromSerializedProto(model);
  FATHOM_CHECK(status.ok(),
               "sentencepiece training: the trained model does not load: " << status.ToString());
  std::ofstream vocab(vocab_file);
  for (int id = 0; id < trained.GetPieceSize(); ++id)
    vocab << trained.IdToPiece(id) << '\t' << trained.GetScore(id) << '\n';
  FATHOM_CHECK(vocab.good(), "sentencepiece training: cannot write '" << vocab_file << "'");
}

}  // namespace fathom::data
