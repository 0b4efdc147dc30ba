#include "server/request_parse.h"

#include <cmath>
#include <filesystem>
#include <optional>

#include "text/tokenizer.h"

namespace stem {

ServedModel ServedModel::of(const Engine& engine, const std::string& served_name) {
  ServedModel m;
  m.engine = &engine;
  m.path = engine.model_dir().string();
  m.name = served_name;
  if (m.name.empty()) m.name = std::filesystem::path(m.path).lexically_normal().filename().string();
  if (m.name.empty()) m.name = std::filesystem::path(m.path).parent_path().filename().string();  // "dir/"
  return m;
}

using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

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

void check_model(const json& body, const ServedModel& model) {
  if (auto name = get_string(body, "model"); name && !name->empty() && !model.matches(*name))
    throw ApiError(404, "The model '" + *name + "' does not exist; this server serves '" + model.name + "'.", "model");
}

std::vector<int32_t> token_list(const json& v, const char* param) {
  std::vector<int32_t> ids;
  for (const json& t : v) {
    if (!t.is_number_integer()) bad(param, std::string("'") + param + "' must be a string or a list of token ids");
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id > INT32_MAX) bad(param, "token id " + std::to_string(id) + " is outside the vocabulary");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

bool is_token_list(const json& v) {
  return v.is_array() && !v.empty() && v[0].is_number();
}

std::vector<int32_t> completion_prompt(const json& body, const Engine& engine) {
  const json* p = field(body, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  const json* one = p;
  // A list holding one prompt is one prompt; several prompts per request are not served.
  if (p->is_array() && !is_token_list(*p)) {
    if (p->size() != 1) bad("prompt", "send one prompt per request (a list of several prompts is not supported)");
    one = &(*p)[0];
  }
  if (one->is_string()) {
    const std::string& text = one->get_ref<const std::string&>();
    if (text.empty()) bad("prompt", "'prompt' must not be empty");
    return engine.tokenizer().encode(text, true);
  }
  if (one->is_array()) {
    if (one->empty()) bad("prompt", "'prompt' must not be empty");
    return token_list(*one, "prompt");
  }
  bad("prompt", "'prompt' must be a string or a list of token ids, got " + one->dump());
}

// Messages as the chat template wants them: content as one string (text parts joined).
json chat_messages(const json& body) {
  const json* m = field(body, "messages");
  if (!m) bad("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) bad("messages", "'messages' must be a non-empty list of {role, content} objects");
  json out = json::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) bad(where, where + " must be an object with 'role' and 'content'");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) bad(where + ".role", where + ".role must be a string");
    json copy = msg;
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
    out.push_back(std::move(copy));
  }
  return out;
}

std::vector<int32_t> chat_prompt(const json& body, const Engine& engine) {
  const json messages = chat_messages(body);
  const bool add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
  std::string text;
  try {
    text = engine.apply_chat_template(nlohmann::ordered_json(messages), add_generation_prompt);
  } catch (const std::exception& e) {
    bad("messages", std::string("the chat template could not render these messages: ") + e.what());
  }
  // The template writes the special tokens (BOS and the role markers) itself.
  return engine.tokenizer().encode(text, false);
}

void parse_stop(const json& body, StopConditions& stop) {
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      stop.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or a list of strings");
        stop.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of strings");
    }
    std::erase_if(stop.stop, [](const std::string& x) { return x.empty(); });
  }
  if (const json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    stop.stop_token_ids = token_list(*ids, "stop_token_ids");
  }
  stop.ignore_eos = get_bool(body, "ignore_eos").value_or(false);
  stop.include_stop_str = get_bool(body, "include_stop_str_in_output").value_or(false);
}

