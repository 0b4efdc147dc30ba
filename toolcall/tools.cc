#include "toolcall/tools.h"

#include <set>

namespace stem::toolcall {

using ojson = nlohmann::ordered_json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ToolError(param, message); }

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

Function check_function(const ojson& tool, const std::string& where) {
  if (!tool.is_object()) bad(where, "'" + where + "' must be an object {\"type\": \"function\", \"function\": {...}}");
  for (auto it = tool.begin(); it != tool.end(); ++it)
    if (it.key() != "type" && it.key() != "function")
      bad(where, "'" + where + "." + it.key() + "' is not supported");
  auto type = tool.find("type");
  if (type == tool.end() || *type != "function")
    bad(where + ".type", "'" + where + ".type' must be \"function\" (the only kind of tool served)");
  const std::string fw = where + ".function";
  auto fn = tool.find("function");
  if (fn == tool.end() || !fn->is_object()) bad(fw, "'" + fw + "' must be an object with a 'name'");
  for (auto it = fn->begin(); it != fn->end(); ++it) {
    const std::string& k = it.key();
    if (k != "name" && k != "description" && k != "parameters" && k != "strict")
      bad(fw + "." + k, "'" + fw + "." + k + "' is not supported");
  }
  Function f;
  auto name = fn->find("name");
  if (name == fn->end() || !name->is_string() || !valid_name(name->get<std::string>()))
    bad(fw + ".name", "'" + fw + ".name' must be 1 to 64 letters, digits, underscores or dashes");
  f.name = name->get<std::string>();
  auto description = fn->find("description");
  if (description != fn->end() && !description->is_null() && !description->is_string())
    bad(fw + ".description", "'" + fw + ".description' must be a string");
  auto strict = fn->find("strict");
  if (strict != fn->end() && !strict->is_null() && !strict->is_boolean())
    bad(fw + ".strict", "'" + fw + ".strict' must be true or false");
  auto params = fn->find("parameters");
  f.parameters = {{"type", "object"}};
  if (params != fn->end() && !params->is_null()) {
    const std::string pw = fw + ".parameters";
    if (!params->is_object()) bad(pw, "'" + pw + "' must be a JSON schema object");
    auto t = params->find("type");
    if (t != params->end() && *t != "object")
      bad(pw, "'" + pw + "' must be a JSON schema of type \"object\", got type " + t->dump());
    f.parameters = *params;
  }
  return f;
}

// A function's parameters inside the "required" schema: its own $defs move to the root under a
// prefix, and its $refs follow them.
ojson hoisted(const ojson& schema, const std::string& prefix, ojson& defs) {
  ojson out = schema;
  for (const char* key : {"$defs", "definitions"}) {
    if (!out.is_object() || !out.contains(key)) continue;
    if (out[key].is_object())
      for (auto& [name, def] : out[key].items()) defs[prefix + name] = hoisted(def, prefix, defs);
    out.erase(key);
  }
  if (out.is_object()) {
    for (auto& [k, v] : out.items()) {
      if (k == "$ref" && v.is_string()) {
        const std::string ref = v.get<std::string>();
        for (const std::string from : {"#/$defs/", "#/definitions/"})
          if (ref.rfind(from, 0) == 0) v = "#/$defs/" + prefix + ref.substr(from.size());
      } else if (k != "enum" && k != "const") {
        v = hoisted(v, prefix, defs);
      }
    }
  } else if (out.is_array()) {
    for (auto& v : out) v = hoisted(v, prefix, defs);
  }
  return out;
}

bool starts_json_object(const std::string& text) {
  const size_t b = text.find_first_not_of(" \n\t\r");
  return b == std::string::npos || text[b] == '{';
}

// Qwen2.5-Coder writes its calls as bare JSON, without Hermes' tags: an answer that is only
// {"name", "arguments"} objects naming offered functions counts as their calls.
Answer bare_calls(const ToolRequest& r, const std::string& text) {
  if (!starts_json_object(text)) return {};
  Answer a = parse_tool_calls(Format::Llama3Json, text);
  for (const ToolCall& c : a.calls) {
    bool offered = false;
    for (const Function& f : r.functions) offered |= f.name == c.name;
    if (!offered) return {};
  }
  return a;
}

}  // namespace

