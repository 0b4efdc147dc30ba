#include "tests/test_paths.h"

namespace stem::test {

const char* source_dir_path() { return STEM_SOURCE_DIR; }
const char* fixtures_dir_path() { return STEM_FIXTURES_DIR; }
const char* build_dir_path() { return STEM_BUILD_DIR; }

}  // namespace stem::test
