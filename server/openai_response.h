// OpenAI-style response bodies, built from the engine's TokenEvents: whole responses
// (text_completion, chat.completion) and streamed chunks (SSE `data:` payloads), with logprobs
// and usage. One ResponseBuilder per HTTP request.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/request.h"
#include "server/api_request.h"

namespace stem {

class Tokenizer;

class ResponseBuilder {
 public:
  ResponseBuilder(const ParsedGeneration& request, std::string model_name, const Tokenizer& tokenizer);

  const std::string& id() const { return id_; }
  // Takes one event into its choice. Returns the stream chunks for it: none when it carries
  // nothing to send (text still held back, no logprobs wanted, not finished), one as a rule, and
  // with tools, a chunk per tool call and per piece of its arguments when the choice finishes.
  std::vector<nlohmann::ordered_json> add(const TokenEvent& event);
  // Chat streams open each choice with a chunk carrying the assistant role.
  nlohmann::ordered_json role_chunk(int32_t index) const;
  // The last chunk when stream_options.include_usage: no choices, the usage.
  nlohmann::ordered_json usage_chunk() const;
  // The whole non-streamed response.
  nlohmann::ordered_json response() const;
  nlohmann::ordered_json usage() const;
  int64_t completion_tokens() const;

 private:
  struct Choice {
    std::string text;
    int64_t tokens = 0;
    int64_t text_offset = 0;
    nlohmann::ordered_json logprobs;  // accumulated (non-streamed)
    std::string finish_reason;
    nlohmann::ordered_json stop_reason = nullptr;
    size_t streamed = 0;          // with tools: bytes of text sent as content
    bool call_opened = false;     // a named tool_choice: the call's first chunk is sent
    mutable std::vector<std::string> call_ids;  // made on first use, by a stream or the response
  };
  const std::string& call_id(const Choice& c, size_t i) const;
  nlohmann::ordered_json chunk_of(int32_t index, nlohmann::ordered_json delta, nlohmann::ordered_json logprobs) const;
  std::vector<nlohmann::ordered_json> add_with_tools(Choice& c, const TokenEvent& e, nlohmann::ordered_json lp);
  std::string finish_reason(const Choice& c, const toolcall::Answer& answer) const;
  nlohmann::ordered_json logprobs_of(const TokenEvent& e, int64_t text_offset) const;
  void merge_logprobs(nlohmann::ordered_json& into, const nlohmann::ordered_json& part) const;
  nlohmann::ordered_json envelope(const char* object) const;

  ApiKind kind_;
  toolcall::ToolRequest tools_;
  bool logprobs_;
  bool include_usage_;
  std::string id_, model_;
  int64_t created_;
  int64_t prompt_tokens_;
  int64_t cached_tokens_ = 0;  // of the prompt, from the prefix cache (usage.prompt_tokens_details)
  const Tokenizer& tokenizer_;
  std::vector<Choice> choices_;
};

// A tool call's id, as the model's format wants it ("call_" and 24 letters and digits; 9 for Mistral's).
std::string new_tool_call_id(const toolcall::ToolRequest& tools);

// {"error": {"message", "type", "param", "code"}}
nlohmann::ordered_json error_body(const std::string& message, const std::string& type, const std::string& param = {},
                                  int code = 0);

}  // namespace stem
