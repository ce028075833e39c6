// The test runner's entry point: Catch2 v2 needs one translation unit to define main; v3 links
// Catch2::Catch2WithMain instead, and this file then contributes nothing.
#if __has_include(<catch2/catch_all.hpp>)
// v3: main comes from Catch2WithMain.
#else
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
