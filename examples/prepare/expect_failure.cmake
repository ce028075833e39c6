# Runs PROGRAM with ARGS ('|'-separated) and checks that it fails, that its last output line is
# "NAME: error: ..." and the only one to say so, and that the output matches the regular
# expression MESSAGE. NAME defaults to fathom-prepare (fathom-train's tests pass their own). Used by
# ctest.
if(NOT DEFINED NAME)
  set(NAME fathom-prepare)
endif()
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND "${PROGRAM}" ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE out)
message("${out}")
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit, got 0")
endif()
if(NOT out MATCHES "${MESSAGE}")
  message(FATAL_ERROR "expected the output to match '${MESSAGE}'")
endif()
string(STRIP "${out}" stripped)
string(REGEX MATCHALL "error" errors "${stripped}")
list(LENGTH errors count)
if(NOT stripped MATCHES "(^|\n)${NAME}: error: [^\n]*$" OR NOT count EQUAL 1)
  message(FATAL_ERROR "expected one line '${NAME}: error: ...', last")
endif()
