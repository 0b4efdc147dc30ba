// Tool definitions and tool_choice checked, the forced calls' schemas (compiled by structured/ as
// the server does), and answers read back per tool_choice.
#include <nlohmann/json.hpp>

#include "structured/json_schema.h"
#include "tests/catch.h"
#include "toolcall/tools.h"

namespace stem::toolcall {
namespace {

using ojson = nlohmann::ordered_json;

const ojson kWeather = ojson::parse(R"({"type": "function", "function": {"name": "get_weather",
  "description": "The weather in a city", "parameters": {"type": "object", "properties": {
  "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}})");
const ojson kTime = ojson::parse(R"({"type": "function", "function": {"name": "now"}})");

// The field a bad `tools` list is refused for, and that the message names it.
std::string refused(const ojson& tools) {
  try {
    check_tools(tools);
  } catch (const ToolError& e) {
    CHECK(std::string(e.what()).find(e.param()) != std::string::npos);
    return e.param();
  }
  return "";
}

TEST_CASE("tools: good definitions pass, bad ones are refused naming the field") {
  const std::vector<Function> fs = check_tools(ojson::array({kWeather, kTime}));
  REQUIRE(fs.size() == 2);
  CHECK(fs[0].name == "get_weather");
  CHECK(fs[0].parameters.dump().find("\"city\"") < fs[0].parameters.dump().find("\"unit\""));  // order kept
  CHECK(fs[1].parameters == ojson({{"type", "object"}}));

  CHECK(refused(ojson::array()) == "tools");
  CHECK(refused(ojson::object()) == "tools");
  CHECK(refused(ojson::array({1})) == "tools[0]");
  CHECK(refused(ojson::parse(R"([{"type": "retrieval", "function": {"name": "f"}}])")) == "tools[0].type");
  CHECK(refused(ojson::parse(R"([{"type": "function"}])")) == "tools[0].function");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f"}, "x": 1}])")) == "tools[0]");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "has space"}}])")) == "tools[0].function.name");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {}}])")) == "tools[0].function.name");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f", "parameters": "x"}}])")) ==
        "tools[0].function.parameters");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])")) ==
        "tools[0].function.parameters");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f", "description": 3}}])")) ==
        "tools[0].function.description");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f", "strict": "yes"}}])")) ==
        "tools[0].function.strict");
  CHECK(refused(ojson::parse(R"([{"type": "function", "function": {"name": "f", "returns": {}}}])")) ==
        "tools[0].function.returns");
  CHECK(refused(ojson::array({kTime, kTime})) == "tools[1].function.name");
  ojson many = ojson::array();
  for (size_t i = 0; i <= kMaxTools; ++i) {
    ojson t = kTime;
    t["function"]["name"] = "f" + std::to_string(i);
    many.push_back(t);
  }
  CHECK(refused(many) == "tools");
}

TEST_CASE("tool_choice: none, auto, required, a named function") {
  auto fs = [] { return check_tools(ojson::array({kWeather, kTime})); };
  CHECK(check_tool_choice(nullptr, fs(), true).choice == Choice::Auto);
  CHECK(check_tool_choice(nullptr, {}, true).choice == Choice::None);
  CHECK(check_tool_choice("none", {}, true).choice == Choice::None);
  CHECK(check_tool_choice("none", fs(), true).choice == Choice::None);
  CHECK(check_tool_choice("required", fs(), false).choice == Choice::Required);
  const ToolRequest named = check_tool_choice(ojson::parse(R"({"type": "function", "function": {"name": "now"}})"), fs(), true);
  CHECK(named.choice == Choice::Named);
  CHECK(named.named == "now");
  for (const ojson& bad : {ojson("sometimes"), ojson(3), ojson::parse(R"({"type": "function", "function": {"name": "nope"}})"),
                           ojson::parse(R"({"type": "function"})"), ojson::parse(R"({"function": {"name": "now"}})")}) {
    INFO(bad.dump());
    CHECK_THROWS_AS(check_tool_choice(bad, fs(), true), ToolError);
  }
  CHECK_THROWS_AS(check_tool_choice("required", {}, true), ToolError);
  CHECK_THROWS_AS(check_tool_choice("auto", {}, true), ToolError);
}

bool accepts(const nlohmann::json& schema, const std::string& text) {
  const structured::Grammar g = structured::compile_json_schema(schema);
  structured::GrammarMatcher m(g);
  return m.advance(text) && m.can_end();
}

