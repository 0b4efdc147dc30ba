// The JSON-schema compiler and the grammar matcher on arbitrary input. The first line is the
// schema; the other bytes steer a walk through the grammar (each picks one of the bytes the
// matcher accepts next). A schema is compiled or refused with a SchemaError; every walk that ends
// on a complete value must be JSON that the schema accepts (tests/structured/schema_check.h; its
// `pattern` check is off here, minLength / maxLength are checked).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "structured/json_schema.h"
#include "tests/fuzz/fuzz_grammar.h"
#include "tests/structured/schema_check.h"

using namespace stem::structured;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // std::regex reads random patterns otherwise than structured/regex.h (fuzz_regex checks those).
  stem::test::check_patterns() = false;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t eol = input.find('\n');
  const std::string schema_text = input.substr(0, eol);
  const std::string steer = eol == std::string::npos ? "" : input.substr(eol + 1);
  nlohmann::json schema;
  try {
    schema = nlohmann::json::parse(schema_text);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  Grammar g;
  try {
    g = compile_json_schema(schema);
  } catch (const SchemaError&) {
    return 0;
  }
  GrammarMatcher m(g);
  const std::string text = stem::fuzz::steered_walk(m, steer, 5);
  stem::fuzz::check_shared_masks(g, text, schema_text);
  if (!m.can_end()) return 0;
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    FUZZ_CHECK(!"a complete value is not JSON");
  }
  FUZZ_CHECK(stem::test::schema_accepts(value, schema));
  return 0;
}
