// Tests for fathom/data/corpus.hpp: determinism, split separation, and that the structure the
// corpus promises is really there (values, agreement, balanced brackets and quotes, recall).
#include <fathom/data/corpus.hpp>

#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/catch.hpp"

using fathom::data::builtin_corpus;
using fathom::data::corpus_text;
using fathom::data::Split;

namespace {

std::vector<std::string> split_on(const std::string& text, const std::string& sep) {
  std::vector<std::string> parts;
  std::size_t at = 0;
  for (std::size_t next; (next = text.find(sep, at)) != std::string::npos; at = next + sep.size())
    parts.push_back(text.substr(at, next - at));
  parts.push_back(text.substr(at));
  return parts;
}

// A recursive-descent evaluator for "term op term" with bracketed sub-terms; it fails the test on
// anything else, so it also checks that brackets balance.
struct Evaluator {
  const std::string& s;
  std::size_t at = 0;

  long long term() {
    REQUIRE(at < s.size());
    if (s[at] == '(') {
      ++at;
      long long v = operation();
      REQUIRE(at < s.size());
      REQUIRE(s[at] == ')');
      ++at;
      return v;
    }
    REQUIRE(std::isdigit(static_cast<unsigned char>(s[at])));
    return s[at++] - '0';
  }
  long long operation() {
    long long a = term();
    REQUIRE(at < s.size());
    char op = s[at++];
    long long b = term();
    REQUIRE((op == '+' || op == '-' || op == '*'));
    return op == '+' ? a + b : op == '-' ? a - b : a * b;
  }
};

std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

// The plain sentence inside the innermost quotes (or the line itself): "the ... verb."
std::string innermost_sentence(const std::string& line) {
  std::size_t open = line.find('"');
  if (open == std::string::npos) return line;
  REQUIRE(line.back() == '"');
  std::string inner = line.substr(open + 1, line.size() - open - 2);
  std::size_t single = inner.find('\'');
  if (single == std::string::npos) return inner;
  REQUIRE(inner.back() == '\'');
  return inner.substr(single + 1, inner.size() - single - 2);
}

// Checks the main verb (last word) agrees in number with the head noun (2nd or 3rd word).
void check_agreement(const std::string& sentence) {
  using fathom::data::detail::corpus_adjectives;
  using fathom::data::detail::corpus_intransitive;
  using fathom::data::detail::corpus_nouns;
  REQUIRE(sentence.back() == '.');
  auto w = words(sentence.substr(0, sentence.size() - 1));
  REQUIRE(w.size() >= 3);
  REQUIRE(w[0] == "the");
  std::size_t noun_at = 1;
  for (auto adj : corpus_adjectives)
    if (w[1] == adj) noun_at = 2;
  int number = -1;  // 0 singular, 1 plural
  for (const auto& n : corpus_nouns) {
    if (w[noun_at] == n.one) number = 0;
    if (w[noun_at] == n.many) number = 1;
  }
  INFO(sentence);
  REQUIRE(number != -1);
  bool agrees = false;
  for (const auto& v : corpus_intransitive)
    agrees = agrees || w.back() == (number ? v.many : v.one);
  CHECK(agrees);
}

}  // namespace

TEST_CASE("the corpus is deterministic in seed and split", "[data][corpus]") {
  const std::size_t n = 20000;
  CHECK(corpus_text(Split::train, n, 3) == corpus_text(Split::train, n, 3));
  CHECK(corpus_text(Split::train, n, 3) != corpus_text(Split::train, n, 4));
  CHECK(corpus_text(Split::train, n, 3) != corpus_text(Split::validation, n, 3));
  CHECK(corpus_text(Split::train, n, 3).size() == n);
  // A longer request extends a shorter one.
  CHECK(corpus_text(Split::train, 2 * n, 3).substr(0, n) == corpus_text(Split::train, n, 3));
  auto a = builtin_corpus(Split::validation, n, 8);
  CHECK(a.size() == n);
  CHECK(a == builtin_corpus(Split::validation, n, 8));
  CHECK(a != builtin_corpus(Split::train, n, 8));
}

