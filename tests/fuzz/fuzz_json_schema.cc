// The JSON-schema compiler and the grammar matcher on arbitrary input. The first line is the
// schema; the other bytes steer a walk through the grammar (each picks one of the bytes the
// matcher accepts next). A schema is compiled or refused with a SchemaError; every walk that ends
// on a complete value must be JSON that the schema accepts (tests/structured/schema_check.h; its
// `pattern` check is off here, minLength / maxLength are checked).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "structured/json_schema.h"
#include "tests/fuzz/fuzz_util.h"
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
  std::string text;
  for (unsigned char b : steer) {
    if (m.can_end() && b % 5 == 0) break;
    std::vector<uint8_t> next;
    GrammarMatcher probe;
    for (int c = 0; c < 256; ++c)
      if (m.advance_into(static_cast<uint8_t>(c), probe)) next.push_back(static_cast<uint8_t>(c));
    if (next.empty()) break;
    const uint8_t c = next[b % next.size()];
    FUZZ_CHECK(m.advance(c));
    text.push_back(static_cast<char>(c));
  }
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
