// Switches read from the environment, for comparing a code path against its alternative
// (FATHOM_DGELU_EPILOGUE=0, FATHOM_CE_SHARED_ROW=0, ...).
#pragma once

#include <cstdlib>
#include <cstring>

namespace fathom {

// Whether the switch `name` is on: a switch on by default is off only when the variable is "0",
// one off by default is on only when it is "1". Callers read it once and keep the answer.
inline bool env_switch(const char* name, bool on_by_default) {
  const char* v = std::getenv(name);
  if (!v) return on_by_default;
  return on_by_default ? std::strcmp(v, "0") != 0 : std::strcmp(v, "1") == 0;
}

}  // namespace fathom
