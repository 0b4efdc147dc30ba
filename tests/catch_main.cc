// The main of every Catch2 test executable: Catch's own run, then exit status 77 (skipped) when a
// test case called SKIP and none failed (tests/catch.h).
#include <iostream>

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_session.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/interfaces/catch_interfaces_capture.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include "tests/catch.h"

namespace {
int g_skipped = 0;
}

void stem::test::mark_skipped(const std::string& why) {
  ++g_skipped;
  std::cout << "SKIPPED: " << Catch::getResultCapture().getCurrentTestName() << ": " << why << std::endl;
}

int main(int argc, char** argv) {
  const int rc = Catch::Session().run(argc, argv);
  if (rc == 0 && g_skipped > 0) return stem::test::kSkipExitCode;
  return rc;
}
