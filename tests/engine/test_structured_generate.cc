// Structured output through the engine on the default model: sampled answers under a JSON
// schema's mask parse and validate, batched with unconstrained sequences that it leaves alone.
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "structured/json_schema.h"
#include "tests/structured/schema_check.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

using namespace stem;
using nlohmann::json;

namespace {

Engine& engine() {
  static Engine e = [] {
    EngineOptions opts;
    opts.max_model_len = 512;
    return Engine(test::default_model_dir(), opts);
  }();
  return e;
}

bool have_model() { return std::filesystem::exists(test::default_model_dir() / "model.safetensors"); }

const json kSchema = json::parse(R"({"type": "object", "additionalProperties": false,
  "required": ["city", "country", "population"], "properties": {"city": {"type": "string"},
  "country": {"type": "string"}, "population": {"type": "integer"}, "tags": {"type": "array",
  "items": {"enum": ["capital", "port", "old"]}, "maxItems": 3}}})");

std::shared_ptr<structured::TokenGrammar> grammar(const json& schema) {
  static auto vocab = structured::TokenVocab::from_tokenizer(engine().tokenizer(), engine().config().vocab_size);
  return std::make_shared<structured::TokenGrammar>(structured::compile_json_schema(schema), vocab);
}

std::shared_ptr<structured::TokenGrammar> any_object() {
  static auto vocab = structured::TokenVocab::from_tokenizer(engine().tokenizer(), engine().config().vocab_size);
  return std::make_shared<structured::TokenGrammar>(structured::any_json_object(), vocab);
}

GenerateRequest request(const std::string& prompt) {
  GenerateRequest r;
  r.prompt = engine().tokenizer().encode(prompt, false);
  r.stop.max_tokens = 200;
  return r;
}

// A user message rendered with the model's chat template, as the chat API does.
GenerateRequest chat(const std::string& content) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  messages.push_back({{"role", "user"}, {"content", content}});
  GenerateRequest r;
  r.prompt = engine().tokenizer().encode(engine().apply_chat_template(messages, true), false);
  r.stop.max_tokens = 200;
  return r;
}

// Runs the requests together; returns each sequence's text and finish reason, in order.
std::vector<std::pair<std::string, FinishReason>> run_batch(const std::vector<GenerateRequest>& reqs) {
  std::vector<std::pair<std::string, FinishReason>> out;
  std::vector<size_t> first;
  for (const GenerateRequest& r : reqs) {
    first.push_back(out.size());
    out.resize(out.size() + static_cast<size_t>(r.n));
  }
  int unfinished = static_cast<int>(out.size());
  for (size_t i = 0; i < reqs.size(); ++i)
    engine().add_request(engine().validate(reqs[i]), [&, base = first[i]](const TokenEvent& e) {
      auto& [text, finish] = out[base + static_cast<size_t>(e.index)];
      text += e.text;
      if (e.finished) {
        finish = e.finish;
        --unfinished;
      }
    });
  while (unfinished > 0) engine().step();
  return out;
}

}  // namespace

TEST_CASE("sampled answers under a schema's mask are JSON that the schema accepts") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  GenerateRequest r = chat("Describe Paris as JSON.");
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 11;
  r.sampling.grammar = grammar(kSchema);
  r.n = 6;
  int complete = 0;
  for (const auto& [text, finish] : run_batch({r})) {
    INFO(text);
    if (finish != FinishReason::Stop) continue;  // max_tokens inside a long string
    ++complete;
    json value;
    REQUIRE_NOTHROW(value = json::parse(text));
    CHECK(test::schema_accepts(value, kSchema));
  }
  CHECK(complete >= 4);
}

TEST_CASE("a greedy answer under json_object is an object") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  GenerateRequest obj = chat("Describe a cat as a short JSON object with name and age.");
  obj.sampling.temperature = 0;
  obj.sampling.grammar = any_object();
  const GenerateResult r = engine().generate(obj);
  INFO(r.text);
  REQUIRE(r.finish == FinishReason::Stop);
  CHECK(json::parse(r.text).is_object());
}

TEST_CASE("constrained rows leave the unconstrained rows of their batch unchanged") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  GenerateRequest plain = request("The capital of France is");
  plain.sampling.temperature = 0;
  plain.stop.max_tokens = 24;
  plain.stop.ignore_eos = true;
  // The same neighbour with and without a grammar, the same length either way (ignore_eos), so
  // both batches have the same shapes at every step: the plain row's tokens must match exactly.
  GenerateRequest neighbour = chat("A JSON object, please.");
  neighbour.sampling.temperature = 0.7f;
  neighbour.sampling.seed = 3;
  neighbour.stop = plain.stop;
  const auto free_run = run_batch({plain, neighbour});
  neighbour.sampling.grammar = any_object();
  const auto constrained = run_batch({plain, neighbour});
  CHECK(free_run[0].first == constrained[0].first);
  CHECK(free_run[1].first != constrained[1].first);
}