std::vector<Function> check_tools(const ojson& tools) {
  if (!tools.is_array() || tools.empty())
    bad("tools", "'tools' must be a non-empty list of {\"type\": \"function\", \"function\": {...}} objects");
  if (tools.size() > kMaxTools) bad("tools", "'tools' may hold at most " + std::to_string(kMaxTools) + " functions");
  std::vector<Function> out;
  std::set<std::string> names;
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string where = "tools[" + std::to_string(i) + "]";
    Function f = check_function(tools[i], where);
    if (!names.insert(f.name).second)
      bad(where + ".function.name", "'" + where + ".function.name': a second function named '" + f.name + "'");
    out.push_back(std::move(f));
  }
  return out;
}

ToolRequest check_tool_choice(const ojson& tool_choice, std::vector<Function> functions, bool parallel) {
  ToolRequest r;
  r.parallel = parallel;
  const bool have = !functions.empty();
  r.functions = std::move(functions);
  if (tool_choice.is_null()) {
    r.choice = have ? Choice::Auto : Choice::None;
    return r;
  }
  if (tool_choice.is_string()) {
    const std::string s = tool_choice.get<std::string>();
    if (s == "none") r.choice = Choice::None;
    else if (s == "auto") r.choice = Choice::Auto;
    else if (s == "required") r.choice = Choice::Required;
    else bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function, got \"" + s + "\"");
  } else {
    const bool ok = tool_choice.is_object() && tool_choice.value("type", ojson()) == "function" &&
                    tool_choice.contains("function") && tool_choice["function"].is_object() &&
                    tool_choice["function"].contains("name") && tool_choice["function"]["name"].is_string();
    if (!ok)
      bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                         "\"function\": {\"name\": ...}}");
    r.choice = Choice::Named;
    r.named = tool_choice["function"]["name"].get<std::string>();
    bool found = false;
    for (const Function& f : r.functions) found |= f.name == r.named;
    if (!found) bad("tool_choice", "'tool_choice' names the function '" + r.named + "', which is not in 'tools'");
  }
  if (r.choice != Choice::None && !have)
    bad("tool_choice", "'tool_choice' other than \"none\" needs 'tools'");
  return r;
}

ojson forced_schema(const ToolRequest& r) {
  if (r.choice == Choice::Named) {
    for (const Function& f : r.functions)
      if (f.name == r.named) return f.parameters;
  }
  ojson defs = ojson::object(), any = ojson::array();
  for (size_t i = 0; i < r.functions.size(); ++i) {
    const Function& f = r.functions[i];
    ojson one = {{"type", "object"},
                {"properties", {{"name", {{"const", f.name}}},
                                {"parameters", hoisted(f.parameters, "f" + std::to_string(i) + "_", defs)}}},
                {"required", {"name", "parameters"}},
                {"additionalProperties", false}};
    any.push_back(std::move(one));
  }
  ojson schema = {{"type", "array"}, {"items", {{"anyOf", any}}}, {"minItems", 1}};
  if (!r.parallel) schema["maxItems"] = 1;
  if (!defs.empty()) schema["$defs"] = defs;
  return schema;
}

Answer read_answer(const ToolRequest& r, const std::string& text) {
  Answer a;
  switch (r.choice) {
    case Choice::None:
      a.content = text;
      return a;
    case Choice::Named:
      a.calls.push_back({r.named, text});
      return a;
    case Choice::Required: {
      ojson j = ojson::parse(text, nullptr, false);
      if (j.is_array())
        for (const ojson& c : j)
          if (c.is_object() && c.contains("name") && c["name"].is_string() && c.contains("parameters"))
            a.calls.push_back({c["name"].get<std::string>(), c["parameters"].dump()});
      if (a.calls.empty()) a.content = text;  // cut short (max_tokens): what was written
      return a;
    }
    case Choice::Auto:
      a = parse_tool_calls(r.format, text);
      if (a.calls.empty() && r.format == Format::Hermes)
        if (Answer bare = bare_calls(r, text); !bare.calls.empty()) a = std::move(bare);
      if (!r.parallel && a.calls.size() > 1) a.calls.resize(1);
      return a;
  }
  return a;
}

size_t streamable(const ToolRequest& r, const std::string& text) {
  switch (r.choice) {
    case Choice::None: return text.size();
    case Choice::Auto:
      // A Hermes answer may be a bare call (above): hold it while it may be one.
      if (r.format == Format::Hermes && starts_json_object(text)) return 0;
      return call_start(r.format, text);
    default: return 0;
  }
}

}  // namespace stem::toolcall
