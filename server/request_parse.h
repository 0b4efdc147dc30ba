// OpenAI-style JSON request bodies read into the API's request fields (server/api_request.h):
// here only the JSON's types and shapes are checked (a wrong type is an ApiError 400 naming the
// field); what the values mean is checked by api_request.cc, which the gRPC API shares. No HTTP
// types, so the fuzz targets can call it.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/api_request.h"

namespace stem {

// Deepest nesting of arrays and objects a request body may have.
constexpr int kMaxJsonDepth = 100;

// Parses the JSON text, keeping its objects' key order (a template renders tool arguments and
// schemas in the caller's order, as transformers does); throws ApiError (400) when it is not JSON, not an object, or nested
// deeper than kMaxJsonDepth.
nlohmann::ordered_json parse_json_body(const std::string& body);

// POST /v1/completions and /v1/chat/completions: the body's fields (types checked; the fields we
// do not serve refused), then build_generation.
GenerationFields generation_fields(ApiKind kind, const nlohmann::ordered_json& body);
ParsedGeneration parse_generation(ApiKind kind, const nlohmann::ordered_json& body, const ServedModel& model);

// POST /tokenize: {"prompt": str} or {"messages": [...]}, optional add_special_tokens.
std::vector<int32_t> parse_tokenize(const nlohmann::ordered_json& body, const ServedModel& model);
// POST /detokenize: {"tokens": [int]}.
std::vector<int32_t> parse_detokenize(const nlohmann::ordered_json& body, const ServedModel& model);

}  // namespace stem
