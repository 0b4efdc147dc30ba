#include "server/request_parse.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string_view>

namespace stem {

using json = nlohmann::ordered_json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

std::string quoted_name(const std::string& name) { return "'" + name + "'"; }

// A field that is absent or null counts as not given, as in OpenAI's API.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int64_t> get_int(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) return static_cast<int64_t>(d);
  }
  bad(name, std::string("'") + name + "' must be an integer, got " + v->dump());
}

std::optional<double> get_number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, std::string("'") + name + "' must be a number, got " + v->dump());
  return v->get<double>();
}

std::optional<bool> get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(name, std::string("'") + name + "' must be true or false, got " + v->dump());
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad(name, std::string("'") + name + "' must be a string, got " + v->dump());
  return v->get<std::string>();
}

// Integers, their range left to api_request.cc.
std::vector<int64_t> token_list(const json& v, const char* param) {
  std::vector<int64_t> ids;
  for (const json& t : v) {
    if (!t.is_number_integer()) bad(param, std::string("'") + param + "' must be a string or a list of token ids");
    ids.push_back(t.is_number_unsigned() && t.get<uint64_t>() > INT64_MAX ? INT64_MAX : t.get<int64_t>());
  }
  return ids;
}

bool is_token_list(const json& v) {
  return v.is_array() && !v.empty() && v[0].is_number();
}

Prompt completion_prompt(const json& body) {
  const json* p = field(body, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  const json* one = p;
  // A list holding one prompt is one prompt; several prompts per request are not served.
  if (p->is_array() && !is_token_list(*p)) {
    if (p->size() != 1) bad("prompt", "send one prompt per request (a list of several prompts is not supported)");
    one = &(*p)[0];
  }
  if (one->is_string()) return one->get<std::string>();
  if (one->is_array()) return token_list(*one, "prompt");
  bad("prompt", "'prompt' must be a string or a list of token ids, got " + one->dump());
}

// An assistant message's tool calls as the templates want them: each {"id", "type": "function",
// "function": {"name", "arguments"}}, its arguments (OpenAI's JSON text) parsed into an object, as
// vLLM passes them (the Qwen2.5 and Llama 3.1 templates write `arguments | tojson`).
json history_calls(const json& calls, const std::string& where) {
  if (!calls.is_array()) bad(where, where + " must be a list of tool calls");
  json out = json::array();
  for (size_t j = 0; j < calls.size(); ++j) {
    const std::string w = where + "[" + std::to_string(j) + "]";
    const json& c = calls[j];
    const json* fn = c.is_object() ? field(c, "function") : nullptr;
    if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
      bad(w, w + " must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}");
    json copy(c);
    if (const json* args = field(*fn, "arguments"); args && args->is_string()) {
      json parsed = json::parse(args->get<std::string>(), nullptr, false);
      if (parsed.is_discarded() || !parsed.is_object())
        bad(w + ".function.arguments", w + ".function.arguments must be a JSON object in a string");
      copy["function"]["arguments"] = std::move(parsed);
    }
    out.push_back(std::move(copy));
  }
  return out;
}

// Messages as the chat template wants them: content as one string (text parts joined).
ChatPrompt chat_prompt(const json& body) {
  const json* m = field(body, "messages");
  if (!m) bad("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) bad("messages", "'messages' must be a non-empty list of {role, content} objects");
  ChatPrompt chat;
  chat.add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
  if (const json* kw = field(body, "chat_template_kwargs")) set_chat_template_kwargs(chat, *kw, "chat_template_kwargs");
  nlohmann::ordered_json& out = chat.messages;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) bad(where, where + " must be an object with 'role' and 'content'");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) bad(where + ".role", where + ".role must be a string");
    if (const auto r = role->get<std::string>();
        r != "system" && r != "developer" && r != "user" && r != "assistant" && r != "tool")
      bad(where + ".role", where + ".role '" + r + "' is not one of system, developer, user, assistant, tool");
    nlohmann::ordered_json copy(msg);
    auto content = msg.find("content");
    if (content == msg.end() || content->is_null()) {
      copy["content"] = "";
    } else if (content->is_array()) {
      std::string text;
      for (const json& part : *content) {
        // value("type", "") would throw a type_error (a 500) for {"type": 5}: found by fuzz_request.
        const auto type = part.is_object() ? part.find("type") : part.end();
        if (!part.is_object() || type == part.end() || *type != "text" || !part.contains("text") ||
            !part["text"].is_string())
          bad(where + ".content", where + ".content: only {\"type\": \"text\", \"text\": ...} parts are supported");
        text += part["text"].get<std::string>();
      }
      copy["content"] = text;
    } else if (!content->is_string()) {
      bad(where + ".content", where + ".content must be a string or a list of text parts");
    }
    if (*role == "tool" && (!msg.contains("tool_call_id") || !msg["tool_call_id"].is_string()))
      bad(where + ".tool_call_id", where + ".tool_call_id (a string) is required for a 'tool' message");
    if (auto calls = msg.find("tool_calls"); calls != msg.end() && !calls->is_null()) {
      if (*role != "assistant") bad(where + ".tool_calls", where + ".tool_calls is only for 'assistant' messages");
      copy["tool_calls"] = history_calls(*calls, where + ".tool_calls");
    }
    out.push_back(std::move(copy));
  }
  return chat;
}

