// The built-in corpus: seeded synthetic text whose structure (nested arithmetic, agreement across
// embedded clauses, nested quotes, key-value recall) rewards depth. docs/data.md describes it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/core/memory.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/data/tokenizer.hpp"

namespace fathom::data {

enum class Split { train, validation };

inline const char* split_name(Split s) { return s == Split::train ? "train" : "validation"; }

namespace detail {

// The generator's word lists, visible so tests can check the grammar.
struct WordForms {
  std::string_view one;   // singular noun, or verb form agreeing with a singular subject
  std::string_view many;  // plural noun, or verb form agreeing with a plural subject
};

inline constexpr std::array<WordForms, 16> corpus_nouns{{
    {"dog", "dogs"},
    {"cat", "cats"},
    {"bird", "birds"},
    {"girl", "girls"},
    {"boy", "boys"},
    {"teacher", "teachers"},
    {"farmer", "farmers"},
    {"king", "kings"},
    {"queen", "queens"},
    {"keeper", "keepers"},
    {"child", "children"},
    {"mouse", "mice"},
    {"man", "men"},
    {"woman", "women"},
    {"wolf", "wolves"},
    {"goose", "geese"},
}};
// Verbs that end a sentence (the main verb, which agrees with the first noun).
inline constexpr std::array<WordForms, 10> corpus_intransitive{{
    {"runs", "run"},
    {"sleeps", "sleep"},
    {"sings", "sing"},
    {"waits", "wait"},
    {"laughs", "laugh"},
    {"smiles", "smile"},
    {"falls", "fall"},
    {"wins", "win"},
    {"swims", "swim"},
    {"dances", "dance"},
}};
// Verbs inside relative clauses, agreeing with their own subject.
inline constexpr std::array<WordForms, 8> corpus_transitive{{
    {"sees", "see"},
    {"likes", "like"},
    {"chases", "chase"},
    {"follows", "follow"},
    {"helps", "help"},
    {"watches", "watch"},
    {"knows", "know"},
    {"finds", "find"},
}};
inline constexpr std::array<std::string_view, 12> corpus_adjectives{
    "old", "young", "small", "tall", "quiet",  "happy",
    "red", "green", "brave", "lazy", "clever", "tired"};
inline constexpr std::array<std::string_view, 6> corpus_prepositions{"near",   "behind", "with",
                                                                     "beside", "under",  "above"};
inline constexpr std::array<std::string_view, 24> corpus_values{
    "blue",   "amber", "stone", "silver", "red",   "green", "gold", "iron",
    "salt",   "ash",   "rose",  "pine",   "frost", "ember", "moss", "slate",
    "violet", "coral", "ivory", "jade",   "onyx",  "pearl", "rust", "sand"};
inline constexpr int corpus_keys = 32;  // keys are k0 .. k31

// SplitMix64: a fast sequential generator; the corpus is written in order, so it needs no counter
// access, and this keeps generation at tens of MB/s.
struct SplitMix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (multiply-shift; the bias is below 2^-32).
  std::uint32_t below(std::uint32_t n) {
    return static_cast<std::uint32_t>(((next() >> 32) * n) >> 32);
  }
  // True with probability num / 256.
  bool chance(std::uint32_t num) { return (next() >> 56) < num; }
};

inline void append_int(std::string& out, long long v) {
  if (v < 0) {
    out += '-';
    v = -v;
  }
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0);
  while (n > 0) out += buf[--n];
}

}  // namespace detail

// Writes documents of the built-in corpus, one after another, from a seed. A document is a few
// lines: first key definitions ("k3=blue k17=salt."), then 4 to 12 items, each one of
//   an arithmetic expression with its value      (7-2)*(1+(3*2))=35
//   a sentence whose last word agrees in number  the dogs that the old cat sees near the king run.
//   a sentence with nested quotes                the queen said "the man said 'the geese swim.'"
//   a recall of a key defined above              k3?blue
// Every line ends in '\n'.
class CorpusGenerator {
 public:
  explicit CorpusGenerator(std::uint64_t seed) : rng_{seed} {}

  void append_document(std::string& out) {
    // Key definitions: distinct keys, random values, recalled later in the document.
    const int num_keys = 2 + static_cast<int>(rng_.below(4));
    int keys[5];
    int values[5];
    for (int i = 0; i < num_keys; ++i) {
      bool fresh;
      do {
        keys[i] = static_cast<int>(rng_.below(detail::corpus_keys));
        fresh = true;
        for (int j = 0; j < i; ++j) fresh = fresh && keys[j] != keys[i];
      } while (!fresh);
      values[i] = static_cast<int>(rng_.below(detail::corpus_values.size()));
      if (i > 0) out += ' ';
      out += 'k';
      detail::append_int(out, keys[i]);
      out += '=';
      out += detail::corpus_values[values[i]];
    }
    out += ".\n";
    const int items = 4 + static_cast<int>(rng_.below(9));
    for (int i = 0; i < items; ++i) {
      const std::uint32_t kind = rng_.below(100);
      if (kind < 30) {
        append_expression(out);
      } else if (kind < 60) {
        append_sentence(out);
      } else if (kind < 75) {
        append_quote(out);
      } else {
        const int k = static_cast<int>(rng_.below(static_cast<std::uint32_t>(num_keys)));
        out += 'k';
        detail::append_int(out, keys[k]);
        out += '?';
        out += detail::corpus_values[values[k]];
      }
      out += '\n';
    }
  }

