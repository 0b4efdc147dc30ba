// Catch2 v3 (GPU machine) or v2 (Debian 12): one include for both, and one SKIP for both.
#pragma once
#include <sstream>
#include <string>
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif

namespace stem::test {

// The exit status of a test executable in which a test case could not run (and none failed);
// CTest reports it as "Skipped" (SKIP_RETURN_CODE, tests/CMakeLists.txt), never as passed.
inline constexpr int kSkipExitCode = 77;

// Prints "SKIPPED: <test case>: <why>" and marks the run skipped (tests/catch_main.cc).
void mark_skipped(const std::string& why);

}  // namespace stem::test

// SKIP("why " << detail): the test case cannot run here; it returns at once. Catch2 v2 has no
// SKIP and v3's own exits with a status that a failing run can also have (4), so both use ours.
#ifdef SKIP
#undef SKIP
#endif
#define SKIP(...)                                  \
  do {                                             \
    std::ostringstream stem_skip_why_;             \
    stem_skip_why_ << __VA_ARGS__;                 \
    ::stem::test::mark_skipped(stem_skip_why_.str()); \
    return;                                        \
  } while (0)
