// The tool-call readers: each format's calls read from given model text, and text that is not a
// well-formed call left as content.
#include "tests/catch.h"
#include "toolcall/parse.h"

namespace stem::toolcall {
namespace {

void check_calls(const Answer& a, const std::vector<std::pair<std::string, std::string>>& want) {
  REQUIRE(a.calls.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CHECK(a.calls[i].name == want[i].first);
    CHECK(a.calls[i].arguments == want[i].second);
  }
}

TEST_CASE("hermes: one call, several, content before, key order kept") {
  Answer a = parse_tool_calls(Format::Hermes,
                              "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": "
                              "\"c\"}}\n</tool_call>");
  check_calls(a, {{"get_weather", R"({"city":"Paris","unit":"c"})"}});
  CHECK_FALSE(a.content);

  a = parse_tool_calls(Format::Hermes,
                       "Let me look.\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"z\": 1, \"a\": [1, 2]}}\n"
                       "</tool_call>\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>");
  check_calls(a, {{"b", R"({"z":1,"a":[1,2]})"}, {"a", "{}"}});
  REQUIRE(a.content);
  CHECK(*a.content == "Let me look.");
  // Arguments as a JSON string, "parameters" for "arguments", none at all; a last block not closed.
  a = parse_tool_calls(Format::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>"
                                       "<tool_call>{\"name\": \"g\", \"parameters\": {\"y\": \"ü\"}}</tool_call>"
                                       "<tool_call>{\"name\": \"h\"}</tool_call><tool_call>{\"name\": \"i\"}");
  check_calls(a, {{"f", R"({"x":1})"}, {"g", "{\"y\":\"ü\"}"}, {"h", "{}"}, {"i", "{}"}});
}

TEST_CASE("hermes: text that is not a well-formed call stays content") {
  for (const std::string text :
       {"Just an answer.", "", "<tool_call>not json</tool_call>", "<tool_call>{\"name\": 3}</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>", "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{broken</tool_call>", "<tool_call>{\"name\": \"f\"",
        "<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}</tool_call>", "<tool_call>"}) {
    INFO(text);
    const Answer a = parse_tool_calls(Format::Hermes, text);
    CHECK(a.calls.empty());
    REQUIRE(a.content);
    CHECK(*a.content == text);
  }
}

TEST_CASE("llama3_json: a JSON call, the python tag, several joined by semicolons") {
  check_calls(parse_tool_calls(Format::Llama3Json, R"({"name": "get_weather", "parameters": {"city": "Oslo"}})"),
              {{"get_weather", R"({"city":"Oslo"})"}});
  check_calls(parse_tool_calls(Format::Llama3Json, "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}"),
              {{"f", "{}"}});
  check_calls(parse_tool_calls(Format::Llama3Json,
                               "  {\"name\": \"f\", \"parameters\": {\"a\": \"}\"}}; {\"name\": \"g\", \"arguments\": "
                               "{\"b\": null}}\n"),
              {{"f", R"({"a":"}"})"}, {"g", R"({"b":null})"}});
  const Answer a = parse_tool_calls(Format::Llama3Json, "Calling.<|python_tag|>{\"name\": \"f\", \"parameters\": {}}");
  check_calls(a, {{"f", "{}"}});
  CHECK(a.content == std::optional<std::string>("Calling."));
  for (const std::string text : {"The answer is {x}.", "{\"name\": \"f\"} and more", "{\"no_name\": 1}",
                                 "<|python_tag|>brave_search.call(query=\"x\")", "{\"name\": \"f\", \"parameters\": 1}"}) {
    INFO(text);
    const Answer plain = parse_tool_calls(Format::Llama3Json, text);
    CHECK(plain.calls.empty());
    CHECK(plain.content == std::optional<std::string>(text));
  }
}

TEST_CASE("mistral: [TOOL_CALLS] and a list of calls") {
  const Answer a = parse_tool_calls(
      Format::Mistral, "Sure. [TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"g\", "
                       "\"arguments\": {}}]");
  check_calls(a, {{"f", R"({"q":"x"})"}, {"g", "{}"}});
  CHECK(a.content == std::optional<std::string>("Sure."));
  check_calls(parse_tool_calls(Format::Mistral, "[TOOL_CALLS]{\"name\": \"f\", \"arguments\": {}}"), {{"f", "{}"}});
  // The marker dropped by the detokenizer (a special token): the list alone.
  check_calls(parse_tool_calls(Format::Mistral, " [{\"name\": \"f\", \"arguments\": {}}]"), {{"f", "{}"}});
  for (const std::string text : {"[TOOL_CALLS]", "[TOOL_CALLS] [1, 2]", "[TOOL_CALLS] [{\"name\": \"f\"", "no calls",
                                 "[1, 2]", "[{\"name\": \"f\"}] and more"}) {
    INFO(text);
    CHECK(parse_tool_calls(Format::Mistral, text).calls.empty());
    CHECK(parse_tool_calls(Format::Mistral, text).content == std::optional<std::string>(text));
  }
}

TEST_CASE("call_start: the content that may stream before a call") {
  CHECK(call_start(Format::Hermes, "Hello") == 5);
  CHECK(call_start(Format::Hermes, "Hello <tool") == 6);
  CHECK(call_start(Format::Hermes, "Hello <tool_call>{") == 6);
  CHECK(call_start(Format::Hermes, "a < b") == 5);
  CHECK(call_start(Format::Hermes, "a <") == 2);
  CHECK(call_start(Format::Mistral, "Sure [TOOL") == 5);
  CHECK(call_start(Format::Mistral, " [{") == 0);
  CHECK(call_start(Format::Llama3Json, "  ") == 0);
  CHECK(call_start(Format::Llama3Json, " {\"na") == 0);
  CHECK(call_start(Format::Llama3Json, "Hi <|py") == 3);
  CHECK(call_start(Format::Llama3Json, "Hi there") == 8);
}

TEST_CASE("formats by name and from the template") {
  CHECK(format_named("hermes") == Format::Hermes);
  CHECK(format_named("llama3_json") == Format::Llama3Json);
  CHECK(format_named("mistral") == Format::Mistral);
  CHECK_FALSE(format_named("pythonic"));
  CHECK(format_of_template("{{- '<tool_call>\\n' }}") == Format::Hermes);
  CHECK(format_of_template("{{- '[TOOL_CALLS] [' }}") == Format::Mistral);
  CHECK(format_of_template("{{- '<|python_tag|>' }}") == Format::Llama3Json);
  CHECK_FALSE(format_of_template("{% for m in messages %}{{ m.content }}{% endfor %}"));
  for (Format f : {Format::Hermes, Format::Llama3Json, Format::Mistral}) CHECK(format_named(format_name(f)) == f);
}

}  // namespace
}  // namespace stem::toolcall
