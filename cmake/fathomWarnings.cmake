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

# Release at -O2 instead of -O3 for fathom's own tests and programs: GCC 12 at -O3 reports false
# -Warray-bounds / -Wrestrict / -Wstringop-overflow errors inside libstdc++'s std::string (GCC bugs
# 105329, 105651), and -O3 costs about a third more compile time for no gain on the CPU reference.
foreach(lang CXX CUDA)
  string(REPLACE "-O3" "-O2" CMAKE_${lang}_FLAGS_RELEASE "${CMAKE_${lang}_FLAGS_RELEASE}")
endforeach()

if(FATHOM_SANITIZE)
  string(REPLACE ";" "," fathom_sanitizers "${FATHOM_SANITIZE}")
  message(STATUS "fathom: tests and examples built with -fsanitize=${fathom_sanitizers}")
  set(fathom_sanitize_flags -fsanitize=${fathom_sanitizers} -fno-omit-frame-pointer
      -fno-sanitize-recover=all)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${fathom_sanitize_flags}>")
  add_link_options(${fathom_sanitize_flags})
endif()
