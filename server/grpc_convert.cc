#include "server/grpc_convert.h"

#include <nlohmann/json.hpp>

#include "server/request_parse.h"
#include "text/tokenizer.h"

namespace stem {

namespace v1 = stemserve::v1;
using json = nlohmann::ordered_json;  // a schema keeps its properties' order

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

ChatPrompt chat_prompt(const v1::ChatMessages& chat) {
  ChatPrompt out;
  for (const v1::ChatMessage& m : chat.messages()) out.messages.push_back({{"role", m.role()}, {"content", m.content()}});
  if (chat.has_add_generation_prompt()) out.add_generation_prompt = chat.add_generation_prompt();
  return out;
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
    if (!rf.json_schema().empty()) {
      if (f.response_format.type != "json_schema")
        bad("response_format", "'response_format.json_schema' needs 'response_format.type' \"json_schema\"");
      try {
        const json::parser_callback_t limit_depth = [](int depth, json::parse_event_t, json&) {
          if (depth > kMaxJsonDepth)
            bad("response_format", "'response_format.json_schema' is nested deeper than " +
                                       std::to_string(kMaxJsonDepth) + " levels");
          return true;
        };
        f.response_format.schema = json::parse(rf.json_schema(), limit_depth);
      } catch (const json::exception& e) {
        bad("response_format", std::string("'response_format.json_schema' is not JSON: ") + e.what());
      }
    }
  }
  return f;
}

ParsedGeneration parse_grpc_generate(const v1::GenerateRequest& in, const ServedModel& model) {
  return build_generation(generation_fields(in), model);
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
