#include "server/openai_response.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "text/tokenizer.h"

namespace stem {

using ojson = nlohmann::ordered_json;

namespace {

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string s(n, '0');
  for (char& c : s) c = digits[rng() & 15];
  return s;
}

ojson bytes_of(const std::string& s) {
  ojson b = ojson::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

// The JSON library refuses to write invalid UTF-8: a lone byte of a multi-byte character (one
// token's text alone may be one) is shown as U+FFFD, as the decode of that token alone would.
std::string valid_utf8(const std::string& s) {
  return ojson::parse(ojson(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)).get<std::string>();
}

}  // namespace

ResponseBuilder::ResponseBuilder(const ParsedGeneration& request, std::string model_name, const Tokenizer& tokenizer)
    : kind_(request.kind),
      logprobs_(request.logprobs),
      include_usage_(request.include_usage),
      id_((request.kind == ApiKind::Chat ? "chatcmpl-" : "cmpl-") + random_hex(24)),
      model_(std::move(model_name)),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                   .count()),
      prompt_tokens_(static_cast<int64_t>(request.request.prompt.size())),
      tokenizer_(tokenizer),
      choices_(static_cast<size_t>(request.request.n)) {}

ojson ResponseBuilder::envelope(const char* object) const {
  return ojson{{"id", id_}, {"object", object}, {"created", created_}, {"model", model_}};
}

ojson ResponseBuilder::logprobs_of(const TokenEvent& e, int64_t text_offset) const {
  const std::vector<int32_t> one{e.token};
  const std::string token = valid_utf8(tokenizer_.decode(one, false));
  if (kind_ == ApiKind::Chat) {
    ojson top = ojson::array();
    for (const TokenLogprob& t : e.sample.top) {
      const std::string s = valid_utf8(tokenizer_.decode(std::vector<int32_t>{t.id}, false));
      top.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}});
    }
    return ojson{{"content", ojson::array({ojson{
                                 {"token", token}, {"logprob", e.sample.logprob}, {"bytes", bytes_of(token)},
                                 {"top_logprobs", top}}})}};
  }
  ojson top = ojson::object();
  for (const TokenLogprob& t : e.sample.top)
    top[valid_utf8(tokenizer_.decode(std::vector<int32_t>{t.id}, false))] = t.logprob;
  return ojson{{"tokens", {token}},
               {"token_logprobs", {e.sample.logprob}},
               {"top_logprobs", ojson::array({top})},
               {"text_offset", {text_offset}}};
}

void ResponseBuilder::merge_logprobs(ojson& into, const ojson& part) const {
  if (into.is_null()) {
    into = part;
    return;
  }
  for (auto& [key, value] : part.items())
    for (const auto& x : value) into[key].push_back(x);
}

ojson ResponseBuilder::add(const TokenEvent& e) {
  Choice& c = choices_.at(static_cast<size_t>(e.index));
  cached_tokens_ = std::max(cached_tokens_, e.cached_tokens);
  ojson lp = nullptr;
  if (logprobs_ && e.token >= 0) {
    lp = logprobs_of(e, c.text_offset);
    merge_logprobs(c.logprobs, lp);
  }
  c.text += e.text;
  c.text_offset += static_cast<int64_t>(e.text.size());
  c.tokens = e.completion_tokens;
  if (e.finished) {
    c.finish_reason = e.finish == FinishReason::Stop ? "stop" : e.finish == FinishReason::Length ? "length" : "abort";
    if (e.finish == FinishReason::Stop && !e.stop_reason.empty()) {
      // A stop string is reported as itself, a stop token as its id (as vLLM does).
      const bool is_id = e.token >= 0 && e.stop_reason == std::to_string(e.token);
      c.stop_reason = is_id ? ojson(e.token) : ojson(e.stop_reason);
    }
  }
  if (e.text.empty() && lp.is_null() && !e.finished) return nullptr;

  ojson chunk;
  ojson choice;
  if (kind_ == ApiKind::Chat) {
    chunk = envelope("chat.completion.chunk");
    ojson delta = ojson::object();
    if (!e.text.empty()) delta["content"] = e.text;
    choice = {{"index", e.index}, {"delta", delta}, {"logprobs", lp}};
  } else {
    chunk = envelope("text_completion");
    choice = {{"index", e.index}, {"text", e.text}, {"logprobs", lp}};
  }
  choice["finish_reason"] = e.finished ? ojson(c.finish_reason) : ojson(nullptr);
  if (e.finished) choice["stop_reason"] = c.stop_reason;
  chunk["choices"] = ojson::array({choice});
  if (include_usage_) chunk["usage"] = nullptr;
  return chunk;
}

ojson ResponseBuilder::role_chunk(int32_t index) const {
  ojson chunk = envelope("chat.completion.chunk");
  chunk["choices"] = ojson::array({ojson{{"index", index},
                                         {"delta", {{"role", "assistant"}, {"content", ""}}},
                                         {"logprobs", nullptr},
                                         {"finish_reason", nullptr}}});
  if (include_usage_) chunk["usage"] = nullptr;
  return chunk;
}

int64_t ResponseBuilder::completion_tokens() const {
  int64_t n = 0;
  for (const Choice& c : choices_) n += c.tokens;
  return n;
}

ojson ResponseBuilder::usage() const {
  const int64_t completion = completion_tokens();
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion},
          {"total_tokens", prompt_tokens_ + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens_}}}};
}

ojson ResponseBuilder::usage_chunk() const {
  ojson chunk = envelope(kind_ == ApiKind::Chat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = ojson::array();
  chunk["usage"] = usage();
  return chunk;
}

ojson ResponseBuilder::response() const {
  ojson r = envelope(kind_ == ApiKind::Chat ? "chat.completion" : "text_completion");
  ojson choices = ojson::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    ojson lp = logprobs_ ? (c.logprobs.is_null() ? ojson::object() : c.logprobs) : ojson(nullptr);
    if (kind_ == ApiKind::Chat) {
      if (logprobs_ && lp.empty()) lp = {{"content", ojson::array()}};
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", c.text}}},
                         {"logprobs", lp},
                         {"finish_reason", c.finish_reason},
                         {"stop_reason", c.stop_reason}});
    } else {
      choices.push_back({{"index", i},
                         {"text", c.text},
                         {"logprobs", lp},
                         {"finish_reason", c.finish_reason},
                         {"stop_reason", c.stop_reason}});
    }
  }
  r["choices"] = choices;
  r["usage"] = usage();
  return r;
}

ojson error_body(const std::string& message, const std::string& type, const std::string& param, int code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? ojson(nullptr) : ojson(param)},
            {"code", code ? ojson(code) : ojson(nullptr)}}}};
}

}  // namespace stem
