// fathom-prepare: text files or folders (or the built-in corpus) to token shards in the llm.c
// format, DIR/train_000000.bin ... and DIR/val_000000.bin ..., plus DIR/dataset.json.
#include <fathom/data/corpus.hpp>
#include <fathom/data/shards.hpp>
#include <fathom/data/tokenizer.hpp>
#include <fathom/train/run_folder.hpp>

#if FATHOM_WITH_SENTENCEPIECE
#include <fathom/data/sentencepiece_tokenizer.hpp>
#endif

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using fathom::data::TokenWidth;

namespace {

struct Options {
  std::vector<std::string> inputs;
  std::vector<std::string> val_inputs;  // validation text given apart (then no --val-fraction)
  bool split_records = false;           // a line holding only 0x1E ends a document
  bool val_fraction_given = false;
  std::string out;
  std::string shard_tokens = "100M";
  double val_fraction = 0.01;
  std::string val_block = "4096";
  std::string tokenizer = "byte";
  int train_tokenizer = 0;
  bool uint32 = false;
  std::string extensions;
  std::string builtin;
  std::uint64_t seed = 0;
  int threads = 0;                     // 0: one per core
  std::string tokenizer_lines = "2M";  // lines --train-tokenizer samples
  bool overwrite = false;
  bool quiet = false;
};

// "100000000", "1e8", "100M", "64k", "2G" (decimal: k = 1000).
std::uint64_t parse_count(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  double scale = 1;
  if (used + 1 == text.size()) {
    switch (text.back()) {
      case 'k':
      case 'K':
        scale = 1e3;
        break;
      case 'm':
      case 'M':
        scale = 1e6;
        break;
      case 'g':
      case 'G':
        scale = 1e9;
        break;
      default:
        used = 0;
    }
  } else if (used != text.size()) {
    used = 0;
  }
  FATHOM_CHECK(
      used > 0 && value * scale >= 1 && value * scale < 1e15,
      flag << ": expected a positive count such as 100000000, 1e8 or 100M, got '" << text << "'");
  return static_cast<std::uint64_t>(std::llround(value * scale));
}

std::string with_commas(std::uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3)
    s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

// Text or not, from the first 8 KiB: binary files hold NUL bytes or many control bytes.
bool looks_binary(const fs::path& path, std::size_t* nul_at = nullptr) {
  std::ifstream in(path, std::ios::binary);
  char buf[8192];
  in.read(buf, sizeof buf);
  const std::size_t n = static_cast<std::size_t>(in.gcount());
  std::size_t control = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(buf[i]);
    if (c == 0) {
      if (nul_at) *nul_at = i;
      return true;
    }
    control += c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != '\b';
  }
  if (nul_at) *nul_at = static_cast<std::size_t>(-1);
  return control * 10 > n;
}

std::set<std::string> parse_extensions(const std::string& list) {
  std::set<std::string> out;
  std::stringstream in(list);
  for (std::string e; std::getline(in, e, ',');) {
    if (!e.empty() && e[0] == '.') e.erase(0, 1);
    out.insert(e == "none" ? std::string() : e);
  }
  return out;
}

struct InputFiles {
  std::vector<fs::path> files;
  std::size_t skipped_binary = 0;
  std::uintmax_t bytes = 0;
};