std::vector<std::string> stop_strings(const json& body) {
  std::vector<std::string> stop;
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) return {s->get<std::string>()};
    if (!s->is_array()) bad("stop", "'stop' must be a string or a list of strings");
    for (const json& x : *s) {
      if (!x.is_string()) bad("stop", "'stop' must be a string or a list of strings");
      stop.push_back(x.get<std::string>());
    }
  }
  return stop;
}

// {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict",
// "description"}}; the schema itself is checked where it is compiled (api_request.cc).
ResponseFormat response_format(const json& body) {
  ResponseFormat rf;
  const json* r = field(body, "response_format");
  if (!r) return rf;
  if (!r->is_object() || !r->contains("type") || !(*r)["type"].is_string())
    bad("response_format", "'response_format' must be an object with a string 'type'");
  rf.type = (*r)["type"].get<std::string>();
  if (rf.type != "text" && rf.type != "json_object" && rf.type != "json_schema")
    bad("response_format",
        "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got \"" + rf.type + "\"");
  for (auto it = r->begin(); it != r->end(); ++it)
    if (it.key() != "type" && !(it.key() == "json_schema" && rf.type == "json_schema"))
      bad("response_format", "'response_format." + it.key() + "' is not supported with type \"" + rf.type + "\"");
  if (rf.type != "json_schema") return rf;
  const json* js = field(*r, "json_schema");
  if (!js || !js->is_object())
    bad("response_format", "'response_format.json_schema' (an object with 'name' and 'schema') is required");
  for (auto it = js->begin(); it != js->end(); ++it) {
    const std::string& k = it.key();
    if (k != "name" && k != "schema" && k != "strict" && k != "description")
      bad("response_format", "'response_format.json_schema." + k + "' is not supported");
  }
  auto name = get_string(*js, "name");
  if (!name || name->empty() || name->size() > 64)
    bad("response_format", "'response_format.json_schema.name' must be a string of 1 to 64 characters");
  get_bool(*js, "strict");  // checked for its type; the schema is always enforced
  if (const json* schema = field(*js, "schema")) rf.schema = *schema;
  return rf;
}

// A schema given as an object or boolean, or as JSON text (vLLM takes both).
json schema_value(const json& v, const std::string& param, const std::string& name) {
  if (v.is_object() || v.is_boolean()) return v;
  if (!v.is_string()) bad(param, quoted_name(name) + " must be a JSON schema (an object, or JSON text)");
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth)
      bad(param, quoted_name(name) + " is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  json schema;
  try {
    schema = json::parse(v.get<std::string>(), limit_depth);
  } catch (const json::exception& e) {
    bad(param, quoted_name(name) + " is not JSON: " + e.what());
  }
  if (!schema.is_object() && !schema.is_boolean()) bad(param, quoted_name(name) + " must be a JSON schema object");
  return schema;
}

