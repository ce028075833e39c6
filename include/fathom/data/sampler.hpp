// TokenSource: batches of (B, T) inputs and next-token targets cut from token shards, either at
// seeded random positions (training) or in a fixed order (validation), with a saveable position.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/data/glob.hpp"
#include "fathom/data/shards.hpp"

namespace fathom::data {

// random: each row is a window at a uniformly drawn position, drawn with replacement, so a step's
//         batch depends only on (seed, step). sequential: windows at stride T from the start of
//         each shard, in order, wrapping around after the last full batch; for evaluation.
enum class SampleOrder { random, sequential };

inline const char* order_name(SampleOrder o) {
  return o == SampleOrder::random ? "random" : "sequential";
}

struct SamplerOptions {
  std::int64_t batch = 8;      // B: rows per batch
  std::int64_t seq_len = 256;  // T: tokens per row; a row reads T + 1 tokens
  std::uint64_t seed = 0;      // random order only
  SampleOrder order = SampleOrder::random;
  std::uint32_t vocab = 0;  // when > 0, every token is checked to be < vocab on construction
  int rank = 0;             // data parallel: this process's rank of `ranks`; each rank reads
  int ranks = 1;            // its own rows, and together they read what one process would
};

// Where a TokenSource is: enough to resume it. batch, seq_len, ranks and order are recorded so a
// state is never applied to a source that would read it differently.
struct SamplerState {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // batches drawn so far by this rank
  std::int64_t batch = 0;
  std::int64_t seq_len = 0;
  int ranks = 1;
  SampleOrder order = SampleOrder::random;
  bool operator==(const SamplerState&) const = default;
};

// JSON through nlohmann's ADL hooks: {"seed", "step", "batch", "seq_len", "ranks", "order"}.
// Templates, so this header needs only the caller's <nlohmann/json.hpp>.
template <class Json>
void to_json(Json& j, const SamplerState& s) {
  j = Json{{"seed", s.seed},       {"step", s.step},   {"batch", s.batch},
           {"seq_len", s.seq_len}, {"ranks", s.ranks}, {"order", order_name(s.order)}};
}

template <class Json>
void from_json(const Json& j, SamplerState& s) {
  std::string order;
  try {
    j.at("seed").get_to(s.seed);
    j.at("step").get_to(s.step);
    j.at("batch").get_to(s.batch);
    j.at("seq_len").get_to(s.seq_len);
    j.at("ranks").get_to(s.ranks);
    j.at("order").get_to(order);
  } catch (const std::exception& e) {
    FATHOM_FAIL(
        "sampler state: expected an object with seed, step, batch, seq_len, ranks and order, "
        "got "
        << j.dump() << " (" << e.what() << ")");
  }
  FATHOM_CHECK(order == "random" || order == "sequential",
               "sampler state: expected order 'random' or 'sequential', got '" << order << "'");
  s.order = order == "random" ? SampleOrder::random : SampleOrder::sequential;
}

// One batch: row b holds tokens [p, p + T) of some shard as inputs and [p + 1, p + T + 1) as
// targets, so targets[i] is the token that follows inputs[i].
struct Batch {
  std::int64_t batch = 0;
  std::int64_t seq_len = 0;
  std::vector<std::int32_t> inputs;   // (B, T)
  std::vector<std::int32_t> targets;  // (B, T)
};

class TokenSource {
 public:
  // Over shards already opened. Throws on empty data, a sequence longer than every shard, a batch
  // larger than the data, or (with options.vocab) a token id >= vocab.
  TokenSource(std::vector<ShardView> shards, SamplerOptions options)
      : shards_(std::move(shards)), options_(options) {
    check_and_index();
  }

  // Over the files matching a glob such as "dir/*_train_*.bin" (see expand_glob).
  static TokenSource from_pattern(const std::string& pattern, SamplerOptions options) {
    return from_files(expand_glob(pattern), options);
  }