void parse_sampling(const json& body, SamplingParams& s) {
  auto num = [&](const char* name, float& out) {
    if (auto v = get_number(body, name)) out = static_cast<float>(*v);
  };
  num("temperature", s.temperature);
  if (s.temperature > 2.0f) bad("temperature", "'temperature' must be in [0, 2]");
  num("top_p", s.top_p);
  num("min_p", s.min_p);
  num("repetition_penalty", s.repetition_penalty);
  num("presence_penalty", s.presence_penalty);
  num("frequency_penalty", s.frequency_penalty);
  if (auto k = get_int(body, "top_k")) {
    if (*k < -1 || *k > INT32_MAX) bad("top_k", "'top_k' must be -1, 0 (off) or a positive count");
    s.top_k = static_cast<int32_t>(*k);
  }
  if (auto seed = get_int(body, "seed")) s.seed = static_cast<uint64_t>(*seed);
  try {
    s.validate();
  } catch (const Error& e) {
    const std::string msg = e.what();
    bad(msg.substr(0, msg.find(' ')), msg);
  }
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

ParsedGeneration parse_generation(ApiKind kind, const json& body, const ServedModel& model) {
  const Engine& engine = *model.engine;
  check_model(body, model);
  ParsedGeneration p;
  p.kind = kind;
  GenerateRequest& r = p.request;
  r.prompt = kind == ApiKind::Chat ? chat_prompt(body, engine) : completion_prompt(body, engine);
  const int64_t prompt_len = static_cast<int64_t>(r.prompt.size()), context = engine.max_model_len();
  if (prompt_len == 0) bad(kind == ApiKind::Chat ? "messages" : "prompt", "the prompt is empty after tokenization");
  if (prompt_len >= context)
    bad(kind == ApiKind::Chat ? "messages" : "prompt",
        "This model's maximum context length is " + std::to_string(context) + " tokens (--max-model-len). However, "
        "your prompt has " + std::to_string(prompt_len) + " tokens (at least one more is needed for the completion).");

  std::optional<int64_t> max_tokens = get_int(body, "max_tokens");
  const char* max_name = "max_tokens";
  if (kind == ApiKind::Chat)
    if (auto m = get_int(body, "max_completion_tokens")) max_tokens = m, max_name = "max_completion_tokens";
  // As OpenAI: completions default to 16 tokens, chat to whatever the context leaves.
  const int64_t room = context - prompt_len;
  const int64_t max_new = max_tokens.value_or(kind == ApiKind::Chat ? room : std::min<int64_t>(16, room));
  if (max_new < 1) bad(max_name, std::string("'") + max_name + "' must be at least 1");
  if (max_new > room)
    bad(max_name, "This model's maximum context length is " + std::to_string(context) +
                      " tokens (--max-model-len). However, you requested " +
                      std::to_string(prompt_len + max_new) + " tokens (" + std::to_string(prompt_len) +
                      " in the prompt, " + std::to_string(max_new) + " for the completion).");
  r.stop.max_tokens = static_cast<int32_t>(max_new);

  if (auto n = get_int(body, "n")) {
    if (*n < 1 || *n > engine.options().max_num_seqs)
      bad("n", "'n' must be between 1 and " + std::to_string(engine.options().max_num_seqs) +
                   " (the server's --max-num-seqs)");
    r.n = static_cast<int32_t>(*n);
  }
  if (auto best_of = get_int(body, "best_of"); best_of && *best_of != r.n)
    bad("best_of", "'best_of' other than n is not supported");
  if (get_bool(body, "echo").value_or(false)) bad("echo", "'echo' is not supported");
  if (auto suffix = get_string(body, "suffix"); suffix && !suffix->empty()) bad("suffix", "'suffix' is not supported");
  parse_sampling(body, r.sampling);
  parse_stop(body, r.stop);

  if (kind == ApiKind::Chat) {
    p.logprobs = get_bool(body, "logprobs").value_or(false);
    if (auto top = get_int(body, "top_logprobs")) {
      if (*top < 0 || *top > 20) bad("top_logprobs", "'top_logprobs' must be in [0, 20]");
      if (*top > 0 && !p.logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      p.top_logprobs = static_cast<int32_t>(*top);
    }
  } else if (auto lp = get_int(body, "logprobs")) {
    if (*lp < 0 || *lp > 20) bad("logprobs", "'logprobs' must be in [0, 20]");
    p.logprobs = true;
    p.top_logprobs = static_cast<int32_t>(*lp);
  }
  r.sampling.logprobs = p.logprobs;
  r.sampling.top_logprobs = p.top_logprobs;

  // stemserve's own field: Stem or dense prefill for this request (default: --sparse-prefill).
  if (auto mode = get_string(body, "sparse_prefill")) {
    r.sparse_prefill = parse_sparse_prefill(*mode);
    if (!r.sparse_prefill) bad("sparse_prefill", "'sparse_prefill' must be \"stem\" or \"dense\", got \"" + *mode + "\"");
  }

  // As vLLM's: requests with different salts never share prefix-cache pages.
  if (auto salt = get_string(body, "cache_salt")) {
    if (salt->empty()) bad("cache_salt", "'cache_salt' must be a non-empty string");
    r.cache_salt = *salt;
  }

  p.stream = get_bool(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    p.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  return p;
}

std::vector<int32_t> parse_tokenize(const json& body, const ServedModel& model) {
  check_model(body, model);
  const Engine& engine = *model.engine;
  if (field(body, "messages")) return chat_prompt(body, engine);
  auto prompt = get_string(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' (a string) or 'messages' is required");
  return engine.tokenizer().encode(*prompt, get_bool(body, "add_special_tokens").value_or(true));
}

std::vector<int32_t> parse_detokenize(const json& body, const ServedModel& model) {
  check_model(body, model);
  const json* t = field(body, "tokens");
  if (!t || !t->is_array()) bad("tokens", "'tokens' must be a list of token ids");
  std::vector<int32_t> ids = token_list(*t, "tokens");
  for (int32_t id : ids)
    if (id >= model.engine->tokenizer().vocab_size())
      bad("tokens", "token id " + std::to_string(id) + " is outside the vocabulary");
  return ids;
}

}  // namespace stem