std::vector<std::string> choice_list(const json& v, const std::string& param, const std::string& name) {
  if (!v.is_array() || v.empty()) bad(param, quoted_name(name) + " must be a non-empty list of strings");
  std::vector<std::string> out;
  for (const json& c : v) {
    if (!c.is_string()) bad(param, quoted_name(name) + " must be a non-empty list of strings, got " + c.dump());
    out.push_back(c.get<std::string>());
  }
  return out;
}

std::string regex_value(const json& v, const std::string& param, const std::string& name) {
  if (!v.is_string()) bad(param, quoted_name(name) + " must be a string (a regular expression)");
  return v.get<std::string>();
}

// vLLM's structured_outputs: {"json": schema} | {"regex": "..."} | {"choice": [...]} |
// {"grammar": "GBNF"} | {"json_object": true}, exactly one of them. Its flags that change nothing
// here (our JSON has no whitespace and no properties beyond the schema's; there is no fallback
// backend) are accepted as booleans; `structural_tag` and `whitespace_pattern` are refused by name.
std::optional<ResponseFormat> structured_outputs(const json& body) {
  const json* so = field(body, "structured_outputs");
  if (!so) return std::nullopt;
  const std::string param = "structured_outputs";
  if (!so->is_object()) bad(param, "'structured_outputs' must be an object with one of 'json', 'regex', 'choice'");
  ResponseFormat rf;
  rf.field = param;
  int kinds = 0;
  for (auto it = so->begin(); it != so->end(); ++it) {
    const std::string& k = it.key();
    const std::string name = param + "." + k;
    if (it->is_null()) continue;
    if (k == "json") {
      rf.type = "json_schema";
      rf.schema = schema_value(*it, param, name);
    } else if (k == "regex") {
      rf.type = "regex";
      rf.pattern = regex_value(*it, param, name);
    } else if (k == "choice") {
      rf.type = "choice";
      rf.choices = choice_list(*it, param, name);
    } else if (k == "grammar") {
      if (!it->is_string()) bad(param, quoted_name(name) + " must be a string (a GBNF grammar)");
      rf.type = "grammar";
      rf.pattern = it->get<std::string>();
    } else if (k == "json_object") {
      if (!it->is_boolean()) bad(param, quoted_name(name) + " must be true or false");
      if (!it->get<bool>()) continue;
      rf.type = "json_object";
    } else if (k == "disable_any_whitespace" || k == "disable_additional_properties" || k == "disable_fallback") {
      if (!it->is_boolean()) bad(param, quoted_name(name) + " must be true or false");
      continue;
    } else if (k == "structural_tag" || k == "whitespace_pattern") {
      bad(param, quoted_name(name) + " is not supported; use 'json', 'regex', 'choice' or 'grammar'");
    } else {
      bad(param, quoted_name(name) + " is not a field of 'structured_outputs' (it takes 'json', 'regex', 'choice', "
                                     "'grammar' or 'json_object')");
    }
    rf.value_field = name;
    ++kinds;
  }
  if (kinds == 0) bad(param, "'structured_outputs' must set one of 'json', 'regex', 'choice', 'grammar' or 'json_object'");
  if (kinds > 1)
    bad(param, "'structured_outputs' must set only one of 'json', 'regex', 'choice', 'grammar' and 'json_object'");
  return rf;
}

