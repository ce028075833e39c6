# fathom-prepare --overwrite interrupted while it moves the new shards in: the next fathom-prepare
# into the folder finishes the replacement first, so the folder ends with the whole new set (not
# the old one, not a mix, no staging folders left). Two interruptions are rebuilt by hand from two
# real sets of shards, OLD (--builtin 20k) and NEW (--builtin 30k):
#   1. the new set is complete in DIR/.fathom-prepare.tmp (.complete written), nothing moved yet;
#   2. the old shards are already aside in DIR/.fathom-prepare.old (.done written) and the new
#      train shard already moved in, while the new val shard and dataset.json are still staged.
# Each time, a fathom-prepare into DIR without --overwrite must say it is finishing, then refuse to
# replace the (now new) shards, and DIR must hold exactly NEW's files. Used by ctest:
#   cmake -DPROGRAM=fathom-prepare -DWORK=dir -P interrupted_overwrite.cmake
set(old "${WORK}/old")
set(new "${WORK}/new")
file(REMOVE_RECURSE "${WORK}")
foreach(pair "old;20000" "new;30000")
  list(GET pair 0 name)
  list(GET pair 1 tokens)
  execute_process(COMMAND "${PROGRAM}" --builtin ${tokens} --val-fraction 0.1 --out "${WORK}/${name}"
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fathom-prepare --builtin ${tokens} failed: ${err}")
  endif()
endforeach()
set(files train_000000.bin val_000000.bin dataset.json)

function(expect_new dir label)
  foreach(f IN LISTS files)
    file(SHA256 "${new}/${f}" want)
    if(NOT EXISTS "${dir}/${f}")
      message(FATAL_ERROR "${label}: ${f} missing from ${dir}")
    endif()
    file(SHA256 "${dir}/${f}" got)
    if(NOT got STREQUAL want)
      message(FATAL_ERROR "${label}: ${dir}/${f} is not the new set's")
    endif()
  endforeach()
  foreach(left .fathom-prepare.tmp .fathom-prepare.old)
    if(EXISTS "${dir}/${left}")
      message(FATAL_ERROR "${label}: ${dir}/${left} left behind")
    endif()
  endforeach()
endfunction()

function(finish_and_check dir label)
  execute_process(COMMAND "${PROGRAM}" --builtin 1000 --out "${dir}" RESULT_VARIABLE rc
                  OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${label}:\n${out}")
  if(rc EQUAL 0)
    message(FATAL_ERROR "${label}: expected a refusal to replace the finished shards, got exit 0")
  endif()
  if(NOT out MATCHES "finishing the replacement of the shards in")
    message(FATAL_ERROR "${label}: expected 'finishing the replacement of the shards in ...'")
  endif()
  if(NOT out MATCHES "already holds shards")
    message(FATAL_ERROR "${label}: expected the refusal 'already holds shards'")
  endif()
  expect_new("${dir}" "${label}")
endfunction()

# 1. Staged and complete, nothing moved.
set(dir "${WORK}/staged")
file(MAKE_DIRECTORY "${dir}/.fathom-prepare.tmp")
foreach(f IN LISTS files)
  file(COPY "${old}/${f}" DESTINATION "${dir}")
  file(COPY "${new}/${f}" DESTINATION "${dir}/.fathom-prepare.tmp")
endforeach()
file(WRITE "${dir}/.fathom-prepare.tmp/.complete" "ok")
finish_and_check("${dir}" "complete staged set, nothing moved")

# 2. Old shards aside, the new train shard moved in, the rest still staged.
set(dir "${WORK}/halfway")
file(MAKE_DIRECTORY "${dir}/.fathom-prepare.tmp" "${dir}/.fathom-prepare.old")
file(COPY "${old}/train_000000.bin" "${old}/val_000000.bin" DESTINATION "${dir}/.fathom-prepare.old")
file(WRITE "${dir}/.fathom-prepare.old/.done" "ok")
file(COPY "${old}/dataset.json" DESTINATION "${dir}")
file(COPY "${new}/train_000000.bin" DESTINATION "${dir}")
file(COPY "${new}/val_000000.bin" "${new}/dataset.json" DESTINATION "${dir}/.fathom-prepare.tmp")
file(WRITE "${dir}/.fathom-prepare.tmp/.complete" "ok")
finish_and_check("${dir}" "halfway through moving the new set in")

# 3. A staged set that was never completed (the run crashed while writing it) is dropped and the
#    old shards stay.
set(dir "${WORK}/incomplete")
file(MAKE_DIRECTORY "${dir}/.fathom-prepare.tmp")
foreach(f IN LISTS files)
  file(COPY "${old}/${f}" DESTINATION "${dir}")
endforeach()
file(COPY "${new}/train_000000.bin" DESTINATION "${dir}/.fathom-prepare.tmp")
execute_process(COMMAND "${PROGRAM}" --builtin 1000 --out "${dir}" RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("incomplete staged set:\n${out}")
if(rc EQUAL 0 OR NOT out MATCHES "already holds shards" OR out MATCHES "finishing the replacement")
  message(FATAL_ERROR "incomplete staged set: expected a plain refusal, the old shards kept")
endif()
foreach(f IN LISTS files)
  file(SHA256 "${old}/${f}" want)
  file(SHA256 "${dir}/${f}" got)
  if(NOT got STREQUAL want)
    message(FATAL_ERROR "incomplete staged set: ${dir}/${f} is not the old set's")
  endif()
endforeach()
if(EXISTS "${dir}/.fathom-prepare.tmp")
  message(FATAL_ERROR "incomplete staged set: ${dir}/.fathom-prepare.tmp left behind")
endif()
message("interrupted --overwrite: finished or dropped as expected in all three cases")