  static TokenSource from_files(const std::vector<std::filesystem::path>& files,
                                SamplerOptions options) {
    std::vector<ShardView> shards;
    shards.reserve(files.size());
    for (const auto& f : files) shards.emplace_back(f);
    return TokenSource(std::move(shards), options);
  }

  // Over tokens in memory (the built-in corpus); `name` says what they are in error messages.
  static TokenSource from_tokens(const std::vector<std::int32_t>& tokens, SamplerOptions options,
                                 std::string name = "tokens in memory") {
    std::vector<std::uint32_t> held(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      FATHOM_CHECK(tokens[i] >= 0,
                   name << ": expected token ids >= 0, got " << tokens[i] << " at offset " << i);
      held[i] = static_cast<std::uint32_t>(tokens[i]);
    }
    std::vector<ShardView> shards;
    shards.emplace_back(std::move(held), std::move(name));
    return TokenSource(std::move(shards), options);
  }

  Batch next() {
    Batch b;
    next(b);
    return b;
  }

  // Fills `out` (reusing its storage) with the next batch and advances the position.
  void next(Batch& out) {
    const std::size_t B = static_cast<std::size_t>(options_.batch);
    const std::size_t T = static_cast<std::size_t>(options_.seq_len);
    out.batch = options_.batch;
    out.seq_len = options_.seq_len;
    out.inputs.resize(B * T);
    out.targets.resize(B * T);
    for (std::size_t b = 0; b < B; ++b) {
      auto [shard, start] = window(step_, b);
      const ShardView& s = shards_[shard];
      s.copy_to(start, T, out.inputs.data() + b * T);
      s.copy_to(start + 1, T, out.targets.data() + b * T);
    }
    ++step_;
  }

  // (shard index, first token) of row `row` of batch `step`, without moving the position.
  std::pair<std::size_t, std::size_t> window(std::uint64_t step, std::size_t row) const {
    const std::uint64_t B = static_cast<std::uint64_t>(options_.batch);
    const std::uint64_t ranks = static_cast<std::uint64_t>(options_.ranks);
    const std::uint64_t rank = static_cast<std::uint64_t>(options_.rank);
    if (options_.order == SampleOrder::random) {
      const std::uint64_t counter = (step * ranks + rank) * B + row;
      const double u = rng::uniform(options_.seed, counter);
      std::uint64_t w = static_cast<std::uint64_t>(u * static_cast<double>(total_windows_));
      w = std::min(w, total_windows_ - 1);
      return locate(w, 1);
    }
    const std::uint64_t global_batch = (step % batches_per_pass_) * ranks + rank;
    return locate(global_batch * B + row, static_cast<std::uint64_t>(options_.seq_len));
  }

  // Sequential order: next() calls that read each window once on this rank (then it wraps).
  // Random order: windows / (B * ranks), a notional epoch.
  std::uint64_t batches_per_pass() const { return batches_per_pass_; }
  std::uint64_t num_windows() const { return total_windows_; }
  std::uint64_t num_tokens() const { return total_tokens_; }
  std::size_t num_shards() const { return shards_.size(); }
  const SamplerOptions& options() const { return options_; }

  SamplerState state() const {
    return {options_.seed, step_, options_.batch, options_.seq_len, options_.ranks, options_.order};
  }

  // Resumes at `s`: the following batches are those the saved source would have produced.
  void set_state(const SamplerState& s) {
    FATHOM_CHECK(s.order == options_.order && s.batch == options_.batch &&
                     s.seq_len == options_.seq_len && s.ranks == options_.ranks,
                 "sampler state: saved for order "
                     << order_name(s.order) << ", batch " << s.batch << ", seq_len " << s.seq_len
                     << ", ranks " << s.ranks << "; expected order " << order_name(options_.order)
                     << ", batch " << options_.batch << ", seq_len " << options_.seq_len
                     << ", ranks " << options_.ranks);
    options_.seed = s.seed;
    step_ = s.step;
  }

