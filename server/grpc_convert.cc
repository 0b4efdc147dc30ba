#include "server/grpc_convert.h"

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace stem {

namespace v1 = stemserve::v1;
using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

json chat_messages(const v1::ChatMessages& chat) {
  json messages = json::array();
  for (const v1::ChatMessage& m : chat.messages()) messages.push_back({{"role", m.role()}, {"content", m.content()}});
  return messages;
}

json token_ids(const v1::TokenIds& ids) { return json(std::vector<int32_t>(ids.ids().begin(), ids.ids().end())); }

void add_sampling(const v1::SamplingParams& s, json& body) {
  if (s.has_temperature()) body["temperature"] = s.temperature();
  if (s.has_top_p()) body["top_p"] = s.top_p();
  if (s.has_top_k()) body["top_k"] = s.top_k();
  if (s.has_min_p()) body["min_p"] = s.min_p();
  if (s.has_repetition_penalty()) body["repetition_penalty"] = s.repetition_penalty();
  if (s.has_presence_penalty()) body["presence_penalty"] = s.presence_penalty();
  if (s.has_frequency_penalty()) body["frequency_penalty"] = s.frequency_penalty();
  if (s.has_seed()) body["seed"] = s.seed();
}

// The token decoded alone, as the HTTP API reports it: a lone byte of a multi-byte character
// becomes U+FFFD, because a protobuf string must be valid UTF-8.
std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  const std::string raw = tokenizer.decode(std::vector<int32_t>{id}, false);
  return json::parse(json(raw).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

}  // namespace

ParsedGeneration parse_grpc_generate(const v1::GenerateRequest& in, const ServedModel& model) {
  json body = json::object();
  if (!in.model().empty()) body["model"] = in.model();
  ApiKind kind = ApiKind::Completion;
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText:
      if (in.text().empty()) bad("text", "'text' must not be empty");
      body["prompt"] = in.text();
      break;
    case v1::GenerateRequest::kTokenIds:
      if (in.token_ids().ids().empty()) bad("token_ids", "'token_ids' must not be empty");
      body["prompt"] = token_ids(in.token_ids());
      break;
    case v1::GenerateRequest::kChat:
      if (in.chat().messages().empty()) bad("chat.messages", "'chat.messages' must not be empty");
      kind = ApiKind::Chat;
      body["messages"] = chat_messages(in.chat());
      if (in.chat().has_add_generation_prompt()) body["add_generation_prompt"] = in.chat().add_generation_prompt();
      break;
    default:
      bad("prompt", "set the prompt: one of 'text', 'token_ids' or 'chat'");
  }
  if (in.has_sampling()) add_sampling(in.sampling(), body);
  if (in.has_max_tokens()) body["max_tokens"] = in.max_tokens();
  if (in.stop_size()) body["stop"] = std::vector<std::string>(in.stop().begin(), in.stop().end());
  if (in.stop_token_ids_size())
    body["stop_token_ids"] = std::vector<int32_t>(in.stop_token_ids().begin(), in.stop_token_ids().end());
  body["ignore_eos"] = in.ignore_eos();
  body["include_stop_str_in_output"] = in.include_stop_str_in_output();
  if (in.n() != 0) body["n"] = in.n();
  if (in.top_logprobs() > 20) bad("top_logprobs", "'top_logprobs' must be in [0, 20]");
  if (in.top_logprobs() > 0 && !in.logprobs()) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  if (kind == ApiKind::Chat) {
    body["logprobs"] = in.logprobs();
    body["top_logprobs"] = in.top_logprobs();
  } else if (in.logprobs()) {
    body["logprobs"] = in.top_logprobs();  // /v1/completions: the count of alternatives turns logprobs on
  }
  if (!in.sparse_prefill().empty()) body["sparse_prefill"] = in.sparse_prefill();  // "": the server's default
  if (!in.cache_salt().empty()) body["cache_salt"] = in.cache_salt();  // "": no salt
  return parse_generation(kind, body, model);
}

std::vector<int32_t> parse_grpc_tokenize(const v1::TokenizeRequest& in, const ServedModel& model) {
  json body = json::object();
  if (!in.model().empty()) body["model"] = in.model();
  if (in.has_add_special_tokens()) body["add_special_tokens"] = in.add_special_tokens();
  switch (in.input_case()) {
    case v1::TokenizeRequest::kText:
      body["prompt"] = in.text();
      break;
    case v1::TokenizeRequest::kChat:
      if (in.chat().messages().empty()) bad("chat.messages", "'chat.messages' must not be empty");
      body["messages"] = chat_messages(in.chat());
      if (in.chat().has_add_generation_prompt()) body["add_generation_prompt"] = in.chat().add_generation_prompt();
      break;
    default:
      bad("input", "set the input: 'text' or 'chat'");
  }
  return parse_tokenize(body, model);
}

std::vector<int32_t> parse_grpc_detokenize(const v1::DetokenizeRequest& in, const ServedModel& model) {
  json body = {{"tokens", std::vector<int32_t>(in.token_ids().begin(), in.token_ids().end())}};
  if (!in.model().empty()) body["model"] = in.model();
  try {
    return parse_detokenize(body, model);
  } catch (const ApiError& e) {
    throw ApiError(e.status(), e.what(), e.param() == "tokens" ? "token_ids" : e.param());
  }
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

void add_event(const TokenEvent& e, bool logprobs, const Tokenizer& tokenizer, v1::GenerateResponse& into) {
  into.set_index(static_cast<uint32_t>(e.index));
  into.mutable_text()->append(e.text);
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
    into.set_finish_reason(e.finish == FinishReason::Stop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
    into.set_stop_reason(e.stop_reason);
    into.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(e.prompt_tokens));
    into.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(e.completion_tokens));
    into.mutable_usage()->set_cached_tokens(static_cast<uint32_t>(e.cached_tokens));
  }
}

}  // namespace stem
