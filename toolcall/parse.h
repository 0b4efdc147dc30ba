// Tool calls as models write them, read back into OpenAI's form. One reader per format:
//   Hermes (Qwen2.5, SmolLM3, Hermes): <tool_call>{"name": ..., "arguments": {...}}</tool_call>, repeated
//   Llama3Json (Llama 3.1-3.3): [<|python_tag|>]{"name": ..., "parameters": {...}}, several joined by ';'
//   Mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
// The markers <|python_tag|> and [TOOL_CALLS] are special tokens, which the detokenizer drops: an
// answer that starts with the call itself (a JSON object, or a list for Mistral) counts too.
// Text that is not a well-formed call of the format stays content, as vLLM's parsers do.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace stem::toolcall {

enum class Format { Hermes, Llama3Json, Mistral };

struct ToolCall {
  std::string name;
  std::string arguments;  // compact JSON text of an object, the model's key order kept
};

struct Answer {
  std::optional<std::string> content;  // null when there is none (only calls, or only whitespace)
  std::vector<ToolCall> calls;
};

// "hermes", "llama3_json", "mistral" (as vLLM's --tool-call-parser names them).
std::optional<Format> format_named(const std::string& name);
const char* format_name(Format format);
// The format a chat template teaches its model, from the markers in its source; none if it has none.
std::optional<Format> format_of_template(const std::string& source);

// The calls in `text` and the content before them.
Answer parse_tool_calls(Format format, const std::string& text);

// Where a tool call may start in a partial output: the first marker, or a trailing piece that
// may grow into one; text.size() when neither is there.
size_t call_start(Format format, const std::string& text);

}  // namespace stem::toolcall