// Files as given; folders walked recursively for text files (filtered by extension when asked),
// each file once however it is reached, in a sorted and so reproducible order.
InputFiles collect_inputs(const std::vector<std::string>& inputs, const std::string& extensions) {
  InputFiles result;
  const std::set<std::string> wanted = parse_extensions(extensions);
  std::set<fs::path> seen;
  auto add = [&](const fs::path& p) {
    std::error_code ec;
    fs::path canonical = fs::canonical(p, ec);
    if (ec || !seen.insert(canonical).second) return;
    result.files.push_back(p);
    result.bytes += fs::file_size(p, ec);
  };
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::path p(input);
    FATHOM_CHECK(fs::exists(p, ec), "input '" << input << "': no such file or folder");
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator(
               p, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_regular_file(ec)) continue;
        const fs::path& f = it->path();
        if (!wanted.empty()) {
          std::string ext = f.extension().string();
          if (!ext.empty()) ext.erase(0, 1);
          if (!wanted.count(ext)) continue;
        }
        if (looks_binary(f)) {
          ++result.skipped_binary;
          continue;
        }
        found.push_back(f);
      }
      FATHOM_CHECK(!ec, "input '" << input << "': cannot list the folder: " << ec.message());
      std::sort(found.begin(), found.end());
      for (const auto& f : found) add(f);
    } else {
      FATHOM_CHECK(fs::is_regular_file(p, ec),
                   "input '" << input << "': expected a file or a folder");
      std::size_t nul_at = 0;
      FATHOM_CHECK(!looks_binary(p, &nul_at),
                   "input '" << input << "': expected text, but it looks binary ("
                             << (nul_at != static_cast<std::size_t>(-1)
                                     ? "NUL byte at offset " + std::to_string(nul_at)
                                     : std::string("many control bytes"))
                             << ")");
      add(p);
    }
  }
  FATHOM_CHECK(!result.files.empty(),
               "no text files found in the inputs"
                   << (wanted.empty() ? "" : " with the extensions given by --ext")
                   << (result.skipped_binary
                           ? " (" + std::to_string(result.skipped_binary) + " binary files skipped)"
                           : std::string()));
  return result;
}

// Reads a file in pieces of about 8 MiB cut after a newline, so no word is split between pieces.
template <class Fn>
void for_each_piece(const fs::path& path, Fn&& fn) {
  std::ifstream in(path, std::ios::binary);
  FATHOM_CHECK(in, "input '" << path.string() << "': cannot open for reading");
  std::string carry, piece;
  std::vector<char> buf(8 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::size_t n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    piece.assign(carry);
    piece.append(buf.data(), n);
    const std::size_t cut = piece.rfind('\n');
    if (cut == std::string::npos || !in) {
      carry.clear();
    } else {
      carry.assign(piece, cut + 1);
      piece.resize(cut + 1);
    }
    fn(std::string_view(piece));
  }
  FATHOM_CHECK(in.eof(), "input '" << path.string() << "': read failed");
  if (!carry.empty()) fn(std::string_view(carry));
}

// The ASCII record separator: with --split-records, a line holding only this byte ends a document
// inside a file (scripts/depth_corpus.sh writes its corpus so).
constexpr char record_separator = '\x1e';

// Calls text(segment) for the text between record-separator lines of `piece` and end() after each
// such line. Pieces are cut after a newline, so a separator line never straddles two pieces.
template <class Text, class End>
void split_records(std::string_view piece, Text&& text, End&& end) {
  std::size_t start = 0;
  while (start < piece.size()) {
    std::size_t at = start;
    std::size_t found = std::string_view::npos;
    while (at < piece.size()) {
      if (piece[at] == record_separator && (at == 0 || piece[at - 1] == '\n') &&
          (at + 1 == piece.size() || piece[at + 1] == '\n' ||
           (piece[at + 1] == '\r' && at + 2 < piece.size() && piece[at + 2] == '\n'))) {
        found = at;
        break;
      }
      const std::size_t nl = piece.find('\n', at);
      if (nl == std::string_view::npos) break;
      at = nl + 1;
    }
    if (found == std::string_view::npos) {
      text(piece.substr(start));
      return;
    }
    if (found > start) text(piece.substr(start, found - start));
    end();
    start = piece.find('\n', found);
    start = start == std::string_view::npos ? piece.size() : start + 1;
  }
}

// Tokenizes text on several threads and hands the tokens on in input order: text and document
// ends are queued, and every `batch_bytes` of text the queue is encoded in parallel and emptied.
class ParallelEncoder {
 public:
  using Emit = std::function<void(std::uint32_t)>;
  ParallelEncoder(const fathom::data::Tokenizer& tokenizer, int threads, Emit emit)
      : tokenizer_(tokenizer),
        threads_(std::max(1, threads)),
        emit_(std::move(emit)),
        batch_bytes_(static_cast<std::size_t>(threads_) * (4u << 20)) {}

