// JSON schemas compiled to grammars: which texts each accepts and refuses, and the schemas refused.
#include <nlohmann/json.hpp>

#include "structured/json_schema.h"
#include "tests/catch.h"
#include "tests/structured/schema_check.h"

namespace stem::structured {
namespace {

using nlohmann::json;

bool accepts(const Grammar& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.advance(text) && m.can_end();
}

// Every text must be accepted by the grammar exactly when the reference check says so (for the
// JSON texts), and the compact texts are checked both ways.
void check(const json& schema, const std::vector<std::string>& good, const std::vector<std::string>& bad) {
  const Grammar g = compile_json_schema(schema);
  for (const std::string& t : good) {
    INFO(schema.dump() << " should accept " << t);
    CHECK(accepts(g, t));
    CHECK(test::schema_accepts(json::parse(t), schema));
  }
  for (const std::string& t : bad) {
    INFO(schema.dump() << " should refuse " << t);
    CHECK_FALSE(accepts(g, t));
  }
}

TEST_CASE("objects: required and optional properties, in the schema's order, nothing else") {
  const json s = json::parse(R"({"type": "object", "additionalProperties": false, "required": ["name"],
    "properties": {"age": {"type": "integer"}, "name": {"type": "string"}, "tags": {"type": "array",
    "items": {"type": "string"}}}})");
  check(s, {R"({"age":3,"name":"x"})", R"({"name":"x"})", R"({"name":"","tags":[]})", R"({"age":-1,"name":"a","tags":["b","c"]})"},
        {R"({"age":3})", R"({})", R"({"name":"x","extra":1})", R"({ "name":"x"})", R"({"name":"x",})",
         R"({"name":3})", R"({"name":"x"} )", R"({"name":"x","age":3})", R"({"name":"x""age":3})"});
  check(json::parse(R"({"type": "object", "properties": {}, "additionalProperties": false})"), {"{}"}, {R"({"a":1})"});
}

TEST_CASE("strings: escapes, UTF-8 and what JSON forbids") {
  const json s = {{"type", "string"}};
  check(s, {R"("")", R"("a\"b\\c\/\b\f\n\r\t")", R"("\u00e9\u20AC")", "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\""},
        {"\"a", "a", "\"\\x\"", "\"\\ud800\"", "\"\x01\"", "\"\xC3\"", "\"\xC0\xAF\"", "\"\xED\xA0\x80\"",
         "\"\xF5\x80\x80\x80\"", "\"a\"b\""});
}

TEST_CASE("numbers and integers") {
  check({{"type", "integer"}}, {"0", "-0", "7", "-120", "999999999999999"}, {"01", "1.5", "-", "+1", "1e3", "", "1000000000000000"});
  check({{"type", "number"}}, {"0", "1.5", "-0.25", "1e3", "2E-7", "3.5e+2", "1e99", "0.12345678901234567890"},
        {"1.", ".5", "1e", "01.5", "1.5.1", "1e100", "1234567890123456.5"});
}

TEST_CASE("booleans, null, enum, const, anyOf and lists of types") {
  check({{"type", "boolean"}}, {"true", "false"}, {"True", "tru", "null"});
  check({{"type", "null"}}, {"null"}, {"nul", "0"});
  check(json::parse(R"({"enum": ["a", "ab", 1, null, {"k": [true]}]})"), {R"("a")", R"("ab")", "1", "null", R"({"k":[true]})"},
        {R"("b")", R"("abc")", "12", "true"});
  check(json::parse(R"({"const": "fixed"})"), {R"("fixed")"}, {R"("other")"});
  check(json::parse(R"({"anyOf": [{"type": "string"}, {"type": "null"}], "title": "x"})"), {R"("s")", "null"}, {"1"});
  check(json::parse(R"({"type": ["integer", "boolean"]})"), {"3", "false"}, {R"("3")", "null"});
}

TEST_CASE("arrays: items, minItems and maxItems") {
  check(json::parse(R"({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3})"),
        {"[1]", "[1,2]", "[1,2,3]"}, {"[]", "[1,2,3,4]", "[1,]", "[,1]", R"(["a"])"});
  check(json::parse(R"({"type": "array", "items": {"type": "boolean"}, "minItems": 2})"),
        {"[true,false]", "[true,true,true,false,true]"}, {"[]", "[true]"});
  check(json::parse(R"({"type": "array", "maxItems": 0})"), {"[]"}, {"[1]"});
  check(json::parse(R"({"type": "array"})"), {"[]", R"([1,"a",[null],{}])"}, {"[", "{}"});
}

