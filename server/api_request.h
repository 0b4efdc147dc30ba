// The API's requests, whichever front end they came through: the HTTP API (request_parse.cc, from
// JSON) and the gRPC API (grpc_convert.cc, from protobuf) each fill these from their own wire
// format, checking only its types and shapes, and these functions check what the fields mean
// (ranges, the context, the model, logprobs limits) and build the engine's GenerateRequest. So
// both APIs share one set of defaults, limits and messages. Errors are ApiErrors (400/404) naming
// the field as the front end calls it; gRPC maps them to INVALID_ARGUMENT / NOT_FOUND.
#pragma once
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "engine/engine.h"
#include "server/api_error.h"
#include "structured/token_mask.h"
#include "toolcall/tools.h"

namespace stem {

// Compiled grammars by what they were compiled from (the constraint's kind and text): requests
// with the same schema, regex, grammar, choices or forced tool call share one TokenGrammar, and
// with it its token masks, so a batch of such requests computes each mask once, not once a
// request. The kGrammars most recently used are kept; one still in use by a request lives on
// with it. Thread-safe (the HTTP and gRPC threads build requests at once).
class GrammarCache {
 public:
  // Each holds up to 2048 masks (token_mask.cc) of ceil(V/32) words: 39 MB at most for a
  // 152K-token vocabulary, so the cache's worst case is ~310 MB of host memory.
  static constexpr size_t kGrammars = 8;
  // The grammar cached under `key`, else make()'s (a compile error propagates, nothing cached).
  std::shared_ptr<structured::TokenGrammar> get(const std::string& key,
                                                const std::function<std::shared_ptr<structured::TokenGrammar>()>& make);
  size_t size() const;

 private:
  using Entry = std::pair<std::string, std::shared_ptr<structured::TokenGrammar>>;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

// The model as the API names it, and what requests are checked against.
struct ServedModel {
  std::string name;  // --served-model-name, else the model folder's name
  std::string path;  // the folder; also accepted as a model name
  const Engine* engine = nullptr;
  int64_t created = 0;  // Unix seconds when it was loaded: /v1/models' "created"
  // The tokenizer's tokens as bytes, for structured output; built by the first request that needs it.
  struct Vocab {
    std::once_flag once;
    std::shared_ptr<const structured::TokenVocab> vocab;
  };
  std::shared_ptr<Vocab> vocab = std::make_shared<Vocab>();
  std::shared_ptr<GrammarCache> grammars = std::make_shared<GrammarCache>();
  std::string tool_call_parser{};  // --tool-call-parser; empty: the chat template's format
  const structured::TokenVocab& token_vocab() const;
  std::shared_ptr<const structured::TokenVocab> token_vocab_ptr() const;
  bool matches(const std::string& model) const { return model == name || model == path; }
  // The engine's model under `served_name`, or under its folder's name when that is empty.
  static ServedModel of(const Engine& engine, const std::string& served_name);
};

enum class ApiKind { Completion, Chat };

// Chat messages, to be rendered with the model's chat template.
struct ChatPrompt {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // [{role, content: string}]
  nlohmann::ordered_json tools = nullptr;  // the template's `tools`: null, or the request's tool list
  bool add_generation_prompt = true;
  // chat_template_kwargs: more variables for the template (SmolLM3's enable_thinking, a date), as
  // transformers' apply_chat_template(**kwargs) takes them.
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
};
// Takes a request's chat_template_kwargs (`field` names them in errors): an object whose keys are
// not the request's own fields (messages, tools, add_generation_prompt). HTTP and gRPC alike.
void set_chat_template_kwargs(ChatPrompt& chat, const nlohmann::ordered_json& kwargs, const std::string& field);
// Text (tokenized with the tokenizer's special tokens), token ids, or chat messages.
using Prompt = std::variant<std::string, std::vector<int64_t>, ChatPrompt>;

// Structured output, from response_format, structured_outputs or guided_*: "text" (the default),
// "json_object" (any JSON object), "json_schema", "regex" (the whole text matches `pattern`),
// "choice" (the text is one of `choices`) or "grammar" (a GBNF grammar, in `pattern`).
struct ResponseFormat {
  std::string type = "text";
  nlohmann::ordered_json schema = true;  // json_schema (absent: any JSON value), in the sender's order
  std::string pattern;                   // regex, or the grammar's text
  std::vector<std::string> choices;      // choice
  std::string field = "response_format";  // the request field it came from: an error's param
  // How errors name the schema, pattern or choices ("response_format.json_schema.schema",
  // "structured_outputs.regex", "guided_choice").
  std::string value_field = "response_format.json_schema.schema";
};

// A generation request's fields, typed but not yet checked; unset optionals take the defaults.
struct GenerationFields {
  std::optional<std::string> model;  // empty or unset: the served one
  Prompt prompt;
  std::string prompt_field = "prompt";  // how the front end names the prompt in errors
  std::optional<int64_t> max_tokens;
  std::string max_tokens_field = "max_tokens";
  std::optional<int64_t> n;
  std::optional<double> temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
  std::optional<int64_t> top_k, seed;
  std::vector<std::string> stop;  // empty strings are dropped
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
  bool include_stop_str = false;
  bool logprobs = false;
  std::optional<int64_t> top_logprobs;           // alternatives per token, 0 to 20, needs logprobs
  std::string top_logprobs_field = "top_logprobs";
  std::optional<std::string> sparse_prefill;     // "stem" or "dense"; unset: the server's default
  std::optional<std::string> cache_salt;         // prefix-cache pages are shared only under the same salt
  ResponseFormat response_format;                // structured output (structured/)
  nlohmann::ordered_json tools = nullptr;        // chat: OpenAI's tool definitions, as sent
  nlohmann::ordered_json tool_choice = nullptr;  // null: "auto" with tools
  std::optional<bool> parallel_tool_calls;       // default true
  bool stream = false;
  bool include_usage = false;
};

// A checked generation request: the engine's request and how to answer it.
struct ParsedGeneration {
  ApiKind kind = ApiKind::Completion;  // Chat when the prompt is chat messages
  GenerateRequest request;             // prompt ids, sampling, stop conditions, n
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // report each token's logprob (and top_logprobs alternatives)
  int32_t top_logprobs = 0;
  toolcall::ToolRequest tools;  // chat: the tools' choice and the parser that reads the answer back
};

// The one place a generation request's fields are checked; what it returns the engine accepts.
ParsedGeneration build_generation(const GenerationFields& fields, const ServedModel& model);

// A 404 naming `model` unless it is unset, empty or the served model.
void check_model(const std::optional<std::string>& name, const ServedModel& model);

// Tokenize: text (with special tokens when add_special_tokens) or chat messages, as generation
// does; errors name `field`, the input as the front end calls it.
std::vector<int32_t> tokenize_prompt(const std::variant<std::string, ChatPrompt>& input, const std::string& field,
                                     bool add_special_tokens, const ServedModel& model);
// Detokenize: the ids, each checked against the vocabulary (errors name `field`).
std::vector<int32_t> checked_token_ids(const std::vector<int64_t>& ids, const std::string& field,
                                       const ServedModel& model);

}  // namespace stem