TEST_CASE("forced calls: the schema of a named call and of required calls") {
  ToolRequest r = check_tool_choice(ojson::parse(R"({"type": "function", "function": {"name": "get_weather"}})"),
                                    check_tools(ojson::array({kWeather, kTime})), true);
  const nlohmann::json named = forced_schema(r);
  CHECK(accepts(named, R"({"city":"Paris","unit":"c"})"));
  CHECK_FALSE(accepts(named, R"({"unit":"c"})"));
  Answer a = read_answer(r, R"({"city":"Paris"})");
  REQUIRE(a.calls.size() == 1);
  CHECK(a.calls[0].name == "get_weather");
  CHECK(a.calls[0].arguments == R"({"city":"Paris"})");
  CHECK_FALSE(a.content);

  r.choice = Choice::Required;
  const nlohmann::json required = forced_schema(r);
  const std::string two = R"([{"name":"get_weather","parameters":{"city":"Oslo"}},{"name":"now","parameters":{}}])";
  CHECK(accepts(required, two));
  CHECK_FALSE(accepts(required, "[]"));
  CHECK_FALSE(accepts(required, R"([{"name":"other","parameters":{}}])"));
  CHECK_FALSE(accepts(required, R"([{"name":"get_weather","parameters":{}}])"));
  a = read_answer(r, two);
  REQUIRE(a.calls.size() == 2);
  CHECK(a.calls[0].arguments == R"({"city":"Oslo"})");
  CHECK(a.calls[1].name == "now");
  CHECK(read_answer(r, R"([{"name":"now","para)").content == std::optional<std::string>(R"([{"name":"now","para)"));
  r.parallel = false;
  CHECK_FALSE(accepts(forced_schema(r), two));
  CHECK(accepts(forced_schema(r), R"([{"name":"now","parameters":{}}])"));
  CHECK(streamable(r, "[{") == 0);
}

TEST_CASE("forced calls: a function's $defs are kept apart from another's") {
  const ojson tools = ojson::parse(R"([
    {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "$defs": {"x": {"type": "integer"}},
      "properties": {"v": {"$ref": "#/$defs/x"}}, "required": ["v"]}}},
    {"type": "function", "function": {"name": "b", "parameters": {"type": "object", "definitions": {"x": {"type": "string"}},
      "properties": {"v": {"$ref": "#/definitions/x"}}, "required": ["v"]}}}])");
  const ToolRequest r = check_tool_choice("required", check_tools(tools), true);
  const nlohmann::json s = forced_schema(r);
  CHECK(accepts(s, R"([{"name":"a","parameters":{"v":1}},{"name":"b","parameters":{"v":"s"}}])"));
  CHECK_FALSE(accepts(s, R"([{"name":"a","parameters":{"v":"s"}}])"));
  CHECK_FALSE(accepts(s, R"([{"name":"b","parameters":{"v":1}}])"));
}

TEST_CASE("auto: the model's format is parsed, and parallel_tool_calls false keeps the first call") {
  ToolRequest r = check_tool_choice(nullptr, check_tools(ojson::array({kTime})), false);
  r.format = Format::Hermes;
  const std::string text = "<tool_call>{\"name\": \"now\"}</tool_call><tool_call>{\"name\": \"now\"}</tool_call>";
  CHECK(read_answer(r, text).calls.size() == 1);
  r.parallel = true;
  CHECK(read_answer(r, text).calls.size() == 2);
  CHECK(streamable(r, "Hi <tool_call>") == 3);
  // Bare calls (Qwen2.5-Coder leaves out the tags) count when they name offered functions.
  const std::string bare = "{\"name\": \"now\", \"arguments\": {\"tz\": \"UTC\"}}";
  Answer a = read_answer(r, bare);
  REQUIRE(a.calls.size() == 1);
  CHECK(a.calls[0].arguments == R"({"tz":"UTC"})");
  CHECK_FALSE(a.content);
  CHECK(streamable(r, "  {\"na") == 0);
  for (const std::string text : {"{\"name\": \"other\", \"arguments\": {}}", "{\"a\": 1}", "Hi {\"name\": \"now\"}"}) {
    INFO(text);
    CHECK(read_answer(r, text).calls.empty());
    CHECK(read_answer(r, text).content == std::optional<std::string>(text));
  }
  r.choice = Choice::None;
  CHECK(read_answer(r, text).content == std::optional<std::string>(text));
  CHECK(streamable(r, "Hi <tool_call>") == 14);
}

}  // namespace
}  // namespace stem::toolcall