  // Back to the first batch (sequential order: the start of the pass).
  void reset() { step_ = 0; }

 private:
  // Window w of the concatenated per-shard window lists; windows of a shard start at multiples of
  // `stride`. first_window_ holds the running counts.
  std::pair<std::size_t, std::size_t> locate(std::uint64_t w, std::uint64_t stride) const {
    auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w);
    std::size_t shard = static_cast<std::size_t>(it - first_window_.begin()) - 1;
    return {shard, static_cast<std::size_t>((w - first_window_[shard]) * stride)};
  }

  void check_and_index() {
    const SamplerOptions& o = options_;
    FATHOM_CHECK(o.batch >= 1 && o.seq_len >= 1,
                 "token source: expected batch >= 1 and seq_len >= 1, got batch "
                     << o.batch << " and seq_len " << o.seq_len);
    FATHOM_CHECK(
        o.ranks >= 1 && o.rank >= 0 && o.rank < o.ranks,
        "token source: expected 0 <= rank < ranks, got rank " << o.rank << " of " << o.ranks);
    FATHOM_CHECK(!shards_.empty(),
                 "token source: empty data; expected at least one shard, got none");
    const std::uint64_t T = static_cast<std::uint64_t>(o.seq_len);
    const std::uint64_t B =
        static_cast<std::uint64_t>(o.batch) * static_cast<std::uint64_t>(o.ranks);
    std::size_t largest = 0;
    first_window_.clear();
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      const std::uint64_t n = shards_[i].size();
      if (n > shards_[largest].size()) largest = i;
      // Random order: any start with T + 1 tokens left. Sequential: starts at multiples of T.
      const std::uint64_t windows = n < T + 1                        ? 0
                                    : o.order == SampleOrder::random ? n - T
                                                                     : (n - 1) / T;
      first_window_.push_back(total_windows_);
      total_windows_ += windows;
      total_tokens_ += n;
    }
    FATHOM_CHECK(total_tokens_ > 0, "token source: empty data; expected tokens in "
                                        << shards_.front().name() << ", got none");
    FATHOM_CHECK(total_windows_ > 0,
                 "token source: sequence length "
                     << o.seq_len << " needs " << T + 1 << " tokens in one shard, but the largest, "
                     << shards_[largest].name() << ", holds " << shards_[largest].size());
    std::uint64_t batch_tokens = 0;
    const bool overflow = __builtin_mul_overflow(B, T + 1, &batch_tokens);
    FATHOM_CHECK(!overflow && batch_tokens <= total_tokens_,
                 "token source: a batch of "
                     << B << " x " << T + 1 << " tokens (batch " << o.batch
                     << (o.ranks > 1 ? " on each of " + std::to_string(o.ranks) + " ranks" : "")
                     << ", seq_len " << o.seq_len << " + 1) = "
                     << (overflow ? std::string("over 2^64") : std::to_string(batch_tokens))
                     << " tokens is larger than the data, " << total_tokens_ << " tokens");
    FATHOM_CHECK(o.order == SampleOrder::random || total_windows_ >= B,
                 "token source: a batch of "
                     << B << " rows is larger than the data: " << total_tokens_ << " tokens hold "
                     << total_windows_ << " sequential windows of seq_len " << o.seq_len);
    batches_per_pass_ = std::max<std::uint64_t>(1, total_windows_ / B);
    if (o.vocab > 0)
      for (const ShardView& s : shards_) s.validate(o.vocab);
  }

  std::vector<ShardView> shards_;
  SamplerOptions options_;
  std::vector<std::uint64_t> first_window_;
  std::uint64_t total_tokens_ = 0;
  std::uint64_t total_windows_ = 0;
  std::uint64_t batches_per_pass_ = 1;
  std::uint64_t step_ = 0;
};

}  // namespace fathom::data
