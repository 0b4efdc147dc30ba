// The tool-call readers (toolcall/parse.h) and the tool definitions' checks (toolcall/tools.h) on
// arbitrary input. The first byte picks the mode: a model output read as Hermes, Llama-3 JSON or
// Mistral text, or (mode 3) a `tools` list on the first line and a "required" answer after it.
// Properties: every call read has a name and arguments that are a JSON object; text without calls
// is all content; content is the text's start; and what may stream as content before the answer
// ends (call_start of each prefix) never goes past the content the whole answer yields.
#include <nlohmann/json.hpp>
#include <string>

#include "structured/json_schema.h"
#include "tests/fuzz/fuzz_util.h"
#include "toolcall/tools.h"

using namespace stem::toolcall;

namespace {

void check_calls(const Answer& a) {
  for (const ToolCall& c : a.calls) {
    FUZZ_CHECK(!c.name.empty());
    const auto args = nlohmann::json::parse(c.arguments, nullptr, false);
    FUZZ_CHECK(args.is_object());
  }
}

size_t rtrimmed(const std::string& s) {
  const size_t e = s.find_last_not_of(" \n\t\r");
  return e == std::string::npos ? 0 : e + 1;
}

void read_output(Format format, const std::string& text) {
  const Answer a = parse_tool_calls(format, text);
  check_calls(a);
  if (a.calls.empty()) {
    FUZZ_CHECK(a.content && *a.content == text);
  } else if (a.content) {
    FUZZ_CHECK(text.compare(0, a.content->size(), *a.content) == 0);
  }
  const size_t content = a.calls.empty() ? text.size() : a.content ? a.content->size() : 0;
  size_t streamed = 0;
  for (size_t k = 0; k <= text.size(); ++k) {
    const std::string prefix = text.substr(0, k);
    const size_t at = call_start(format, prefix);
    FUZZ_CHECK(at <= k);
    streamed = std::max(streamed, at);
  }
  FUZZ_CHECK(rtrimmed(text.substr(0, streamed)) <= content);
}

void read_tools(const std::string& input) {
  const size_t eol = input.find('\n');
  const auto tools = nlohmann::ordered_json::parse(input.substr(0, eol), nullptr, false);
  if (tools.is_discarded()) return;
  ToolRequest r;
  try {
    r = check_tool_choice("required", check_tools(tools), true);
  } catch (const ToolError& e) {
    FUZZ_CHECK(std::string(e.what()).find(e.param()) != std::string::npos);
    return;
  }
  try {
    (void)stem::structured::compile_json_schema(forced_schema(r));
  } catch (const stem::structured::SchemaError&) {
  }
  check_calls(read_answer(r, eol == std::string::npos ? "" : input.substr(eol + 1)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 4096) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: read_output(Format::Hermes, text); break;
    case 1: read_output(Format::Llama3Json, text); break;
    case 2: read_output(Format::Mistral, text); break;
    default: read_tools(text);
  }
  return 0;
}
