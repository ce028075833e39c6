# fathom_sentencepiece: an imported target for libsentencepiece (and its trainer), found through
# pkg-config, or under FATHOM_SENTENCEPIECE_ROOT: a folder where the Debian packages
# libsentencepiece-dev, libsentencepiece0 and libprotobuf-lite32 were unpacked (scripts/
# depth_corpus.sh sentencepiece does it on a machine without a package registry). Sets
# FATHOM_SENTENCEPIECE_FOUND and FATHOM_SENTENCEPIECE_VERSION. FATHOM_USE_SENTENCEPIECE=OFF skips it.
# Included from each folder that needs it: the lookup runs once, the variables are set every time.
option(FATHOM_USE_SENTENCEPIECE "Build fathom's programs with sentencepiece models when found" ON)
set(FATHOM_SENTENCEPIECE_ROOT "" CACHE PATH
  "Unpacked libsentencepiece packages to use instead of pkg-config's (scripts/depth_corpus.sh sentencepiece)")
set(FATHOM_SENTENCEPIECE_FOUND OFF)
set(FATHOM_SENTENCEPIECE_VERSION "")
if(TARGET fathom_sentencepiece AND FATHOM_USE_SENTENCEPIECE)
  set(FATHOM_SENTENCEPIECE_FOUND ON)
  get_property(FATHOM_SENTENCEPIECE_VERSION GLOBAL PROPERTY fathom_sentencepiece_version)
  return()
endif()
if(FATHOM_USE_SENTENCEPIECE AND FATHOM_SENTENCEPIECE_ROOT)
  set(_root "${FATHOM_SENTENCEPIECE_ROOT}")
  set(_libdirs "${_root}/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}" "${_root}/usr/lib/x86_64-linux-gnu" "${_root}/usr/lib")
  find_path(FATHOM_SP_INCLUDE_DIR sentencepiece_processor.h PATHS "${_root}/usr/include" NO_DEFAULT_PATH)
  find_library(FATHOM_SP_LIBRARY NAMES sentencepiece libsentencepiece.so.0 PATHS ${_libdirs} NO_DEFAULT_PATH)
  find_library(FATHOM_SP_TRAIN_LIBRARY NAMES sentencepiece_train libsentencepiece_train.so.0 PATHS ${_libdirs} NO_DEFAULT_PATH)
  if(FATHOM_SP_INCLUDE_DIR AND FATHOM_SP_LIBRARY AND FATHOM_SP_TRAIN_LIBRARY)
    get_filename_component(_libdir "${FATHOM_SP_LIBRARY}" DIRECTORY)
    if(NOT TARGET fathom_sentencepiece)
      add_library(fathom_sentencepiece INTERFACE IMPORTED GLOBAL)
      # DT_RPATH (not RUNPATH) so that libsentencepiece's own dependency (libprotobuf-lite, unpacked
      # beside it) is found at run time too; -rpath-link for the same at link time.
      set_target_properties(fathom_sentencepiece PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${FATHOM_SP_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "${FATHOM_SP_TRAIN_LIBRARY};${FATHOM_SP_LIBRARY}"
        INTERFACE_LINK_OPTIONS "LINKER:--disable-new-dtags;LINKER:-rpath,${_libdir};LINKER:-rpath-link,${_libdir}")
    endif()
    set(FATHOM_SENTENCEPIECE_FOUND ON)
    set(FATHOM_SENTENCEPIECE_VERSION "(${_root})")
    set_property(GLOBAL PROPERTY fathom_sentencepiece_version "${FATHOM_SENTENCEPIECE_VERSION}")
  else()
    message(WARNING "fathom: FATHOM_SENTENCEPIECE_ROOT '${_root}' holds no libsentencepiece headers and libraries")
  endif()
elseif(FATHOM_USE_SENTENCEPIECE)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(FATHOM_SP QUIET IMPORTED_TARGET GLOBAL sentencepiece)
  endif()
  if(FATHOM_SP_FOUND)
    if(NOT TARGET fathom_sentencepiece)
      add_library(fathom_sentencepiece INTERFACE IMPORTED GLOBAL)
      set_target_properties(fathom_sentencepiece PROPERTIES INTERFACE_LINK_LIBRARIES PkgConfig::FATHOM_SP)
    endif()
    set(FATHOM_SENTENCEPIECE_FOUND ON)
    set(FATHOM_SENTENCEPIECE_VERSION "${FATHOM_SP_VERSION}")
    set_property(GLOBAL PROPERTY fathom_sentencepiece_version "${FATHOM_SENTENCEPIECE_VERSION}")
  endif()
endif()
