// OpenAI-style JSON request bodies turned into engine requests, with every field checked: a
// wrong type, a value out of range, an unknown model or a prompt that does not fit the context
// is an ApiError (400/404) naming the field. No HTTP types: a gRPC front end can reuse it.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "server/api_error.h"

namespace stem {

// The model as the API names it, and what requests are checked against.
struct ServedModel {
  std::string name;  // --served-model-name, else the model folder's name
  std::string path;  // the folder; also accepted as a model name
  const Engine* engine = nullptr;
  bool matches(const std::string& model) const { return model == name || model == path; }
  // The engine's model under `served_name`, or under its folder's name when that is empty.
  static ServedModel of(const Engine& engine, const std::string& served_name);
};

enum class ApiKind { Completion, Chat };

struct ParsedGeneration {
  ApiKind kind = ApiKind::Completion;
  GenerateRequest request;  // prompt ids, sampling, stop conditions, n
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // report each token's logprob (and top_logprobs alternatives)
  int32_t top_logprobs = 0;
};

// Deepest nesting of arrays and objects a request body may have.
constexpr int kMaxJsonDepth = 100;

// Parses the JSON text; throws ApiError (400) when it is not JSON, not an object, or nested
// deeper than kMaxJsonDepth.
nlohmann::json parse_json_body(const std::string& body);

// POST /v1/completions and /v1/chat/completions.
ParsedGeneration parse_generation(ApiKind kind, const nlohmann::json& body, const ServedModel& model);

// POST /tokenize: {"prompt": str} or {"messages": [...]}, optional add_special_tokens.
std::vector<int32_t> parse_tokenize(const nlohmann::json& body, const ServedModel& model);
// POST /detokenize: {"tokens": [int]}.
std::vector<int32_t> parse_detokenize(const nlohmann::json& body, const ServedModel& model);

}  // namespace stem
