# Warnings-as-errors and optional sanitizers for fathom's own tests and examples. Directory-scoped
# (this directory and the ones added below it), so consumers of fathom::fathom never inherit them.
if(MSVC)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:/W4> $<$<COMPILE_LANGUAGE:CXX>:/WX>)
else()
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-Wall> $<$<COMPILE_LANGUAGE:CXX>:-Wextra>
                      $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA")
  # nvcc's own diagnostics and the host compiler's, both as errors.
  add_compile_options($<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>
                      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror>)
endif()

if(FATHOM_SANITIZE)
  string(REPLACE ";" "," fathom_sanitizers "${FATHOM_SANITIZE}")
  message(STATUS "fathom: tests and examples built with -fsanitize=${fathom_sanitizers}")
  set(fathom_sanitize_flags -fsanitize=${fathom_sanitizers} -fno-omit-frame-pointer
      -fno-sanitize-recover=all)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${fathom_sanitize_flags}>")
  add_link_options(${fathom_sanitize_flags})
endif()
