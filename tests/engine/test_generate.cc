// Generation on the default model: stop strings, stop token ids, max_tokens, seeded sampling,
// logprobs, and streamed text that is always whole UTF-8.
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {

Engine& engine() {
  static Engine e = [] {
    EngineOptions opts;
    opts.max_model_len = 512;
    return Engine(stem::test::default_model_dir(), opts);
  }();
  return e;
}

bool have_model() { return fs::exists(stem::test::default_model_dir() / "model.safetensors"); }

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();  // throws on invalid UTF-8
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

GenerateRequest greedy(const std::string& prompt, int32_t max_tokens) {
  GenerateRequest r;
  r.prompt = engine().tokenizer().encode(prompt, false);
  r.sampling.temperature = 0;
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  return r;
}

}  // namespace

TEST_CASE("stop strings, stop token ids and max_tokens end generation") {
  if (!have_model()) SKIP("default model not prepared at " << stem::test::default_model_dir());
  // transformers' greedy continuation of this prompt starts " Paris.\n\nThe answer is".
  GenerateRequest r = greedy("The capital of France is", 12);
  GenerateResult full = engine().generate(r);
  REQUIRE(full.text.rfind(" Paris.\n\n", 0) == 0);
  CHECK(full.finish == FinishReason::Length);
  CHECK(full.tokens.size() == 12);

  r.stop.stop = {"\n\n"};
  GenerateResult cut = engine().generate(r);
  CHECK(cut.text == " Paris.");
  CHECK(cut.finish == FinishReason::Stop);
  CHECK(cut.stop_reason == "\n\n");

  r.stop.stop = {"\n\n"};
  r.stop.include_stop_str = true;
  CHECK(engine().generate(r).text == " Paris.\n\n");

  r.stop = {};
  r.stop.max_tokens = 12;
  r.stop.stop_token_ids = engine().tokenizer().encode(".", false);
  GenerateResult tok = engine().generate(r);
  CHECK(tok.text == " Paris");
  CHECK(tok.finish == FinishReason::Stop);

  r.stop = {};
  r.stop.max_tokens = 2;
  CHECK(engine().generate(r).tokens.size() == 2);
}

TEST_CASE("the same seed gives the same sampled text; streamed pieces are whole UTF-8") {
  if (!have_model()) SKIP("default model not prepared at " << stem::test::default_model_dir());
  GenerateRequest r;
  r.prompt = engine().tokenizer().encode("Écris une phrase en français avec des émojis 🎉 et du 日本語:", false);
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 0.95f;
  r.sampling.seed = 7;
  r.stop.max_tokens = 24;
  std::string streamed;
  GenerateResult a = engine().generate(r, [&](const TokenEvent& e) {
    CHECK(valid_utf8(e.text));
    streamed += e.text;
  });
  GenerateResult b = engine().generate(r);
  CHECK(a.tokens == b.tokens);
  CHECK(a.text == streamed);
  CHECK(a.text == engine().tokenizer().decode(std::span(a.tokens.data(), a.tokens.size() - (a.finish == FinishReason::Stop)), true));
  r.sampling.seed = 8;
  CHECK(engine().generate(r).tokens != a.tokens);
}

TEST_CASE("top logprobs come with every token") {
  if (!have_model()) SKIP("default model not prepared at " << stem::test::default_model_dir());
  GenerateRequest r = greedy("The capital of France is", 4);
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 3;
  GenerateResult g = engine().generate(r);
  REQUIRE(g.samples.size() == 4);
  for (const auto& s : g.samples) {
    REQUIRE(s.top.size() == 3);
    CHECK(s.top[0].id == s.token);  // greedy picks the most likely token
    CHECK(s.logprob == Approx(s.top[0].logprob));
    CHECK(s.logprob <= 0.0f);
    CHECK(s.top[1].logprob <= s.top[0].logprob);
  }
}

TEST_CASE("a prompt as long as the context is refused with the lengths") {
  if (!have_model()) SKIP("default model not prepared at " << stem::test::default_model_dir());
  GenerateRequest r;
  r.prompt.assign(512, 100);
  CHECK_THAT(stem::test::error_of([&] { engine().generate(r); }),
             Catch::Matchers::Contains("the prompt has 512 tokens; the model's context is 512 tokens"));
}

TEST_CASE("tokens per step left at 0 take the device's default") {
  CHECK(default_max_num_batched_tokens("cpu") == 512);
  CHECK(default_max_num_batched_tokens("cuda") == 8192);
  if (!have_model()) SKIP("default model not prepared at " << stem::test::default_model_dir());
  CHECK(engine().options().max_num_batched_tokens == 512);  // EngineOptions{} on the CPU
}