 private:
  // An expression over digits with + - *, every inner operation in brackets.
  // Products that would exceed 100 in size become sums, so values stay a few digits long.
  void append_expression(std::string& out) {
    // Nesting depth 1 to 4, evenly: "3+4" up to three brackets deep, a ladder of difficulty.
    const int depth = 1 + static_cast<int>(rng_.below(4));
    long long value = append_term(out, depth, true);
    out += '=';
    detail::append_int(out, value);
  }

  long long append_term(std::string& out, int depth, bool top) {
    if (depth == 0 || (!top && rng_.chance(96))) {
      const long long digit = rng_.below(10);
      out += static_cast<char>('0' + digit);
      return digit;
    }
    if (!top) out += '(';
    const long long a = append_term(out, depth - 1, false);
    const std::size_t op_at = out.size();
    out += '+';
    const long long b = append_term(out, depth - 1, false);
    if (!top) out += ')';
    long long value = a + b;
    const std::uint32_t op = rng_.below(3);
    if (op == 1) {
      out[op_at] = '-';
      value = a - b;
    } else if (op == 2 && (a * b <= 100 && a * b >= -100)) {
      out[op_at] = '*';
      value = a * b;
    }
    return value;
  }

  // "the [adj] noun [modifier]": a prepositional phrase or a relative clause whose own nouns often
  // differ in number from the head, so agreement must skip over them.
  void append_noun_phrase(std::string& out, bool plural, int depth) {
    out += "the ";
    if (rng_.chance(80)) {
      out += detail::corpus_adjectives[rng_.below(detail::corpus_adjectives.size())];
      out += ' ';
    }
    const auto& noun = detail::corpus_nouns[rng_.below(detail::corpus_nouns.size())];
    out += plural ? noun.many : noun.one;
    if (depth == 0 || !rng_.chance(160)) return;
    const std::uint32_t kind = rng_.below(10);
    const bool other = rng_.chance(128);
    if (kind < 4) {  // near the kings
      out += ' ';
      out += detail::corpus_prepositions[rng_.below(detail::corpus_prepositions.size())];
      out += ' ';
      append_noun_phrase(out, other, depth - 1);
    } else if (kind < 7) {  // that the cat sees: the clause's verb agrees with its own subject
      out += " that ";
      append_noun_phrase(out, other, depth - 1);
      out += ' ';
      const auto& verb = detail::corpus_transitive[rng_.below(detail::corpus_transitive.size())];
      out += other ? verb.many : verb.one;
    } else {  // that chase the cat: the clause's verb agrees with the head
      out += " that ";
      const auto& verb = detail::corpus_transitive[rng_.below(detail::corpus_transitive.size())];
      out += plural ? verb.many : verb.one;
      out += ' ';
      append_noun_phrase(out, other, depth - 1);
    }
  }

  void append_sentence(std::string& out) {
    const bool plural = rng_.chance(128);
    append_noun_phrase(out, plural, 2);
    out += ' ';
    const auto& verb = detail::corpus_intransitive[rng_.below(detail::corpus_intransitive.size())];
    out += plural ? verb.many : verb.one;
    out += '.';
  }

  // the queen said "the man said 'the geese swim.'": quotes close in reverse order of opening.
  void append_quote(std::string& out) {
    const bool nested = rng_.chance(96);
    append_noun_phrase(out, rng_.chance(128), 1);
    out += " said \"";
    if (nested) {
      append_noun_phrase(out, rng_.chance(128), 0);
      out += " said '";
      append_sentence(out);
      out += "'\"";
    } else {
      append_sentence(out);
      out += '"';
    }
  }

  detail::SplitMix64 rng_;
};

// The seed of a split's generator: the splits draw from unrelated streams, so they share no
// documents (each document is hundreds of random choices long).
inline std::uint64_t corpus_seed(Split split, std::uint64_t seed) {
  return rng::derive_seed(seed, split == Split::train ? 0x747261696eull : 0x76616cull);
}

// `bytes` bytes of corpus text for `split`, documents separated by an empty line; the last
// document is cut at `bytes`.
inline std::string corpus_text(Split split, std::size_t bytes, std::uint64_t seed = 0) {
  CorpusGenerator gen(corpus_seed(split, seed));
  std::string text;
  text.reserve(bytes + 1024);
  while (text.size() < bytes) {
    if (!text.empty()) text += '\n';
    gen.append_document(text);
  }
  text.resize(bytes);
  return text;
}

// The built-in corpus as ByteTokenizer ids: each document's bytes followed by <|endoftext|>
// (id 256), exactly `tokens` ids in all (the last document is cut). Deterministic in
// (split, tokens, seed); a longer request extends a shorter one.
inline std::vector<std::int32_t> builtin_corpus(Split split, std::size_t tokens,
                                                std::uint64_t seed = 0) {
  FATHOM_CHECK(tokens > 0,
               "built-in corpus (" << split_name(split) << "): expected a size > 0 tokens, got 0");
  memory::require_available<Cpu>(memory::saturating_bytes(tokens, sizeof(std::int32_t)),
                                 "built-in corpus (" + std::string(split_name(split)) +
                                     "): " + std::to_string(tokens) + " tokens");
  CorpusGenerator gen(corpus_seed(split, seed));
  std::vector<std::int32_t> ids;
  ids.reserve(tokens + 1024);
  std::string doc;
  while (ids.size() < tokens) {
    doc.clear();
    gen.append_document(doc);
    for (char c : doc) ids.push_back(static_cast<unsigned char>(c));
    ids.push_back(ByteTokenizer::end_of_text);
  }
  ids.resize(tokens);
  return ids;
}

}  // namespace fathom::data
