#include "server/grpc_convert.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "server/openai_response.h"
#include "server/request_parse.h"
#include "text/tokenizer.h"

namespace stem {

namespace v1 = stemserve::v1;
using json = nlohmann::ordered_json;  // a schema keeps its properties' order

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

// JSON text of a request field, its nesting limited as a request body's is; an error names
// `param` (the field itself unless given).
json parse_json_field(const std::string& text, const std::string& field, const std::string& param = "") {
  const std::string& p = param.empty() ? field : param;
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth)
      bad(p, "'" + field + "' is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return json::parse(text, limit_depth);
  } catch (const json::exception& e) {
    bad(p, "'" + field + "' is not JSON: " + e.what());
  }
}

// Messages as the HTTP API gives them to the chat template: a tool message's tool_call_id, an
// assistant message's tool calls with their arguments as objects.
ChatPrompt chat_prompt(const v1::ChatMessages& chat) {
  ChatPrompt out;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    const std::string where = "chat.messages[" + std::to_string(i) + "]";
    json msg = {{"role", m.role()}, {"content", m.content()}};
    if (m.role() == "tool") {
      if (m.tool_call_id().empty())
        bad(where + ".tool_call_id", "'" + where + ".tool_call_id' is required for a 'tool' message");
      msg["tool_call_id"] = m.tool_call_id();
    } else if (!m.tool_call_id().empty()) {
      bad(where + ".tool_call_id", "'" + where + ".tool_call_id' is only for 'tool' messages");
    }
    if (m.tool_calls_size() > 0) {
      if (m.role() != "assistant") bad(where + ".tool_calls", "'" + where + ".tool_calls' is only for 'assistant' messages");
      json calls = json::array();
      for (int j = 0; j < m.tool_calls_size(); ++j) {
        const v1::ToolCall& c = m.tool_calls(j);
        const std::string w = where + ".tool_calls[" + std::to_string(j) + "]";
        if (c.name().empty()) bad(w + ".name", "'" + w + ".name' is required");
        // Nesting limited as everywhere else a client's JSON text is parsed.
        const json args = c.arguments().empty() ? json::object() : parse_json_field(c.arguments(), w + ".arguments");
        if (!args.is_object()) bad(w + ".arguments", "'" + w + ".arguments' must be a JSON object in a string");
        calls.push_back({{"id", c.id()}, {"type", "function"}, {"function", {{"name", c.name()}, {"arguments", args}}}});
      }
      msg["tool_calls"] = std::move(calls);
    }
    out.messages.push_back(std::move(msg));
  }
  if (chat.has_add_generation_prompt()) out.add_generation_prompt = chat.add_generation_prompt();
  if (!chat.chat_template_kwargs().empty())
    set_chat_template_kwargs(out, parse_json_field(chat.chat_template_kwargs(), "chat.chat_template_kwargs"),
                             "chat.chat_template_kwargs");
  return out;
}

// The proto's tools as OpenAI's JSON, for toolcall::check_tools.
json tools_json(const google::protobuf::RepeatedPtrField<v1::Tool>& tools) {
  json out = json::array();
  for (int i = 0; i < tools.size(); ++i) {
    const v1::Tool& t = tools[i];
    json fn = {{"name", t.name()}};
    if (!t.description().empty()) fn["description"] = t.description();
    if (!t.parameters().empty())
      fn["parameters"] = parse_json_field(t.parameters(), "tools[" + std::to_string(i) + "].parameters");
    if (t.has_strict()) fn["strict"] = t.strict();
    out.push_back({{"type", "function"}, {"function", std::move(fn)}});
  }
  return out;
}

// structured_outputs: one of json, regex, choice, grammar, json_object.
ResponseFormat structured_outputs(const v1::StructuredOutputs& so) {
  ResponseFormat rf;
  rf.field = "structured_outputs";
  switch (so.kind_case()) {
    case v1::StructuredOutputs::kJson:
      rf.type = "json_schema";
      rf.value_field = "structured_outputs.json";
      rf.schema = parse_json_field(so.json(), rf.value_field);
      break;
    case v1::StructuredOutputs::kRegex:
      rf.type = "regex";
      rf.value_field = "structured_outputs.regex";
      rf.pattern = so.regex();
      break;
    case v1::StructuredOutputs::kChoice:
      rf.type = "choice";
      rf.value_field = "structured_outputs.choice";
      rf.choices.assign(so.choice().values().begin(), so.choice().values().end());
      if (rf.choices.empty()) bad(rf.field, "'structured_outputs.choice' must list at least one string");
      break;
    case v1::StructuredOutputs::kJsonObject:
      if (!so.json_object()) bad(rf.field, "'structured_outputs.json_object' must be true when set");
      rf.type = "json_object";
      rf.value_field = "structured_outputs.json_object";
      break;
    case v1::StructuredOutputs::kGrammar:
      rf.type = "grammar";
      rf.value_field = "structured_outputs.grammar";
      rf.pattern = so.grammar();
      break;
    default:
      bad(rf.field, "'structured_outputs' must set one of 'json', 'regex', 'choice', 'grammar' or 'json_object'");
  }
  return rf;
}

