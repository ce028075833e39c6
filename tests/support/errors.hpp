// What the tests of fathom's error messages share: the message a call throws, a substring test,
// and a check that a call throws a message naming every expected part.
#pragma once

#include <initializer_list>
#include <string>

#include <fathom/core/error.hpp>

#include "support/catch.hpp"

namespace fathom::test {

// The message of the fathom::Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const fathom::Error& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// f throws a fathom::Error whose message contains every one of `parts`.
template <class F>
void require_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const fathom::Error& e) {
    std::string what = e.what();
    for (const auto& p : parts) {
      INFO("message: " << what);
      CHECK(what.find(p) != std::string::npos);
    }
    return;
  }
  FAIL("expected a fathom::Error mentioning '" << *parts.begin() << "'");
}

}  // namespace fathom::test
