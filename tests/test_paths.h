// Where the tests find the source tree, its fixtures and the build folder. The paths are compiled
// into tests/test_paths.cc alone (the library stem_test_paths), so that no other test's compile
// command names the checkout: ccache then hits what another checkout compiled (a fresh CI clone).
#pragma once

namespace stem::test {

const char* source_dir_path();    // the repository's root
const char* fixtures_dir_path();  // tests/fixtures
const char* build_dir_path();     // the CMake build folder

}  // namespace stem::test
