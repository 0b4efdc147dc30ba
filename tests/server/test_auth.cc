// The API key check (server/auth.h) and the serve command's security defaults: loopback unless
// told otherwise, the key and the caps settable by flag or STEMSERVE_* variable.
#include <CLI/CLI.hpp>
#include <cstdlib>

#include "server/auth.h"
#include "server/serve.h"
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

namespace {

ServeArgs parse_serve(std::vector<std::string> argv) {
  CLI::App app;
  ServeArgs args;
  add_serve_command(app, args);
  argv.insert(argv.begin(), "serve");
  std::reverse(argv.begin(), argv.end());  // CLI11 takes a reversed vector
  app.parse(argv);
  return args;
}

}  // namespace

TEST_CASE("serve listens on 127.0.0.1 unless told otherwise") {
  ::unsetenv("STEMSERVE_HOST");
  ServeArgs a = parse_serve({"--model", "m"});
  CHECK(a.host == "127.0.0.1");
  CHECK(a.api_key.empty());
  CHECK(parse_serve({"--model", "m", "--host", "0.0.0.0"}).host == "0.0.0.0");
  ::setenv("STEMSERVE_HOST", "::1", 1);
  CHECK(parse_serve({"--model", "m"}).host == "::1");
  ::unsetenv("STEMSERVE_HOST");
}

TEST_CASE("the API key and the request caps come from flags or STEMSERVE_* variables") {
  ServeArgs d = parse_serve({"--model", "m"});
  CHECK(d.max_request_bytes == 8 << 20);
  ::setenv("STEMSERVE_API_KEY", "from-env", 1);
  ::setenv("STEMSERVE_MAX_REQUEST_BYTES", "1234", 1);
  ::setenv("STEMSERVE_MAX_MODEL_LEN", "256", 1);
  ::setenv("STEMSERVE_MAX_NUM_SEQS", "3", 1);
  ServeArgs a = parse_serve({"--model", "m"});
  CHECK(a.api_key == "from-env");
  CHECK(a.max_request_bytes == 1234);  // body size: 413
  CHECK(a.max_model_len == 256);       // prompt + max_tokens: 400
  CHECK(a.max_num_seqs == 3);          // n: 400
  ::unsetenv("STEMSERVE_API_KEY");
  ::unsetenv("STEMSERVE_MAX_REQUEST_BYTES");
  ::unsetenv("STEMSERVE_MAX_MODEL_LEN");
  ::unsetenv("STEMSERVE_MAX_NUM_SEQS");
  CHECK_THROWS(parse_serve({"--model", "m", "--max-request-bytes", "0"}));
}
