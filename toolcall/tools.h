// OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, checked: the function definitions a
// chat request offers the model, and which of them it must call. A forced call (tool_choice
// "required" or a named function) is a JSON schema for structured/ to enforce: the function's
// parameters for a named one, a list of {"name", "parameters"} objects for "required" (as vLLM
// does, whatever the model's own tool-call format). No server types: the fuzz target calls it.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "toolcall/parse.h"

namespace stem::toolcall {

// A bad definition or choice; `param` is the field as the request names it ("tools[2].function.name").
class ToolError : public std::runtime_error {
 public:
  ToolError(std::string param, const std::string& message) : std::runtime_error(message), param_(std::move(param)) {}
  const std::string& param() const { return param_; }

 private:
  std::string param_;
};

constexpr size_t kMaxTools = 128;

struct Function {
  std::string name;
  nlohmann::ordered_json parameters;  // a JSON schema of type object ({"type": "object"} when not given)
};

enum class Choice { None, Auto, Required, Named };

// What a chat request's tools ask of its answer.
struct ToolRequest {
  Choice choice = Choice::None;  // None: the answer is text (tools may still be shown to the model)
  std::string named;             // Choice::Named: the function
  Format format = Format::Hermes;  // Choice::Auto: how the model writes its calls
  bool parallel = true;          // parallel_tool_calls: false keeps at most one call
  std::vector<Function> functions;
};

// Checks `tools` (a list of {"type": "function", "function": {"name", "description",
// "parameters", "strict"}}); throws ToolError naming the first problem.
std::vector<Function> check_tools(const nlohmann::ordered_json& tools);

// tool_choice: "none", "auto", "required" or {"type": "function", "function": {"name": ...}}; null
// (absent) is "auto" with tools and "none" without. Throws ToolError (param "tool_choice").
ToolRequest check_tool_choice(const nlohmann::ordered_json& tool_choice, std::vector<Function> functions,
                              bool parallel);

// The JSON schema the answer of a forced call must follow (Choice::Required or Choice::Named).
nlohmann::ordered_json forced_schema(const ToolRequest& request);

// The answer read back: tool calls and the content around them. Choice::Auto parses the model's
// own format (for Hermes, also an answer of bare {"name", "arguments"} objects naming offered
// functions, as Qwen2.5-Coder writes them); Named takes the whole text as the arguments; Required reads the list the schema
// made. Text that does not parse stays content.
Answer read_answer(const ToolRequest& request, const std::string& text);

// How much of a partial answer may be streamed as content now: the bytes before anything that
// may start a tool call (all of it without tools, none for a forced call).
size_t streamable(const ToolRequest& request, const std::string& text);

}  // namespace stem::toolcall
