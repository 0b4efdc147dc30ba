// An HTTP request body as the server sees it: parse_json_body, then the request validation of
// each JSON route (completions, chat completions, tokenize, detokenize) against the default
// model's tokenizer and chat template, then the engine's own validate(). Refusals are ApiError /
// stem::Error; an accepted generation must fit the context and the caps.
#include <memory>

#include "engine/engine.h"
#include "server/request_parse.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The default model with a short context (validation needs its vocabulary, tokenizer, chat
// template and limits; random weights are a CUDA-only option).
struct Fixture {
  std::unique_ptr<stem::Engine> engine;
  stem::ServedModel model;

  Fixture() {
    stem::EngineOptions o;
    o.max_model_len = 256;
    o.max_num_seqs = 4;
    engine = std::make_unique<stem::Engine>(stem::fuzz::default_model_dir(), o);
    model = stem::ServedModel::of(*engine, "smol");
  }
};

const Fixture& fixture() {
  static const Fixture f;
  return f;
}

void check_generation(stem::ApiKind kind, const nlohmann::ordered_json& body) {
  const Fixture& f = fixture();
  stem::fuzz::expect_ok_or_error([&] {
    const stem::ParsedGeneration p = stem::parse_generation(kind, body, f.model);
    const stem::GenerateRequest& r = p.request;
    FUZZ_CHECK(!r.prompt.empty());
    FUZZ_CHECK(static_cast<int64_t>(r.prompt.size()) + r.stop.max_tokens <= f.engine->max_model_len());
    FUZZ_CHECK(r.stop.max_tokens >= 1);
    FUZZ_CHECK(r.n >= 1 && r.n <= f.engine->options().max_num_seqs);
    FUZZ_CHECK(p.top_logprobs >= 0 && p.top_logprobs <= 20);
    (void)f.engine->validate(r);  // the engine's checks (token ids in the vocabulary, sampling ranges)
  });
}

}  // namespace

// Loading the model takes seconds under ASan: before the first input, outside its time limit.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& f = fixture();
  nlohmann::ordered_json body;
  try {
    body = stem::parse_json_body(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const stem::ApiError&) {
    return 0;
  }
  check_generation(stem::ApiKind::Completion, body);
  check_generation(stem::ApiKind::Chat, body);
  stem::fuzz::expect_ok_or_error([&] {
    for (int32_t id : stem::parse_tokenize(body, f.model)) FUZZ_CHECK(id >= 0);
  });
  stem::fuzz::expect_ok_or_error([&] { (void)stem::parse_detokenize(body, f.model); });
  return 0;
}