  void text(std::string_view s) {
    if (s.empty()) return;
    jobs_.push_back({std::string(s), false});
    queued_ += s.size();
    if (queued_ >= batch_bytes_) flush();
  }
  // Ends a document: the tokenizer's end-of-text id follows (when it has one).
  void end_document() {
    if (tokenizer_.eos_id() < 0) return;
    if (jobs_.empty())
      jobs_.push_back({std::string(), true});
    else
      jobs_.back().eos_after = true;
  }
  void flush() {
    std::vector<std::vector<std::int32_t>> ids(jobs_.size());
    auto work = [&](std::size_t first) {
      for (std::size_t i = first; i < jobs_.size(); i += static_cast<std::size_t>(threads_))
        if (!jobs_[i].text.empty()) ids[i] = tokenizer_.encode(jobs_[i].text);
    };
    if (threads_ == 1 || jobs_.size() == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      std::exception_ptr error;
      std::mutex error_mutex;
      for (int t = 0; t < threads_; ++t)
        pool.emplace_back([&, t] {
          try {
            work(static_cast<std::size_t>(t));
          } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            error = std::current_exception();
          }
        });
      for (auto& th : pool) th.join();
      if (error) std::rethrow_exception(error);
    }
    for (std::size_t i = 0; i < jobs_.size(); ++i) {
      for (std::int32_t t : ids[i]) emit_(static_cast<std::uint32_t>(t));
      if (jobs_[i].eos_after) emit_(static_cast<std::uint32_t>(tokenizer_.eos_id()));
    }
    jobs_.clear();
    queued_ = 0;
  }

 private:
  struct Job {
    std::string text;
    bool eos_after;
  };
  const fathom::data::Tokenizer& tokenizer_;
  int threads_;
  Emit emit_;
  std::size_t batch_bytes_;
  std::vector<Job> jobs_;
  std::size_t queued_ = 0;
};

// Fills shards of `shard_tokens` tokens named DIR/<split>_000000.bin, ...
class ShardWriter {
 public:
  ShardWriter(fs::path dir, std::string split, std::uint64_t shard_tokens, TokenWidth width,
              bool quiet)
      : dir_(std::move(dir)),
        split_(std::move(split)),
        shard_tokens_(shard_tokens),
        width_(width),
        quiet_(quiet),
        clear_line_(!quiet && ::isatty(2)) {}

  void add(std::uint32_t token) {
    buffer_.push_back(token);
    if (buffer_.size() == shard_tokens_) flush();
  }

  void finish() {
    if (!buffer_.empty()) flush();
  }

  std::uint64_t tokens() const { return tokens_; }
  int shards() const { return shards_; }

 private:
  void flush() {
    char name[64];
    std::snprintf(name, sizeof name, "%s_%06d.bin", split_.c_str(), shards_);
    fathom::data::write_shard(dir_ / name, buffer_, width_);
    if (!quiet_)
      std::cout << (clear_line_ ? "\r\033[K" : "") << name << ": " << with_commas(buffer_.size())
                << " tokens" << std::endl;
    tokens_ += buffer_.size();
    ++shards_;
    buffer_.clear();
  }

  fs::path dir_;
  std::string split_;
  std::uint64_t shard_tokens_;
  TokenWidth width_;
  bool quiet_;
  bool clear_line_;  // the progress line shares the terminal
  std::vector<std::uint32_t> buffer_;
  std::uint64_t tokens_ = 0;
  int shards_ = 0;
};

// Sends the token stream, in blocks of `block` tokens, to train or validation: block i goes to
// validation when ceil((i + 1) f) > ceil(i f), i.e. blocks 0, 1/f, 2/f, ... for fraction f, so
// validation is spread evenly over the inputs, is exactly a fraction f of the blocks, and is never
// empty when f > 0.
class Splitter {
 public:
  Splitter(double fraction, std::uint64_t block, ShardWriter& train, ShardWriter& val)
      : fraction_(fraction), block_(block), train_(train), val_(val) {
    route();
  }
  void add(std::uint32_t token) {
    (to_val_ ? val_ : train_).add(token);
    if (++filled_ == block_) {
      ++index_;
      filled_ = 0;
      route();
    }
  }