// vLLM's older top-level fields, each one kind of structured_outputs.
std::optional<ResponseFormat> guided(const json& body) {
  for (const char* name : {"guided_decoding_backend", "guided_whitespace_pattern"})
    if (field(body, name))
      bad(name, std::string("'") + name + "' is not supported; use 'guided_json', 'guided_regex', 'guided_choice' "
                                          "or 'guided_grammar'");
  std::optional<ResponseFormat> out;
  for (const char* name : {"guided_json", "guided_regex", "guided_choice", "guided_grammar"}) {
    const json* v = field(body, name);
    if (!v) continue;
    if (out) bad(name, "'" + out->field + "' and '" + name + "' cannot be combined: send one");
    ResponseFormat rf;
    rf.field = rf.value_field = name;
    if (std::string(name) == "guided_json") {
      rf.type = "json_schema";
      rf.schema = schema_value(*v, name, name);
    } else if (std::string(name) == "guided_regex") {
      rf.type = "regex";
      rf.pattern = regex_value(*v, name, name);
    } else if (std::string(name) == "guided_grammar") {
      if (!v->is_string()) bad(name, "'guided_grammar' must be a string (a GBNF grammar)");
      rf.type = "grammar";
      rf.pattern = v->get<std::string>();
    } else {
      rf.type = "choice";
      rf.choices = choice_list(*v, name, name);
    }
    out = std::move(rf);
  }
  return out;
}

// response_format, structured_outputs or guided_*: at most one of them.
ResponseFormat structured_output(const json& body) {
  ResponseFormat rf = response_format(body);
  for (std::optional<ResponseFormat> other : {structured_outputs(body), guided(body)}) {
    if (!other) continue;
    if (rf.type != "text" || rf.field != "response_format")
      bad(other->field, quoted_name(other->field) + " cannot be combined with " + quoted_name(rf.field));
    rf = std::move(*other);
  }
  return rf;
}

}  // namespace