std::vector<int64_t> ids_of(const google::protobuf::RepeatedField<int32_t>& ids) { return {ids.begin(), ids.end()}; }

void read_sampling(const v1::SamplingParams& s, GenerationFields& f) {
  if (s.has_temperature()) f.temperature = s.temperature();
  if (s.has_top_p()) f.top_p = s.top_p();
  if (s.has_top_k()) f.top_k = s.top_k();
  if (s.has_min_p()) f.min_p = s.min_p();
  if (s.has_repetition_penalty()) f.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) f.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) f.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) f.seed = s.seed();
}

// The token decoded alone, as the HTTP API reports it: a lone byte of a multi-byte character
// becomes U+FFFD, because a protobuf string must be valid UTF-8.
std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  const std::string raw = tokenizer.decode(std::vector<int32_t>{id}, false);
  return json::parse(json(raw).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

}  // namespace

GenerationFields generation_fields(const v1::GenerateRequest& in) {
  GenerationFields f;
  f.model = in.model();
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText:
      f.prompt = in.text();
      f.prompt_field = "text";
      break;
    case v1::GenerateRequest::kTokenIds:
      f.prompt = ids_of(in.token_ids().ids());
      f.prompt_field = "token_ids";
      break;
    case v1::GenerateRequest::kChat:
      f.prompt = chat_prompt(in.chat());
      f.prompt_field = "chat.messages";
      break;
    default:
      bad("prompt", "set the prompt: one of 'text', 'token_ids' or 'chat'");
  }
  if (in.has_sampling()) read_sampling(in.sampling(), f);
  if (in.has_max_tokens()) f.max_tokens = in.max_tokens();
  f.stop.assign(in.stop().begin(), in.stop().end());
  f.stop_token_ids = ids_of(in.stop_token_ids());
  f.ignore_eos = in.ignore_eos();
  f.include_stop_str = in.include_stop_str_in_output();
  if (in.n() != 0) f.n = in.n();
  f.logprobs = in.logprobs();
  f.top_logprobs = in.top_logprobs();
  if (!in.sparse_prefill().empty()) f.sparse_prefill = in.sparse_prefill();  // "": the server's default
  if (!in.cache_salt().empty()) f.cache_salt = in.cache_salt();              // "": no salt
  if (in.has_response_format()) {
    const v1::ResponseFormat& rf = in.response_format();
    if (!rf.type().empty()) f.response_format.type = rf.type();
    if (rf.type() != "" && rf.type() != "text" && rf.type() != "json_object" && rf.type() != "json_schema")
      bad("response_format", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got \"" +
                                 rf.type() + "\"");
    if (!rf.json_schema().empty()) {
      if (f.response_format.type != "json_schema")
        bad("response_format", "'response_format.json_schema' needs 'response_format.type' \"json_schema\"");
      f.response_format.schema = parse_json_field(rf.json_schema(), "response_format.json_schema", "response_format");
    }
    f.response_format.value_field = "response_format.json_schema";
  }
  if (in.has_structured_outputs()) {
    if (f.response_format.type != "text")
      bad("structured_outputs", "'structured_outputs' cannot be combined with 'response_format'");
    f.response_format = structured_outputs(in.structured_outputs());
  }
  const bool chat = in.prompt_case() == v1::GenerateRequest::kChat;
  if (in.tools_size() > 0) {
    if (!chat) bad("tools", "'tools' needs a 'chat' prompt");
    f.tools = tools_json(in.tools());
  }
  if (in.has_tool_choice()) {
    if (!chat) bad("tool_choice", "'tool_choice' needs a 'chat' prompt");
    const v1::ToolChoice& c = in.tool_choice();
    if (c.choice_case() == v1::ToolChoice::kMode) {
      f.tool_choice = c.mode();
    } else if (c.choice_case() == v1::ToolChoice::kFunction) {
      f.tool_choice = {{"type", "function"}, {"function", {{"name", c.function()}}}};
    } else {
      bad("tool_choice", "'tool_choice' must set 'mode' or 'function'");
    }
  }
  if (in.has_parallel_tool_calls()) {
    if (!chat) bad("parallel_tool_calls", "'parallel_tool_calls' needs a 'chat' prompt");
    f.parallel_tool_calls = in.parallel_tool_calls();
  }
  return f;
}

