// Catch2 v3 (GPU machine) or v2 (Debian 12): one include for both.
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif

// Catch2 v2 has no SKIP: say why and leave the test (it counts as passed there).
#ifndef SKIP
#define SKIP(...)                          \
  do {                                     \
    WARN("SKIPPED: " << __VA_ARGS__);      \
    return;                                \
  } while (0)
#endif
