#include "toolcall/parse.h"

#include <nlohmann/json.hpp>

namespace stem::toolcall {

using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kHermesOpen = "<tool_call>";
constexpr const char* kHermesClose = "</tool_call>";
constexpr const char* kPythonTag = "<|python_tag|>";
constexpr const char* kMistralCalls = "[TOOL_CALLS]";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

size_t skip_space(const std::string& s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

std::string trim(const std::string& s) {
  size_t b = skip_space(s, 0), e = s.size();
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// The end (one past) of the JSON object or array that starts at s[i], by its brackets and strings;
// npos when it does not close.
size_t value_end(const std::string& s, size_t i) {
  int depth = 0;
  bool in_string = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string::npos;
}

std::optional<ojson> parse_json(const std::string& s) {
  ojson j = ojson::parse(s, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// {"name": "f", "arguments" (or "parameters"): {...} or a string holding one}.
std::optional<ToolCall> call_of(const ojson& j) {
  if (!j.is_object()) return std::nullopt;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty()) return std::nullopt;
  auto args = j.find("arguments");
  if (args == j.end()) args = j.find("parameters");
  ojson value = ojson::object();
  if (args != j.end()) {
    value = *args;
    if (value.is_string()) {
      auto inner = parse_json(value.get<std::string>());
      if (!inner) return std::nullopt;
      value = *inner;
    }
    if (!value.is_object()) return std::nullopt;
  }
  return ToolCall{name->get<std::string>(), value.dump()};
}

// Calls from JSON texts in s[i...]: objects, or arrays of them (Mistral), joined by `sep` (0: none)
// and whitespace, up to the end. Empty when anything else is there.
std::vector<ToolCall> json_calls(const std::string& s, size_t i, char sep) {
  std::vector<ToolCall> calls;
  for (i = skip_space(s, i); i < s.size();) {
    if (s[i] != '{' && s[i] != '[') return {};
    const size_t end = value_end(s, i);
    if (end == std::string::npos) return {};
    auto j = parse_json(s.substr(i, end - i));
    if (!j) return {};
    for (const ojson& one : j->is_array() ? *j : ojson::array({*j})) {
      auto call = call_of(one);
      if (!call) return {};
      calls.push_back(std::move(*call));
    }
    i = skip_space(s, end);
    if (sep && i < s.size() && s[i] == sep) i = skip_space(s, i + 1);
  }
  return calls;
}

Answer with_calls(const std::string& before, std::vector<ToolCall> calls) {
  Answer a;
  std::string content = trim(before);
  if (!content.empty()) a.content = before.substr(0, before.find_last_not_of(" \n\t\r") + 1);
  a.calls = std::move(calls);
  return a;
}

std::vector<ToolCall> hermes_calls(const std::string& text, size_t pos) {
  std::vector<ToolCall> calls;
  const size_t open = std::string(kHermesOpen).size(), close = std::string(kHermesClose).size();
  while (pos != std::string::npos) {
    const size_t start = pos + open;
    const size_t end = text.find(kHermesClose, start);
    auto j = parse_json(trim(text.substr(start, end == std::string::npos ? std::string::npos : end - start)));
    auto call = j ? call_of(*j) : std::nullopt;
    if (!call) return {};
    calls.push_back(std::move(*call));
    pos = end == std::string::npos ? end : text.find(kHermesOpen, end + close);
  }
  return calls;
}

// Where a trailing piece of `text` could grow into `marker`.
size_t partial_marker(const std::string& text, const std::string& marker) {
  for (size_t n = std::min(text.size(), marker.size() - 1); n > 0; --n)
    if (text.compare(text.size() - n, n, marker, 0, n) == 0) return text.size() - n;
  return text.size();
}

size_t marker_start(const std::string& text, const std::string& marker) {
  const size_t at = text.find(marker);
  return at != std::string::npos ? at : partial_marker(text, marker);
}

}  // namespace

std::optional<Format> format_named(const std::string& name) {
  if (name == "hermes") return Format::Hermes;
  if (name == "llama3_json") return Format::Llama3Json;
  if (name == "mistral") return Format::Mistral;
  return std::nullopt;
}

const char* format_name(Format format) {
  switch (format) {
    case Format::Hermes: return "hermes";
    case Format::Llama3Json: return "llama3_json";
    case Format::Mistral: return "mistral";
  }
  return "?";
}

std::optional<Format> format_of_template(const std::string& source) {
  if (source.find(kHermesOpen) != std::string::npos) return Format::Hermes;
  if (source.find(kMistralCalls) != std::string::npos) return Format::Mistral;
  if (source.find(kPythonTag) != std::string::npos || source.find("ipython") != std::string::npos)
    return Format::Llama3Json;
  return std::nullopt;
}

Answer parse_tool_calls(Format format, const std::string& text) {
  const Answer plain{text, {}};
  size_t at = std::string::npos;
  std::vector<ToolCall> calls;
  switch (format) {
    case Format::Hermes:
      at = text.find(kHermesOpen);
      if (at != std::string::npos) calls = hermes_calls(text, at);
      break;
    case Format::Mistral:
      at = text.find(kMistralCalls);
      if (at != std::string::npos) {
        calls = json_calls(text, at + std::string(kMistralCalls).size(), 0);
      } else if (const size_t b = skip_space(text, 0); b < text.size() && text[b] == '[') {
        at = b;  // [TOOL_CALLS] is a special token: the detokenizer drops it, the list remains
        calls = json_calls(text, b, 0);
      }
      break;
    case Format::Llama3Json:
      at = text.find(kPythonTag);
      if (at != std::string::npos) {
        calls = json_calls(text, at + std::string(kPythonTag).size(), ';');
      } else if (const size_t b = skip_space(text, 0); b < text.size() && text[b] == '{') {
        at = b;
        calls = json_calls(text, b, ';');
      }
      break;
  }
  if (calls.empty()) return plain;
  return with_calls(text.substr(0, at), std::move(calls));
}

size_t call_start(Format format, const std::string& text) {
  switch (format) {
    case Format::Hermes: return marker_start(text, kHermesOpen);
    case Format::Mistral:
    case Format::Llama3Json: {
      // The whole answer is a call when it starts with one (the markers are special tokens, which
      // the detokenizer drops): hold leading whitespace until it shows.
      const size_t b = skip_space(text, 0);
      const bool mistral = format == Format::Mistral;
      if (b == text.size() || text[b] == (mistral ? '[' : '{')) return 0;
      return marker_start(text, mistral ? kMistralCalls : kPythonTag);
    }
  }
  return text.size();
}

}  // namespace stem::toolcall
