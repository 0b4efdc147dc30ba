// Shared by the libFuzzer targets: where the inputs they load live, and the rule every target
// follows: a bad input may throw stem::Error (a message for the user); anything else that
// escapes (another exception type, a crash, a sanitizer report) is a finding.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "kernels/check.h"
#include "tests/test_paths.h"

namespace stem::fuzz {

inline std::filesystem::path source_dir() { return stem::test::source_dir_path(); }

// The default model (its tokenizer and chat template), as the tests find it.
inline std::filesystem::path default_model_dir() {
  if (const char* m = std::getenv("STEM_TEST_MODEL")) return m;
  return source_dir() / "models" / "cache" / "SmolLM2-135M-Instruct";
}

// Runs `fn`; stem::Error is the expected way to refuse bad input.
template <typename Fn>
void expect_ok_or_error(Fn&& fn) {
  try {
    fn();
  } catch (const stem::Error&) {
  }
}

// Stops the fuzzer with a message when a property fails (libFuzzer reports the input).
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

}  // namespace stem::fuzz
