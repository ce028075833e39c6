# A run folder holds one run (ctest train/one_run_per_folder): fathom-train into a folder that holds
# a run fails with one line naming the folder, --resume and --overwrite, and leaves metrics.jsonl
# and every checkpoint byte for byte as they were; --overwrite replaces the run (and says what it
# removed and kept); --resume continues it; a new path and an empty folder are taken as they are.
# Run by ctest with PROGRAM (fathom-train), WORK (a scratch folder) and ARGS ('|'-separated flags
# of a small CPU run).
string(REPLACE "|" ";" small "${ARGS}")
set(run "${WORK}/run")
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")

function(train expect_rc)
  execute_process(COMMAND "${PROGRAM}" ${small} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  list(JOIN ARGN " " shown)
  message("+ fathom-train ${shown}\n${out}${err}")
  if(expect_rc EQUAL 0 AND NOT rc EQUAL 0)
    message(FATAL_ERROR "expected fathom-train ${ARGN} to succeed, got exit status ${rc}")
  elseif(NOT expect_rc EQUAL 0 AND rc EQUAL 0)
    message(FATAL_ERROR "expected fathom-train ${ARGN} to fail, it succeeded")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

# The SHA-256 of every file of the run (metrics.jsonl, ckpt-*/*), one "name hash" a line.
function(run_digest var)
  file(GLOB_RECURSE files RELATIVE "${run}" "${run}/metrics.jsonl" "${run}/ckpt-*/*")
  list(SORT files)
  set(digest "")
  foreach(f IN LISTS files)
    file(SHA256 "${run}/${f}" h)
    string(APPEND digest "${f} ${h}\n")
  endforeach()
  set(${var} "${digest}" PARENT_SCOPE)
endfunction()

# 1. A first run: metrics.jsonl, ckpt-2 and ckpt-4.
train(0 --steps 4 --save-every 2 --out "${run}")
run_digest(first)
if(NOT first MATCHES "ckpt-2/model.safetensors" OR NOT first MATCHES "ckpt-4/model.safetensors")
  message(FATAL_ERROR "expected ckpt-2 and ckpt-4 in ${run}, got:\n${first}")
endif()

# 2. A second run into it is refused with one line, and the first run is left as it was.
train(1 --steps 4 --save-every 2 --out "${run}")
string(STRIP "${err}" line)
set(expected "fathom-train: error: --out '${run}' already holds a run (metrics.jsonl, ckpt-2, ckpt-4): continue it with --resume ${run}, replace it with --overwrite, or choose another --out")
if(NOT line STREQUAL expected)
  message(FATAL_ERROR "expected the one line\n  ${expected}\ngot\n  ${line}")
endif()
run_digest(after)
if(NOT after STREQUAL first)
  message(FATAL_ERROR "the refused run changed the first run's files:\nbefore\n${first}after\n${after}")
endif()
# A run of another size is refused the same way (before its model is built).
train(1 --steps 2 --layers 3 --out "${run}")
run_digest(after)
if(NOT err MATCHES "already holds a run" OR NOT after STREQUAL first)
  message(FATAL_ERROR "expected a refusal that leaves the run as it was")
endif()

# 3. --resume continues it: the run in ckpt-2 resumed (its later steps dropped from the log).
file(REMOVE_RECURSE "${run}/ckpt-4")
train(0 --steps 4 --save-every 2 --out "${run}" --resume "${run}/ckpt-2/")
if(NOT out MATCHES "resumed from [^\n]*ckpt-2 \\(step 2 of 4\\)" OR NOT out MATCHES "done: steps 2\\.\\.4")
  message(FATAL_ERROR "expected the run to resume from ckpt-2 and finish at step 4")
endif()

# 4. --overwrite replaces it: the old run's files go, a file of another program stays.
file(WRITE "${run}/diagnose.json" "{}\n")
train(0 --steps 3 --log-every 1 --out "${run}" --overwrite)
if(NOT out MATCHES "replaced the run in [^\n]*run: removed metrics.jsonl, ckpt-2, ckpt-4; kept diagnose.json")
  message(FATAL_ERROR "expected a line saying what --overwrite removed and kept")
endif()
run_digest(replaced)
if(EXISTS "${run}/ckpt-2" OR EXISTS "${run}/ckpt-4" OR NOT EXISTS "${run}/ckpt-3/model.safetensors"
   OR NOT EXISTS "${run}/diagnose.json")
  message(FATAL_ERROR "expected only the new run's ckpt-3 and the kept diagnose.json, got:\n${replaced}")
endif()
file(STRINGS "${run}/metrics.jsonl" records REGEX "\"loss\"")
string(REGEX MATCHALL "\"step\":[0-9]+" steps "${records}")
if(NOT steps STREQUAL "\"step\":1;\"step\":2;\"step\":3")
  message(FATAL_ERROR "expected the steps 1, 2, 3 of the new run alone in metrics.jsonl, got ${steps}")
endif()
# --overwrite and --resume of the same run contradict each other.
train(1 --steps 3 --out "${run}" --overwrite --resume "${run}")
if(NOT err MATCHES "fathom-train: error: --overwrite: cannot be combined with resuming from the run it would replace")
  message(FATAL_ERROR "expected --overwrite with --resume of the same run to be refused")
endif()

# 5. A new path and an empty folder are taken as they are.
train(0 --steps 2 --out "${WORK}/new/nested")
file(MAKE_DIRECTORY "${WORK}/empty")
train(0 --steps 2 --out "${WORK}/empty")
if(NOT EXISTS "${WORK}/new/nested/ckpt-2" OR NOT EXISTS "${WORK}/empty/ckpt-2")
  message(FATAL_ERROR "expected runs in a new path and in an empty folder")
endif()