 private:
  void route() {
    const double i = static_cast<double>(index_);
    to_val_ = fraction_ > 0 && std::ceil((i + 1) * fraction_) > std::ceil(i * fraction_);
  }
  double fraction_;
  std::uint64_t block_;
  ShardWriter& train_;
  ShardWriter& val_;
  std::uint64_t index_ = 0, filled_ = 0;
  bool to_val_ = false;
};

// One progress line on a terminal (stderr), refreshed at most ten times a second.
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled && ::isatty(2)) {}
  void update(std::size_t file, std::size_t files, std::uint64_t tokens, std::uint64_t bytes) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(100) && file + 1 < files) return;
    last_ = now;
    const double s = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "\r\033[K[%zu/%zu files] %.2f M tokens, %.1f MB/s", file + 1, files,
                 static_cast<double>(tokens) / 1e6,
                 s > 0 ? static_cast<double>(bytes) / 1e6 / s : 0.0);
    std::fflush(stderr);
  }
  void done() {
    if (enabled_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_{};
};

// Programs print a library error as one line, without the place in the source that FATHOM_CHECK
// appends for developers.
std::string one_line(const std::exception& e) {
  std::string what = e.what();
  const std::size_t at = what.find(" [check `");
  if (at != std::string::npos) what.resize(at);
  return what;
}

// Everything is written into DIR/.fathom-prepare.tmp and moved into DIR only when all went well,
// so a bad input or a crash never leaves a partial set of shards beside (or instead of) good ones.
// The folder is locked (DIR/.lock) while this runs: a second fathom-prepare into it stops at once.
// Replacing (--overwrite) moves the old set aside into DIR/.fathom-prepare.old only once the new
// set is complete (marked by .complete in the staging folder); a crash during that move is
// finished by the next fathom-prepare into DIR, so the folder ends with one whole set.
class Staging {
 public:
  Staging(fs::path dir, bool overwrite)
      : dir_(std::move(dir)),
        path_(dir_ / ".fathom-prepare.tmp"),
        aside_(dir_ / ".fathom-prepare.old") {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    FATHOM_CHECK(!ec && fs::is_directory(dir_), "--out '" << dir_.string()
                                                          << "': cannot create the folder: "
                                                          << (ec ? ec.message() : "not a folder"));
    lock_ = fathom::train::FolderLock(dir_, "fathom-prepare writing shards into it");
    if (fs::exists(path_ / ".complete")) {
      std::cout << "finishing the replacement of the shards in " << dir_.string()
                << " that an earlier fathom-prepare began" << std::endl;
      finish();
    }
    fs::remove_all(path_, ec);  // left by a run that crashed before its set was complete
    fs::remove_all(aside_, ec);
    old_ = shards_in(dir_);
    FATHOM_CHECK(
        old_.empty() || overwrite,
        "--out '" << dir_.string() << "' already holds shards ("
                  << (old_.empty() ? "" : old_.front().filename().string())
                  << (old_.size() > 1 ? " and " + std::to_string(old_.size() - 1) + " more" : "")
                  << "); expected a folder without shards, or --overwrite to replace them");
    fs::create_directory(path_, ec);
    // Fail now, not after tokenizing everything, when the folder is not writable.
    std::ofstream probe(path_ / "probe");
    FATHOM_CHECK(!ec && (probe << "ok"),
                 "--out '" << dir_.string() << "': cannot write into the folder");
    probe.close();
    fs::remove(path_ / "probe");
  }
  ~Staging() {
    std::error_code ec;
    if (!fs::exists(path_ / ".complete", ec)) fs::remove_all(path_, ec);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  const fs::path& path() const { return path_; }

  // Replaces the old shards by the new files: marks the staged set complete, then moves it in.
  void commit() {
    {
      std::ofstream mark(path_ / ".complete");
      FATHOM_CHECK(mark << "ok", "--out '" << dir_.string() << "': cannot write into the folder");
    }
    fathom::train::detail::sync_directory(path_);
    finish();
  }

 private:
  static std::vector<fs::path> shards_in(const fs::path& dir) {
    std::vector<fs::path> found;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if ((name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) &&
          e.path().extension() == ".bin")
        found.push_back(e.path());
    }
    std::sort(found.begin(), found.end());
    return found;
  }

  // Moves the shards in DIR aside (aside_/.done marks that done, so that finishing an interrupted
  // replacement never moves new shards aside), the complete staged set in, then drops the old set.
  void finish() {
    if (!fs::exists(aside_ / ".done")) {
      fs::create_directories(aside_);
      for (const auto& p : shards_in(dir_)) fs::rename(p, aside_ / p.filename());
      std::ofstream(aside_ / ".done") << "ok";
    }
    for (const auto& e : fs::directory_iterator(path_))
      if (e.path().filename() != ".complete") fs::rename(e.path(), dir_ / e.path().filename());
    fathom::train::detail::sync_directory(dir_);
    std::error_code ec;
    fs::remove_all(aside_, ec);
    fs::remove_all(path_, ec);
  }

  fs::path dir_, path_, aside_;
  fathom::train::FolderLock lock_;
  std::vector<fs::path> old_;
};

int run(const Options& o) {
  const auto start = std::chrono::steady_clock::now();
  const fs::path out(o.out);
  const std::uint64_t shard_tokens = parse_count("--shard-tokens", o.shard_tokens);
  const std::uint64_t val_block = parse_count("--val-block", o.val_block);
  FATHOM_CHECK(shard_tokens <= static_cast<std::uint64_t>(INT32_MAX),
               "--shard-tokens: expected at most "
                   << INT32_MAX << " (the header count is int32), got " << shard_tokens);
  FATHOM_CHECK(o.val_fraction >= 0 && o.val_fraction < 1,
               "--val-fraction: expected a fraction in [0, 1), got " << o.val_fraction);
  FATHOM_CHECK(o.val_inputs.empty() || !o.val_fraction_given,
               "--val-input gives the validation text; expected no --val-fraction with it");
  const double val_fraction = o.val_inputs.empty() ? o.val_fraction : 0.0;
  const bool builtin = !o.builtin.empty();
  FATHOM_CHECK(builtin != !o.inputs.empty(),
               (builtin ? "expected either input files or --builtin, got both"
                        : "expected input files or folders, or --builtin TOKENS; see --help"));
  FATHOM_CHECK(!builtin || (o.tokenizer == "byte" && o.train_tokenizer == 0),
               "--builtin: the built-in corpus is byte-level; expected no --tokenizer or "
               "--train-tokenizer, got '"
                   << o.tokenizer << "'");
  FATHOM_CHECK(
      o.train_tokenizer == 0 || o.tokenizer == "byte",
      "--train-tokenizer trains a new model; expected no --tokenizer, got '" << o.tokenizer << "'");

  FATHOM_CHECK(
      !builtin || o.val_inputs.empty(),
      "--builtin: the built-in corpus has its own validation stream; expected no --val-input");
  InputFiles inputs, val_inputs;
  if (!builtin) inputs = collect_inputs(o.inputs, o.extensions);
  if (!o.val_inputs.empty()) val_inputs = collect_inputs(o.val_inputs, o.extensions);
  Staging staging(out, o.overwrite);
  const fs::path& stage = staging.path();

  nlohmann::json tokenizer_info;
  std::unique_ptr<fathom::data::Tokenizer> tokenizer;
  if (o.train_tokenizer > 0 || o.tokenizer != "byte") {
#if FATHOM_WITH_SENTENCEPIECE
    fs::path model(o.tokenizer);
    if (o.train_tokenizer > 0) {
      if (!o.quiet)
        std::cout << "training a sentencepiece model of " << o.train_tokenizer << " pieces on "
                  << inputs.files.size() << " files" << std::endl;
      std::size_t file = 0;
      std::uint64_t text_lines = 0, text_bytes = 0;
      std::ifstream in;
      auto next_line = [&](std::string& line) {
        for (;;) {
          if (in.is_open() && std::getline(in, line)) {
            if (!line.empty() &&
                !(o.split_records && line.size() == 1 && line[0] == record_separator)) {
              text_lines += 1;
              text_bytes += line.size() + 1;
              return true;
            }
            continue;
          }
          if (file == inputs.files.size()) return false;
          in.close();
          in.clear();
          in.open(inputs.files[file++], std::ios::binary);
        }
      };
      fathom::data::SentencePieceTraining training;
      training.vocab_size = o.train_tokenizer;
      training.seed = static_cast<unsigned int>(o.seed);
      training.max_sentences =
          static_cast<long long>(parse_count("--tokenizer-lines", o.tokenizer_lines));
      training.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      try {
        fathom::data::train_sentencepiece(stage / "tokenizer", training, next_line);
      } catch (const fathom::Error& e) {
        FATHOM_CHECK(text_lines > 0, "--train-tokenizer: the inputs hold no text to train on");
        throw;
      }
      FATHOM_CHECK(text_lines > 0, "--train-tokenizer: the inputs hold no text to train on");
      model = stage / "tokenizer.model";
      // Too little text for the vocabulary asked for: sentencepiece stops early with fewer pieces.
      const fathom::data::SentencePieceTokenizer trained(model);
      FATHOM_CHECK(trained.vocab_size() == o.train_tokenizer,
                   "--train-tokenizer " << o.train_tokenizer << ": the inputs ("
                                        << with_commas(text_lines) << " lines, "
                                        << with_commas(text_bytes) << " bytes) yield only "
                                        << trained.vocab_size()
                                        << " pieces; expected more text or a smaller vocabulary");
    } else {
      FATHOM_CHECK(fs::is_regular_file(model),
                   "--tokenizer: expected 'byte' or a sentencepiece model file, got '"
                       << o.tokenizer << "' (no such file)");
      // A copy beside the shards, so the folder says how to read them.
      fs::copy_file(model, stage / "tokenizer.model", fs::copy_options::overwrite_existing);
    }
    auto sp = std::make_unique<fathom::data::SentencePieceTokenizer>(model);
    tokenizer_info = {{"type", "sentencepiece"}, {"model", "tokenizer.model"}};
    tokenizer = std::move(sp);
#else
    if (o.train_tokenizer > 0)
      FATHOM_FAIL(
          "--train-tokenizer: this fathom-prepare was built without sentencepiece "
          "(install libsentencepiece-dev and rebuild for sentencepiece models)");
    FATHOM_FAIL("--tokenizer '" << o.tokenizer
                                << "': this fathom-prepare was built without sentencepiece; "
                                   "expected 'byte' (install libsentencepiece-dev and rebuild "
                                   "for sentencepiece models)");
#endif
  } else {
    tokenizer = std::make_unique<fathom::data::ByteTokenizer>();
    tokenizer_info = {{"type", "byte"}};
  }
  tokenizer_info["vocab_size"] = tokenizer->vocab_size();
  tokenizer_info["eos_id"] = tokenizer->eos_id();
  tokenizer_info["bos_id"] = tokenizer->bos_id();

  const TokenWidth width =
      o.uint32 || tokenizer->vocab_size() > 65536 ? TokenWidth::u32 : TokenWidth::u16;
  ShardWriter train(stage, "train", shard_tokens, width, o.quiet);
  ShardWriter val(stage, "val", shard_tokens, width, o.quiet);
  Splitter splitter(val_fraction, val_block, train, val);

  nlohmann::json source;
  if (builtin) {
    // The train split as it is, and validation from its own stream, as fathom-train uses them.
    const std::uint64_t n = parse_count("--builtin", o.builtin);
    for (std::int32_t t : fathom::data::builtin_corpus(fathom::data::Split::train, n, o.seed))
      train.add(static_cast<std::uint32_t>(t));
    const std::uint64_t n_val =
        static_cast<std::uint64_t>(std::llround(static_cast<double>(n) * val_fraction));
    if (n_val > 0)
      for (std::int32_t t :
           fathom::data::builtin_corpus(fathom::data::Split::validation, n_val, o.seed))
        val.add(static_cast<std::uint32_t>(t));
    source = {{"type", "builtin"}, {"seed", o.seed}};
  } else {
    Progress progress(!o.quiet);
    std::uint64_t bytes_done = 0;
    std::uint64_t documents = 0;
    const int threads = o.threads > 0
                            ? o.threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Each file is a document, and with --split-records so is each record of a file.
    auto tokenize = [&](const InputFiles& files, ParallelEncoder& encoder) {
      for (std::size_t f = 0; f < files.files.size(); ++f) {
        bool open_document = false;
        for_each_piece(files.files[f], [&](std::string_view piece) {
          if (o.split_records) {
            split_records(
                piece,
                [&](std::string_view text) {
                  encoder.text(text);
                  open_document = true;
                },
                [&] {
                  encoder.end_document();
                  ++documents;
                  open_document = false;
                });
          } else {
            encoder.text(piece);
            open_document = true;
          }
          bytes_done += piece.size();
          progress.update(f, files.files.size(), train.tokens() + val.tokens(), bytes_done);
        });
        if (open_document || !o.split_records) {
          encoder.end_document();
          ++documents;
        }
      }
      encoder.flush();
    };
    ParallelEncoder to_splitter(*tokenizer, threads, [&](std::uint32_t t) { splitter.add(t); });
    tokenize(inputs, to_splitter);
    if (!val_inputs.files.empty()) {
      const std::uint64_t before = bytes_done;
      ParallelEncoder to_val(*tokenizer, threads, [&](std::uint32_t t) { val.add(t); });
      tokenize(val_inputs, to_val);
      FATHOM_CHECK(bytes_done > before, "--val-input: the validation inputs hold no text");
    }
    progress.done();
    source = {{"type", "files"},
              {"inputs", o.inputs},
              {"val_inputs", o.val_inputs},
              {"files", inputs.files.size() + val_inputs.files.size()},
              {"documents", documents},
              {"skipped_binary", inputs.skipped_binary},
              {"bytes", bytes_done}};
  }
  train.finish();
  val.finish();
  FATHOM_CHECK(train.tokens() > 0,
               "the train split is empty: all "
                   << with_commas(val.tokens())
                   << " tokens went to validation; expected more input, a smaller --val-block ("
                   << val_block << ") or a smaller --val-fraction (" << o.val_fraction << ")");
  FATHOM_CHECK(val_fraction == 0 || val.tokens() > 0,
               "the validation split is empty; expected more input or a larger --val-fraction");

  nlohmann::json dataset = {
      {"format", "llm.c token shards"},
      {"token_width", fathom::data::width_name(width)},
      {"tokenizer", tokenizer_info},
      {"train",
       {{"pattern", "train_*.bin"}, {"shards", train.shards()}, {"tokens", train.tokens()}}},
      {"val", {{"pattern", "val_*.bin"}, {"shards", val.shards()}, {"tokens", val.tokens()}}},
      {"val_fraction", val_fraction},
      {"val_block", val_block},
      {"source", source},
  };
  {
    std::ofstream meta(stage / "dataset.json");
    meta << dataset.dump(2) << "\n";
    FATHOM_CHECK(meta, "--out '" << out.string() << "': cannot write dataset.json");
  }
  staging.commit();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ostringstream summary;
  summary << "fathom-prepare: ";
  if (builtin) {
    summary << "built-in corpus (seed " << o.seed << ")";
  } else {
    summary << inputs.files.size() << (inputs.files.size() == 1 ? " file" : " files");
    if (inputs.skipped_binary) summary << " (" << inputs.skipped_binary << " binary skipped)";
  }
  summary << " -> " << with_commas(train.tokens()) << " train tokens in " << train.shards()
          << (train.shards() == 1 ? " shard, " : " shards, ") << with_commas(val.tokens())
          << " val tokens in " << val.shards() << (val.shards() == 1 ? " shard" : " shards") << "; "
          << tokenizer->name() << " tokenizer (vocab " << tokenizer->vocab_size() << "), "
          << fathom::data::width_name(width) << ", in " << out.string() << " ("
          << static_cast<int>(seconds * 10) / 10.0 << " s)";
  std::cout << summary.str() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "fathom-prepare: turn text files or folders into token shards in the llm.c format\n"
      "(DIR/train_000000.bin ..., DIR/val_000000.bin ..., DIR/dataset.json), for fathom-train\n"
      "--data 'DIR/train_*.bin' --val-data 'DIR/val_*.bin'.",
      "fathom-prepare"};
  app.add_option("inputs", o.inputs,
                 "Text files, or folders walked recursively for text files (binary files skipped); "
                 "each file is one document, ended by the tokenizer's end-of-text token");
  app.add_option("--out,-o", o.out, "Output folder")->required();
  app.add_option("--shard-tokens", o.shard_tokens,
                 "Tokens per shard (100000000, 1e8, 100M); the last shard holds the rest")
      ->capture_default_str();
  app.add_option("--val-fraction", o.val_fraction,
                 "Fraction of tokens for validation, taken as evenly spread blocks; 0 = none")
      ->capture_default_str();
  app.add_option("--val-input", o.val_inputs,
                 "Validation text apart from the inputs (files or folders, repeatable): all of it "
                 "goes to validation, none of the inputs does (no --val-fraction then)");
  app.add_flag("--split-records", o.split_records,
               "A line holding only the ASCII record separator (0x1E) ends a document inside a "
               "file (each document is followed by the end-of-text token)");
  app.add_option("--threads", o.threads, "Tokenizer threads (0: one per core)")
      ->capture_default_str();
  app.add_option("--tokenizer-lines", o.tokenizer_lines,
                 "Lines --train-tokenizer trains on: a random sample (seeded by --seed) when the "
                 "inputs hold more")
      ->capture_default_str();
  app.add_option("--val-block", o.val_block, "Tokens per block of the train/validation split")
      ->capture_default_str();
  app.add_option("--tokenizer", o.tokenizer,
                 "'byte' (256 bytes + <|endoftext|>, vocab 257) or a sentencepiece .model file"
#if FATHOM_WITH_SENTENCEPIECE
                 " (this build has sentencepiece)"
#else
                 " (this build has no sentencepiece: 'byte' only)"
#endif
                 )
      ->capture_default_str();
  app.add_option("--train-tokenizer", o.train_tokenizer,
                 "Train a sentencepiece BPE model of this vocab size on the inputs, save it as "
                 "DIR/tokenizer.model and tokenize with it")
      ->check(CLI::Range(300, 1 << 20));
  app.add_flag("--uint32", o.uint32,
               "Write uint32 tokens (llm.c magic 20240801) even when the vocab fits uint16");
  app.add_option("--ext", o.extensions,
                 "In folders, take only files with these extensions (comma list, e.g. txt,md; "
                 "'none' = no extension); default: every text file");
  app.add_option(
      "--builtin", o.builtin,
      "Write this many tokens of the built-in corpus (and --val-fraction as many from its "
      "validation stream) instead of reading inputs");
  app.add_option("--seed", o.seed,
                 "Seed of the built-in corpus, and of the sample of lines --train-tokenizer uses")
      ->capture_default_str();
  app.add_flag("--overwrite", o.overwrite, "Replace shards already in --out");
  app.add_flag("--quiet,-q", o.quiet, "Print only the summary line");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);                   // --help
    std::cerr << "fathom-prepare: error: " << e.what() << std::endl;  // one line, as run's errors
    return e.get_exit_code();
  }
  o.val_fraction_given = app.count("--val-fraction") > 0;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "fathom-prepare: error: " << one_line(e) << std::endl;
    return 1;
  }
}