TEST_CASE("nested objects and recursive $defs") {
  const json s = json::parse(R"({"$defs": {"node": {"type": "object", "additionalProperties": false,
    "required": ["value", "children"], "properties": {"value": {"type": "integer"},
    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"})");
  // (nlohmann::json keeps keys sorted, so "children" comes first.)
  check(s, {R"({"children":[],"value":1})", R"({"children":[{"children":[],"value":2}],"value":1})"},
        {R"({"value":1})", R"({"children":[{"value":2}],"value":1})"});
  const json nested = json::parse(R"({"type": "object", "required": ["a"], "additionalProperties": false,
    "properties": {"a": {"type": "object", "required": ["b"], "additionalProperties": false,
    "properties": {"b": {"type": "object", "required": ["c"], "additionalProperties": false,
    "properties": {"c": {"enum": ["x", "y"]}}}}}}})");
  check(nested, {R"({"a":{"b":{"c":"x"}}})"}, {R"({"a":{"b":{"c":"z"}}})", R"({"a":{"b":{}}})"});
}

TEST_CASE("any JSON: the empty schema, true, and json_object") {
  for (const json& s : {json::object(), json(true)})
    check(s, {"1", R"("a")", "null", R"({"a":[1,{"b":null}],"c":"d"})", "[[[]]]"}, {"", "{", "[1,]", "nul"});
  const Grammar obj = any_json_object();
  CHECK(accepts(obj, "{}"));
  CHECK(accepts(obj, R"({"a":[1,{"b":null}],"c":-2.5e3})"));
  CHECK_FALSE(accepts(obj, "[]"));
  CHECK_FALSE(accepts(obj, R"("x")"));
  CHECK_FALSE(accepts(obj, R"({1:2})"));
}

std::string refused_keyword(const json& schema) {
  try {
    compile_json_schema(schema);
  } catch (const SchemaError& e) {
    return e.keyword();
  }
  return "(compiled)";
}

TEST_CASE("schemas outside the subset are refused, naming the keyword and where") {
  CHECK(refused_keyword(json::parse(R"({"type": "string", "pattern": "(?=a)b"})")) == "pattern");
  CHECK(refused_keyword(json::parse(R"({"type": "string", "pattern": 5})")) == "pattern");
  CHECK(refused_keyword(json::parse(R"({"type": "string", "pattern": "a", "maxLength": 3})")) == "maxLength");
  CHECK(refused_keyword(json::parse(R"({"type": "string", "minLength": 4, "maxLength": 3})")) == "minLength");
  CHECK(refused_keyword(json::parse(R"({"type": "string", "maxLength": 100000})")) == "maxLength");
  CHECK(refused_keyword(json::parse(R"({"type": "string", "minLength": -1})")) == "minLength");
  CHECK(refused_keyword(json::parse(R"({"type": "object", "properties": {"x": {"type": "string", "format": "date"}}})")) ==
        "format");
  CHECK(refused_keyword(json::parse(R"({"type": "integer", "minimum": 0})")) == "minimum");
  CHECK(refused_keyword(json::parse(R"({"oneOf": [{"type": "string"}]})")) == "oneOf");
  CHECK(refused_keyword(json::parse(R"({"allOf": [{"type": "string"}]})")) == "allOf");
  CHECK(refused_keyword(json::parse(R"({"type": "object", "additionalProperties": {"type": "string"}})")) ==
        "additionalProperties");
  CHECK(refused_keyword(json::parse(R"({"type": "object", "required": ["x"]})")) == "required");
  CHECK(refused_keyword(json::parse(R"({"type": "array", "maxItems": 1000})")) == "maxItems");
  CHECK(refused_keyword(json::parse(R"({"$ref": "https://example.com/s.json"})")) == "$ref");
  CHECK(refused_keyword(json::parse(R"({"type": "decimal"})")) == "type");
  CHECK(refused_keyword(json::parse(R"({"anyOf": [{"type": "string"}], "type": "string"})")) == "type");
  CHECK(refused_keyword(json(false)) == "false");
  try {
    compile_json_schema(json::parse(R"({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}})"));
    FAIL("compiled");
  } catch (const SchemaError& e) {
    CHECK(std::string(e.what()) == "the JSON schema keyword 'format' is not supported (at /properties/when)");
  }
}

}  // namespace
}  // namespace stem::structured
