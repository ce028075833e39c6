# Defines fathom::cblas, an INTERFACE IMPORTED target: when a CBLAS is found (OpenBLAS's CMake
# package, pkg-config openblas, or find_package(BLAS) plus cblas.h) it links it and carries
# FATHOM_HAS_CBLAS=1; otherwise it is empty and fathom's portable GEMM is used. Included both by
# fathom's own build and by fathomConfig.cmake, so a consumer gets the same detection.
if(TARGET fathom::cblas)
  return()
endif()

add_library(fathom::cblas INTERFACE IMPORTED GLOBAL)
if(DEFINED FATHOM_USE_CBLAS AND NOT FATHOM_USE_CBLAS)
  return()
endif()

set(_fathom_cblas_includes "")
set(_fathom_cblas_libraries "")

# 1. OpenBLAS's own package file (variables only, no targets).
find_package(OpenBLAS CONFIG QUIET)
if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
  unset(_fathom_cblas_h)
  find_path(_fathom_cblas_h cblas.h HINTS ${OpenBLAS_INCLUDE_DIRS} NO_CACHE)
  if(_fathom_cblas_h)
    set(_fathom_cblas_includes "${_fathom_cblas_h}")
    set(_fathom_cblas_libraries "${OpenBLAS_LIBRARIES}")
  endif()
endif()

# 2. pkg-config openblas.
if(NOT _fathom_cblas_libraries)
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(_fathom_openblas QUIET openblas)
    if(_fathom_openblas_FOUND)
      unset(_fathom_cblas_h)
      find_path(_fathom_cblas_h cblas.h HINTS ${_fathom_openblas_INCLUDE_DIRS} NO_CACHE)
      find_library(_fathom_openblas_lib NAMES ${_fathom_openblas_LIBRARIES}
        HINTS ${_fathom_openblas_LIBRARY_DIRS} NO_CACHE)
      if(_fathom_cblas_h AND _fathom_openblas_lib)
        set(_fathom_cblas_includes "${_fathom_cblas_h}")
        set(_fathom_cblas_libraries "${_fathom_openblas_lib}")
      endif()
    endif()
  endif()
endif()

# 3. Any BLAS whose library provides the cblas_* symbols, with cblas.h on the include path.
if(NOT _fathom_cblas_libraries)
  find_package(BLAS QUIET)
  unset(_fathom_cblas_h)
  find_path(_fathom_cblas_h cblas.h NO_CACHE)
  if(BLAS_FOUND AND _fathom_cblas_h)
    include(CheckSymbolExists)
    include(CMakePushCheckState)
    cmake_push_check_state(RESET)
    set(CMAKE_REQUIRED_QUIET TRUE)
    set(CMAKE_REQUIRED_INCLUDES "${_fathom_cblas_h}")
    set(CMAKE_REQUIRED_LIBRARIES ${BLAS_LIBRARIES})
    check_symbol_exists(cblas_sgemm cblas.h FATHOM_BLAS_HAS_CBLAS_SGEMM)
    cmake_pop_check_state()
    if(FATHOM_BLAS_HAS_CBLAS_SGEMM)
      set(_fathom_cblas_includes "${_fathom_cblas_h}")
      set(_fathom_cblas_libraries ${BLAS_LIBRARIES})
    endif()
  endif()
endif()

if(_fathom_cblas_libraries)
  set_target_properties(fathom::cblas PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_fathom_cblas_includes}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_fathom_cblas_includes}"
    INTERFACE_LINK_LIBRARIES "${_fathom_cblas_libraries}"
    INTERFACE_COMPILE_DEFINITIONS "FATHOM_HAS_CBLAS=1")
  if(NOT fathom_FIND_QUIETLY)
    message(STATUS "fathom: CBLAS ${_fathom_cblas_libraries} (${_fathom_cblas_includes}/cblas.h)")
  endif()
else()
  if(NOT fathom_FIND_QUIETLY)
    message(STATUS "fathom: no CBLAS found, CPU GEMMs use the portable fallback")
  endif()
endif()

unset(_fathom_cblas_h)
unset(_fathom_openblas_lib)
unset(_fathom_cblas_includes)
unset(_fathom_cblas_libraries)