ParsedGeneration parse_grpc_generate(const v1::GenerateRequest& in, const ServedModel& model) {
  try {
    return build_generation(generation_fields(in), model);
  } catch (const ApiError& e) {
    // The tool checks name fields as OpenAI's JSON has them ("tools[1].function.name"); the
    // proto's Tool has no "function" level ("tools[1].name").
    auto proto_names = [](std::string s) {
      for (size_t at; (at = s.find("].function.")) != std::string::npos;) s.replace(at, 11, "].");
      return s;
    };
    if (e.param().rfind("tools", 0) != 0) throw;
    throw ApiError(e.status(), proto_names(e.what()), proto_names(e.param()), e.type());
  }
}

std::vector<int32_t> parse_grpc_tokenize(const v1::TokenizeRequest& in, const ServedModel& model) {
  check_model(in.model(), model);
  const bool add_special_tokens = !in.has_add_special_tokens() || in.add_special_tokens();
  switch (in.input_case()) {
    case v1::TokenizeRequest::kText:
      return tokenize_prompt(in.text(), "text", add_special_tokens, model);
    case v1::TokenizeRequest::kChat:
      return tokenize_prompt(chat_prompt(in.chat()), "chat.messages", add_special_tokens, model);
    default:
      bad("input", "set the input: 'text' or 'chat'");
  }
}

std::vector<int32_t> parse_grpc_detokenize(const v1::DetokenizeRequest& in, const ServedModel& model) {
  check_model(in.model(), model);
  return checked_token_ids(ids_of(in.token_ids()), "token_ids", model);
}

v1::ModelInfoResponse model_info(const ServedModel& model) {
  const Engine& e = *model.engine;
  v1::ModelInfoResponse out;
  out.set_name(model.name);
  out.set_path(model.path);
  out.set_architecture(e.config().architecture);
  out.set_model_type(e.config().model_type);
  out.set_context_length(static_cast<uint32_t>(e.max_model_len()));
  out.set_vocab_size(static_cast<uint32_t>(e.config().vocab_size));
  out.set_device(e.options().device);
  out.set_kv_cache_tokens(static_cast<uint64_t>(e.kv_capacity_tokens()));
  out.set_max_num_seqs(static_cast<uint32_t>(e.options().max_num_seqs));
  for (int32_t id : e.eos_token_ids()) out.add_eos_token_ids(id);
  return out;
}

void add_event(const TokenEvent& e, bool logprobs, const Tokenizer& tokenizer, v1::GenerateResponse& into,
               const toolcall::ToolRequest* tools, ToolText* held) {
  into.set_index(static_cast<uint32_t>(e.index));
  toolcall::Answer answer;
  if (!tools || tools->choice == toolcall::Choice::None || !held) {
    into.mutable_text()->append(e.text);
  } else {
    // As the HTTP API streams a chat answer under tools: text up to where a call may start, the
    // rest of the content and the calls when the sequence ends.
    held->text += e.text;
    if (!e.finished) {
      const size_t upto = std::max(held->streamed, toolcall::streamable(*tools, held->text));
      into.mutable_text()->append(held->text, held->streamed, upto - held->streamed);
      held->streamed = upto;
    } else {
      answer = toolcall::read_answer(*tools, held->text);
      const std::string content = answer.calls.empty() ? held->text : answer.content.value_or("");
      if (content.size() > held->streamed) into.mutable_text()->append(content, held->streamed);
      held->streamed = held->text.size();
      for (const toolcall::ToolCall& c : answer.calls) {
        v1::ToolCall* call = into.add_tool_calls();
        call->set_id(new_tool_call_id(*tools));
        call->set_name(c.name);
        call->set_arguments(c.arguments);
      }
    }
  }
  if (e.token >= 0) {
    into.add_token_ids(e.token);
    if (logprobs) {
      v1::TokenLogprob* lp = into.add_logprobs();
      lp->set_token_id(e.token);
      lp->set_token(token_text(tokenizer, e.token));
      lp->set_logprob(e.sample.logprob);
      for (const TokenLogprob& t : e.sample.top) {
        v1::TopLogprob* top = lp->add_top_logprobs();
        top->set_token_id(t.id);
        top->set_token(token_text(tokenizer, t.id));
        top->set_logprob(t.logprob);
      }
    }
  }
  if (e.finished) {
    // As OpenAI: tool_calls when the model called tools of its own accord or as "required"; a
    // named function's call finishes with stop.
    const bool called = !answer.calls.empty() && tools && tools->choice != toolcall::Choice::Named;
    into.set_finish_reason(e.finish != FinishReason::Stop ? v1::FINISH_REASON_LENGTH
                           : called                       ? v1::FINISH_REASON_TOOL_CALLS
                                                          : v1::FINISH_REASON_STOP);
    into.set_stop_reason(e.stop_reason);
    into.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(e.prompt_tokens));
    into.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(e.completion_tokens));
    into.mutable_usage()->set_cached_tokens(static_cast<uint32_t>(e.cached_tokens));
  }
}

}  // namespace stem