json parse_json_body(const std::string& body) {
  // Parsing is iterative, but copying, dumping and rendering a value recurse: a chat body with a
  // few hundred kilobytes of '[' overflowed the handler thread's stack (seen while writing the
  // fuzz targets).
  const json::parser_callback_t limit_depth = [](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth)
      throw ApiError(400, "the request body is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  json j;
  try {
    j = json::parse(body, limit_depth);
  } catch (const json::exception& e) {
    // nlohmann checks UTF-8 as it parses, so invalid UTF-8 lands here too; a number too large
    // for a double (1E400) is an out_of_range error (it was a 500; the config fuzzer found the kind).
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

// The top-level fields each endpoint reads. Any other is refused by name: a field we do not serve
// (logit_bias, store, metadata, a misspelt one) is never silently ignored. `user` (the caller's
// end-user id, which OpenAI keeps for abuse monitoring) is accepted: there is nothing to serve.
constexpr std::string_view kCommonFields[] = {
    "model", "max_tokens", "n", "temperature", "top_p", "min_p", "top_k", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "include_stop_str_in_output", "logprobs",
    "stream", "stream_options", "sparse_prefill", "cache_salt", "response_format", "structured_outputs", "guided_json",
    "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern",
    "functions", "function_call", "user"};
constexpr std::string_view kCompletionFields[] = {"prompt", "best_of", "echo", "suffix"};
constexpr std::string_view kChatFields[] = {"messages",        "max_completion_tokens", "top_logprobs",
                                            "add_generation_prompt", "chat_template_kwargs", "tools",
                                            "tool_choice",     "parallel_tool_calls"};

bool listed(std::span<const std::string_view> names, const std::string& key) {
  return std::find(names.begin(), names.end(), key) != names.end();
}

void check_known_fields(ApiKind kind, const json& body) {
  const bool chat = kind == ApiKind::Chat;
  const std::span<const std::string_view> own = chat ? std::span<const std::string_view>(kChatFields) : kCompletionFields;
  const std::span<const std::string_view> other =
      chat ? std::span<const std::string_view>(kCompletionFields) : kChatFields;
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    if (listed(kCommonFields, k) || listed(own, k)) continue;
    if (listed(other, k))
      bad(k, quoted_name(k) + " is for " + (chat ? "/v1/completions" : "/v1/chat/completions"));
    bad(k, quoted_name(k) + " is not supported");
  }
}

GenerationFields generation_fields(ApiKind kind, const json& body) {
  check_known_fields(kind, body);
  GenerationFields f;
  f.model = get_string(body, "model");
  if (kind == ApiKind::Chat) {
    f.prompt = chat_prompt(body);
    f.prompt_field = "messages";
  } else {
    f.prompt = completion_prompt(body);
  }
  f.max_tokens = get_int(body, "max_tokens");
  if (kind == ApiKind::Chat)
    if (auto m = get_int(body, "max_completion_tokens")) f.max_tokens = m, f.max_tokens_field = "max_completion_tokens";
  f.n = get_int(body, "n");
  // OpenAI fields we do not serve.
  if (auto best_of = get_int(body, "best_of"); best_of && *best_of != f.n.value_or(1))
    bad("best_of", "'best_of' other than n is not supported");
  if (get_bool(body, "echo").value_or(false)) bad("echo", "'echo' is not supported");
  if (auto suffix = get_string(body, "suffix"); suffix && !suffix->empty()) bad("suffix", "'suffix' is not supported");

  f.temperature = get_number(body, "temperature");
  f.top_p = get_number(body, "top_p");
  f.min_p = get_number(body, "min_p");
  f.repetition_penalty = get_number(body, "repetition_penalty");
  f.presence_penalty = get_number(body, "presence_penalty");
  f.frequency_penalty = get_number(body, "frequency_penalty");
  f.top_k = get_int(body, "top_k");
  f.seed = get_int(body, "seed");
  f.stop = stop_strings(body);
  if (const json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    f.stop_token_ids = token_list(*ids, "stop_token_ids");
  }
  f.ignore_eos = get_bool(body, "ignore_eos").value_or(false);
  f.include_stop_str = get_bool(body, "include_stop_str_in_output").value_or(false);

  if (kind == ApiKind::Chat) {
    f.logprobs = get_bool(body, "logprobs").value_or(false);
    f.top_logprobs = get_int(body, "top_logprobs");
  } else if (auto lp = get_int(body, "logprobs")) {
    // /v1/completions: the count of alternatives turns logprobs on.
    f.logprobs = true;
    f.top_logprobs = lp;
    f.top_logprobs_field = "logprobs";
  }
  f.sparse_prefill = get_string(body, "sparse_prefill");  // stemserve's own field
  f.cache_salt = get_string(body, "cache_salt");          // as vLLM's
  f.response_format = structured_output(body);
  if (kind == ApiKind::Chat) {
    if (const json* tools = field(body, "tools")) f.tools = *tools;  // checked in build_generation
    if (const json* choice = field(body, "tool_choice")) f.tool_choice = *choice;
    f.parallel_tool_calls = get_bool(body, "parallel_tool_calls");
  }
  for (const char* name : {"functions", "function_call"})
    if (field(body, name)) bad(name, std::string("'") + name + "' (deprecated by OpenAI) is not supported; use 'tools'");
  f.stream = get_bool(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!f.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    f.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  return f;
}

ParsedGeneration parse_generation(ApiKind kind, const json& body, const ServedModel& model) {
  return build_generation(generation_fields(kind, body), model);
}

std::vector<int32_t> parse_tokenize(const json& body, const ServedModel& model) {
  check_model(get_string(body, "model"), model);
  if (field(body, "messages")) return tokenize_prompt(chat_prompt(body), "messages", true, model);
  auto prompt = get_string(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' (a string) or 'messages' is required");
  return tokenize_prompt(*prompt, "prompt", get_bool(body, "add_special_tokens").value_or(true), model);
}

std::vector<int32_t> parse_detokenize(const json& body, const ServedModel& model) {
  check_model(get_string(body, "model"), model);
  const json* t = field(body, "tokens");
  if (!t || !t->is_array()) bad("tokens", "'tokens' must be a list of token ids");
  return checked_token_ids(token_list(*t, "tokens"), "tokens", model);
}

}  // namespace stem