TEST_CASE("builtin_corpus is the corpus text with <|endoftext|> between documents",
          "[data][corpus]") {
  const std::size_t n = 50000;
  auto ids = builtin_corpus(Split::train, n, 5);
  std::string text = corpus_text(Split::train, n, 5);
  REQUIRE(ids.size() == text.size());
  std::size_t documents = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (ids[i] == 256) {
      ++documents;
      // corpus_text separates documents by an empty line at the same place.
      REQUIRE(text[i] == '\n');
      REQUIRE(text[i - 1] == '\n');
    } else {
      REQUIRE(ids[i] == static_cast<unsigned char>(text[i]));
      REQUIRE(ids[i] < 128);  // plain ASCII
    }
  }
  CHECK(documents > 50);
}

TEST_CASE("train and validation share no documents", "[data][corpus]") {
  auto train = split_on(corpus_text(Split::train, 1 << 20, 0), "\n\n");
  auto val = split_on(corpus_text(Split::validation, 64 << 10, 0), "\n\n");
  train.pop_back();  // cut short
  val.pop_back();
  std::set<std::string> seen(train.begin(), train.end());
  REQUIRE(val.size() > 100);
  for (const auto& doc : val) REQUIRE(seen.count(doc) == 0);
}

TEST_CASE("every line of the corpus has the structure it promises", "[data][corpus]") {
  const std::uint64_t seed = GENERATE(0, 1, 2);
  auto documents = split_on(corpus_text(Split::train, 256 << 10, seed), "\n\n");
  documents.pop_back();  // cut short
  REQUIRE(documents.size() > 300);
  std::map<std::string, int> kinds;
  for (const auto& doc : documents) {
    auto lines = split_on(doc, "\n");  // the "\n\n" split took the last line's '\n'
    // First line: distinct keys with values, "k3=blue k17=salt."
    REQUIRE(lines.front().back() == '.');
    std::map<std::string, std::string> defined;
    for (const auto& def : words(lines.front().substr(0, lines.front().size() - 1))) {
      auto eq = def.find('=');
      REQUIRE(eq != std::string::npos);
      REQUIRE(def[0] == 'k');
      REQUIRE(defined.count(def.substr(0, eq)) == 0);
      defined[def.substr(0, eq)] = def.substr(eq + 1);
    }
    REQUIRE(defined.size() >= 2);
    REQUIRE(lines.size() >= 5);
    for (std::size_t i = 1; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      INFO(line);
      if (line[0] == 'k') {  // a recall: the value defined above for that key
        auto q = line.find('?');
        REQUIRE(q != std::string::npos);
        REQUIRE(defined.count(line.substr(0, q)) == 1);
        CHECK(defined[line.substr(0, q)] == line.substr(q + 1));
        ++kinds["recall"];
      } else if (line.find('=') != std::string::npos) {  // arithmetic with its value
        auto eq = line.find('=');
        std::string expr = line.substr(0, eq);
        Evaluator ev{expr};
        long long value = ev.operation();
        REQUIRE(ev.at == expr.size());
        CHECK(std::to_string(value) == line.substr(eq + 1));
        ++kinds[expr.find('(') == std::string::npos ? "flat arithmetic" : "nested arithmetic"];
      } else {  // a sentence, perhaps quoted; quotes close in reverse order
        std::size_t doubles = 0, singles = 0;
        for (char c : line) {
          doubles += c == '"';
          singles += c == '\'';
        }
        REQUIRE(doubles % 2 == 0);
        REQUIRE(singles % 2 == 0);
        REQUIRE((singles == 0 || doubles == 2));
        if (singles) REQUIRE(line.substr(line.size() - 2) == "'\"");
        check_agreement(innermost_sentence(line));
        ++kinds[doubles ? "quote" : "sentence"];
      }
    }
  }
  // All kinds of item occur in a sample this size.
  for (const char* kind : {"recall", "flat arithmetic", "nested arithmetic", "sentence", "quote"})
    CHECK(kinds[kind] > 100);
}
