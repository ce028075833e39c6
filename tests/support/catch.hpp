// One include for the tests, whichever Catch2 is installed: v2 (single header, Debian's 2.13) or
// v3 (split headers). Tests include this and nothing of Catch2 directly.
#pragma once

#include <string>

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#define FATHOM_CATCH_V3 1
#elif __has_include(<catch2/catch.hpp>)
#include <catch2/catch.hpp>
#define FATHOM_CATCH_V3 0
#else
#error "Catch2 not found: install Debian's catch2 package (v2) or Catch2 v3"
#endif

using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

// A string matcher "contains this substring" under either major version.
#if FATHOM_CATCH_V3
inline auto HasSubstring(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
inline auto HasSubstring(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif
