// Tests for fathom::Error and FATHOM_CHECK / FATHOM_FAIL (include/fathom/core/error.hpp).
#include <fathom/core/error.hpp>

#include <stdexcept>
#include <string>

#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::test::contains;

namespace {

std::string message_of_failed_check(int expected, int got) {
  try {
    FATHOM_CHECK(got == expected, "expected " << expected << " rows, got " << got);
  } catch (const fathom::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("FATHOM_CHECK passes silently and does not evaluate its message", "[core][error]") {
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  REQUIRE_NOTHROW([&] { FATHOM_CHECK(2 + 2 == 4, "never built " << count()); }());
  REQUIRE(evaluated == 0);
  REQUIRE_THROWS_AS([&] { FATHOM_CHECK(2 + 2 == 5, "built " << count()); }(), fathom::Error);
  REQUIRE(evaluated == 1);
}

TEST_CASE("FATHOM_CHECK throws fathom::Error saying what was expected and what came",
          "[core][error]") {
  const std::string what = message_of_failed_check(17, 23);
  INFO("message: " << what);
  CHECK(contains(what, "expected 17 rows, got 23"));
  CHECK(contains(what, "got == expected"));  // the failed condition
  CHECK(contains(what, "test_error.cpp:"));  // the file and line where it failed
  CHECK_FALSE(contains(what, "expected 23"));
}

TEST_CASE("fathom::Error is a std::runtime_error", "[core][error]") {
  REQUIRE_THROWS_AS([] { FATHOM_CHECK(false, "x"); }(), std::runtime_error);
  try {
    FATHOM_CHECK(1 > 2, "expected shape (3, 4), got (4, 3)");
    FAIL("FATHOM_CHECK(1 > 2, ...) did not throw");
  } catch (const std::runtime_error& e) {
    INFO("message: " << e.what());
    CHECK(contains(e.what(), "expected shape (3, 4), got (4, 3)"));
  }
}

TEST_CASE("FATHOM_FAIL always throws with its streamed message", "[core][error]") {
  const double value = 2.5;
  try {
    FATHOM_FAIL("unknown policy 'x' after " << value << " seconds");
    FAIL("FATHOM_FAIL did not throw");
  } catch (const fathom::Error& e) {
    CHECK(std::string(e.what()) == "unknown policy 'x' after 2.5 seconds");
  }
}
