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

std::string random_alnum(size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(n, '0');
  for (char& c : s) c = chars[rng() % 62];
  return s;
}

// Tool-call arguments streamed in pieces of about this many bytes, cut between UTF-8 characters.
constexpr size_t kArgumentPiece = 24;

std::vector<std::string> pieces(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t end = std::min(s.size(), i + kArgumentPiece);
    while (end < s.size() && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) ++end;
    out.push_back(s.substr(i, end - i));
    i = end;
  }
  return out;
}

ojson tool_calls_json(const std::vector<toolcall::ToolCall>& calls, const std::vector<std::string>& ids) {
  ojson out = ojson::array();
  for (size_t i = 0; i < calls.size(); ++i)
    out.push_back({{"id", ids.at(i)},
                   {"type", "function"},
                   {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}});
  return out;
}

}  // namespace

ResponseBuilder::ResponseBuilder(const ParsedGeneration& request, std::string model_name, const Tokenizer& tokenizer)
    : kind_(request.kind),
      tools_(request.tools),
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
  // The legacy completions API lists the chosen token too ("the logprobs most likely tokens, as well
  // the chosen tokens", as vLLM does): with logprobs 0, the chosen token alone.
  ojson top = ojson::object();
  for (const TokenLogprob& t : e.sample.top)
    top[valid_utf8(tokenizer_.decode(std::vector<int32_t>{t.id}, false))] = t.logprob;
  if (!top.contains(token)) top[token] = e.sample.logprob;
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

std::string new_tool_call_id(const toolcall::ToolRequest& tools) {
  // Mistral's templates take only ids of 9 letters and digits.
  return tools.choice == toolcall::Choice::Auto && tools.format == toolcall::Format::Mistral ? random_alnum(9)
                                                                                            : "call_" + random_alnum(24);
}

const std::string& ResponseBuilder::call_id(const Choice& c, size_t i) const {
  while (c.call_ids.size() <= i) c.call_ids.push_back(new_tool_call_id(tools_));
  return c.call_ids[i];
}

// As OpenAI: "tool_calls" when the model called tools of its own accord or as "required"; a named
// tool_choice finishes with "stop".
std::string ResponseBuilder::finish_reason(const Choice& c, const toolcall::Answer& answer) const {
  if (c.finish_reason == "stop" && !answer.calls.empty() && tools_.choice != toolcall::Choice::Named)
    return "tool_calls";
  return c.finish_reason;
}

ojson ResponseBuilder::chunk_of(int32_t index, ojson delta, ojson logprobs) const {
  ojson chunk = envelope("chat.completion.chunk");
  chunk["choices"] = ojson::array(
      {ojson{{"index", index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}}});
  if (include_usage_) chunk["usage"] = nullptr;
  return chunk;
}

// A chat choice under tools: content streams until something may start a tool call; the calls go
// out when the choice finishes (a named call's arguments as they come), each its index, id and
// name first, then its arguments in pieces, as OpenAI streams them.
std::vector<ojson> ResponseBuilder::add_with_tools(Choice& c, const TokenEvent& e, ojson lp) {
  std::vector<ojson> out;
  const bool named = tools_.choice == toolcall::Choice::Named;
  auto call_head = [&](size_t i, const std::string& name) {
    return ojson{{"tool_calls", ojson::array({ojson{{"index", i},
                                                    {"id", call_id(c, i)},
                                                    {"type", "function"},
                                                    {"function", {{"name", name}, {"arguments", ""}}}}})}};
  };
  auto call_piece = [](size_t i, const std::string& piece) {
    return ojson{{"tool_calls", ojson::array({ojson{{"index", i}, {"function", {{"arguments", piece}}}}})}};
  };
  if (named) {
    if (!c.call_opened && (!e.text.empty() || e.finished)) {
      out.push_back(chunk_of(e.index, call_head(0, tools_.named), nullptr));
      c.call_opened = true;
    }
    if (!e.text.empty() || !lp.is_null())
      out.push_back(chunk_of(e.index, e.text.empty() ? ojson::object() : call_piece(0, e.text), lp));
    c.streamed = c.text.size();
  } else {
    const size_t upto = e.finished ? c.streamed : std::max(c.streamed, toolcall::streamable(tools_, c.text));
    if (upto > c.streamed || !lp.is_null()) {
      ojson delta = ojson::object();
      if (upto > c.streamed) delta["content"] = c.text.substr(c.streamed, upto - c.streamed);
      out.push_back(chunk_of(e.index, delta, lp));
      c.streamed = upto;
    }
  }
  if (!e.finished) return out;
  const toolcall::Answer answer = toolcall::read_answer(tools_, c.text);
  if (!named) {
    // What is left of the content: all the text when there are no calls, else what precedes them.
    const std::string content = answer.calls.empty() ? c.text : answer.content.value_or("");
    if (content.size() > c.streamed) out.push_back(chunk_of(e.index, {{"content", content.substr(c.streamed)}}, nullptr));
    for (size_t i = 0; i < answer.calls.size(); ++i) {
      out.push_back(chunk_of(e.index, call_head(i, answer.calls[i].name), nullptr));
      for (const std::string& piece : pieces(answer.calls[i].arguments))
        out.push_back(chunk_of(e.index, call_piece(i, piece), nullptr));
    }
  }
  ojson last = chunk_of(e.index, ojson::object(), nullptr);
  last["choices"][0]["finish_reason"] = finish_reason(c, answer);
  last["choices"][0]["stop_reason"] = c.stop_reason;
  out.push_back(std::move(last));
  return out;
}

std::vector<ojson> ResponseBuilder::add(const TokenEvent& e) {
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
  if (kind_ == ApiKind::Chat && tools_.choice != toolcall::Choice::None) return add_with_tools(c, e, std::move(lp));
  if (e.text.empty() && lp.is_null() && !e.finished) return {};

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
  return {chunk};
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
      const toolcall::Answer answer = toolcall::read_answer(tools_, c.text);
      ojson message = {{"role", "assistant"}, {"content", answer.content ? ojson(*answer.content) : ojson(nullptr)}};
      if (!answer.calls.empty()) {
        for (size_t k = 0; k < answer.calls.size(); ++k) (void)call_id(c, k);
        message["tool_calls"] = tool_calls_json(answer.calls, c.call_ids);
      }
      choices.push_back({{"index", i},
                         {"message", message},
                         {"logprobs", lp},
                         {"finish_reason", finish_reason(c, answer)},
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
