// The API key check (server/auth.h). The serve command's security defaults (loopback, the key
// and the caps by flag or variable): tests/server/test_options.cc.
#include "server/auth.h"
#include "tests/catch.h"

using namespace stem;

TEST_CASE("constant_time_equal accepts exactly the expected key") {
  const std::string key = "Bearer s3cret-key";
  CHECK(constant_time_equal(key, key));
  CHECK_FALSE(constant_time_equal("", key));
  CHECK_FALSE(constant_time_equal("Bearer s3cret-ke", key));       // a prefix
  CHECK_FALSE(constant_time_equal("Bearer s3cret-keyX", key));     // longer
  CHECK_FALSE(constant_time_equal("Bearer s3cret-kez", key));      // last byte differs
  CHECK_FALSE(constant_time_equal("Xearer s3cret-key", key));      // first byte differs
  CHECK_FALSE(constant_time_equal(std::string("Bearer s3cret-key\0", 18), key));  // a trailing NUL
  // A longer guess whose first bytes match is still refused (the loop runs over the expected key).
  CHECK_FALSE(constant_time_equal(key + key, key));
  CHECK(constant_time_equal("", ""));
}

TEST_CASE("expected_authorization is the Bearer header, or empty without a key") {
  CHECK(expected_authorization("") == "");
  CHECK(expected_authorization("k") == "Bearer k");
}
