// fathom::Error, the one exception type of the library, and FATHOM_CHECK, which throws it with
// the failed condition, the place, and a message saying what was expected and what came.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fathom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
[[noreturn]] inline void throw_check_failure(const char* condition, const char* file, int line,
                                             const std::string& message) {
  std::ostringstream out;
  out << message << " [check `" << condition << "` failed at " << file << ":" << line << "]";
  throw Error(out.str());
}
}  // namespace detail

}  // namespace fathom

// FATHOM_CHECK(cond, "expected shape " << a << ", got " << b): the message is a stream expression,
// evaluated only when the check fails.
#define FATHOM_CHECK(cond, msg)                                          \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::ostringstream fathom_check_stream_;                           \
      fathom_check_stream_ << msg;                                       \
      ::fathom::detail::throw_check_failure(#cond, __FILE__, __LINE__,   \
                                            fathom_check_stream_.str()); \
    }                                                                    \
  } while (0)

// FATHOM_FAIL("message " << x): throw unconditionally.
#define FATHOM_FAIL(msg)                               \
  do {                                                 \
    std::ostringstream fathom_check_stream_;           \
    fathom_check_stream_ << msg;                       \
    throw ::fathom::Error(fathom_check_stream_.str()); \
  } while (0)
