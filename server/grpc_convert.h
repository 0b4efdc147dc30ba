// stemserve.v1 protobuf messages to and from the engine's types. A request's fields are read into
// the API's request fields (server/api_request.h) and checked there, as the HTTP API's are, so
// both APIs share one set of defaults, limits and messages; no JSON on the way. Errors are
// ApiErrors naming the field as the proto calls it ("text", "token_ids", "chat.messages",
// "max_tokens", "top_logprobs", ...); status_of() turns them into gRPC codes.
#pragma once
#include <string>
#include <vector>

#include "engine/request.h"
#include "server/api_request.h"
#include "stemserve/v1/stemserve.pb.h"

namespace stem {

class Tokenizer;

// Generate: text or token ids as /v1/completions, chat messages as /v1/chat/completions.
GenerationFields generation_fields(const stemserve::v1::GenerateRequest& request);
ParsedGeneration parse_grpc_generate(const stemserve::v1::GenerateRequest& request, const ServedModel& model);
std::vector<int32_t> parse_grpc_tokenize(const stemserve::v1::TokenizeRequest& request, const ServedModel& model);
std::vector<int32_t> parse_grpc_detokenize(const stemserve::v1::DetokenizeRequest& request, const ServedModel& model);
stemserve::v1::ModelInfoResponse model_info(const ServedModel& model);

// A chat sequence's text under tools: all of it, and how much was sent.
struct ToolText {
  std::string text;
  size_t streamed = 0;
};

// Adds one engine event of a sequence to `into` (a message of that sequence not yet sent):
// its token, text and logprobs, and when it is the last, the finish reason and usage. With
// tools (a chat request whose tool_choice is not "none"; `held` is the sequence's text so far),
// the text that may start a tool call is held back and the calls are read from the whole text at
// the end, as the HTTP API does: the last message has the rest of the content and `tool_calls`.
void add_event(const TokenEvent& event, bool logprobs, const Tokenizer& tokenizer,
               stemserve::v1::GenerateResponse& into, const toolcall::ToolRequest* tools = nullptr,
               ToolText* held = nullptr);

}  // namespace stem
