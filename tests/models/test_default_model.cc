// The default model (SmolLM2-135M-Instruct, as models/prepare/ converts it): greedy
// continuations equal transformers' on the same weights, and our tokenizer and chat template
// produce the same prompt ids as the Python reference did.
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {
// Below this top-two margin fp32 summation order may legitimately flip the argmax.
constexpr double kNearTie = 1e-3;
}

TEST_CASE("default model: greedy continuations equal transformers'") {
  const fs::path model = stem::test::default_model_dir();
  if (!fs::exists(model / "model.safetensors")) {
    SKIP("default model not prepared at " << model << " (run models/prepare/prepare_default_model.sh)");
  }
  std::ifstream in(fs::path(stem::test::fixtures_dir()) / "default_model_greedy.json");
  const auto ref = nlohmann::json::parse(in);
  EngineOptions opts;
  opts.max_model_len = 512;
  Engine engine(model, opts);
  for (const auto& c : ref["cases"]) {
    const std::string name = c["name"];
    INFO("case " << name);
    const auto prompt_ids = c["prompt_ids"].get<std::vector<int32_t>>();
    std::string prompt = c["prompt"];
    if (c["kind"] == "chat") CHECK(engine.apply_chat_template(nlohmann::ordered_json(c["messages"]), true) == prompt);
    CHECK(engine.tokenizer().encode(prompt, false) == prompt_ids);

    GenerateRequest req;
    req.prompt = prompt_ids;
    req.sampling.temperature = 0;
    req.stop.ignore_eos = true;
    const auto want = c["generated_ids"].get<std::vector<int32_t>>();
    const auto margins = c["top2_margins"].get<std::vector<double>>();
    req.stop.max_tokens = static_cast<int32_t>(want.size());
    GenerateResult r = engine.generate(req);
    REQUIRE(r.tokens.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      if (r.tokens[i] != want[i]) {
        INFO("first difference at step " << i << ", reference margin " << margins[i]);
        CHECK(margins[i] < kNearTie);
        break;
      }
    }
  }
}

TEST_CASE("default model: the chat answer names Paris and stops at <|im_end|>") {
  const fs::path model = stem::test::default_model_dir();
  if (!fs::exists(model / "model.safetensors")) SKIP("default model not prepared at " << model);
  EngineOptions opts;
  opts.max_model_len = 512;
  Engine engine(model, opts);
  const std::string prompt =
      engine.apply_chat_template(nlohmann::ordered_json::parse(R"([{"role":"user","content":"What is the capital of France?"}])"),
                                  true);
  GenerateRequest req;
  req.prompt = engine.tokenizer().encode(prompt, false);
  req.sampling.temperature = 0;
  req.stop.max_tokens = 64;
  std::string streamed;
  GenerateResult r = engine.generate(req, [&](const TokenEvent& e) { streamed += e.text; });
  CHECK(r.finish == FinishReason::Stop);
  CHECK(streamed == r.text);
  CHECK(r.text.find("Paris") != std::string::npos);
}
