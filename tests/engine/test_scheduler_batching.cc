// The scheduler driving the default model: several prompts of different lengths generated in one
// batch give the same greedy tokens as each alone (within rounding: tests/rounding.h), also when
// prefill is chunked and when pages run out and sequences are preempted and recomputed; a
// cancelled request frees its pages.
#include <memory>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {

const char* kPrompts[] = {
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old",
    "1, 2, 3, 4,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Water boils at a temperature of",
};
constexpr int kMaxTokens = 10;

GenerateRequest greedy(const Engine& e, const char* text) {
  GenerateRequest r;
  r.prompt = e.tokenizer().encode(text, true);
  r.sampling.temperature = 0;
  r.stop.max_tokens = kMaxTokens;
  r.stop.ignore_eos = true;
  return r;
}

// All prompts at once through add_request/step; the tokens of each, in prompt order.
std::vector<std::vector<int32_t>> run_batched(Engine& e, int64_t* max_batch = nullptr) {
  const size_t n = std::size(kPrompts);
  std::vector<std::vector<int32_t>> out(n);
  size_t done = 0;
  for (size_t i = 0; i < n; ++i)
    e.add_request(greedy(e, kPrompts[i]), [&, i](const TokenEvent& ev) {
      if (ev.token >= 0) out[i].push_back(ev.token);
      done += ev.finished;
    });
  while (done < n) {
    StepStats s = e.step();
    if (max_batch) *max_batch = std::max(*max_batch, s.num_seqs);
  }
  return out;
}

// Each prompt's greedy tokens in a batch against `alone` (with top-2 log-probabilities).
void check_same_as_alone(const Engine& e, const std::vector<std::vector<int32_t>>& batched,
                         const std::vector<GenerateResult>& alone) {
  REQUIRE(batched.size() == alone.size());
  const double tol = test::rounding_tolerance(e.config(), 256);
  for (size_t i = 0; i < alone.size(); ++i) {
    INFO("prompt " << i);
    test::check_same_greedy(alone[i].tokens, alone[i].samples, batched[i], tol);
  }
}

std::unique_ptr<Engine> load(int64_t kv_tokens, int64_t batch_tokens) {
  EngineOptions o;
  o.max_model_len = 256;
  o.kv_cache_tokens = kv_tokens;
  o.max_num_batched_tokens = batch_tokens;
  return std::make_unique<Engine>(test::default_model_dir(), o);
}

}  // namespace

TEST_CASE("batching: greedy tokens in a batch equal each prompt alone (chunked prefill, preemption)") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(0, 512);
  std::vector<GenerateResult> alone;
  for (const char* p : kPrompts) {
    GenerateRequest r = greedy(*engine, p);
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = 2;
    alone.push_back(engine->generate(r));
  }
  for (const auto& a : alone) REQUIRE(a.tokens.size() == static_cast<size_t>(kMaxTokens));

  SECTION("one batch, whole prompts") {
    int64_t max_batch = 0;
    check_same_as_alone(*engine, run_batched(*engine, &max_batch), alone);
    CHECK(max_batch == static_cast<int64_t>(std::size(kPrompts)));
    CHECK(engine->counters().used_pages == 0);
  }
  SECTION("prefill in chunks of 8 tokens mixed with decode rows") {
    auto small = load(0, 8);
    check_same_as_alone(*small, run_batched(*small), alone);
  }
  SECTION("a KV cache of 96 tokens: sequences are preempted and recomputed") {
    // 6 pages of 16: the five sequences (up to 34 tokens each) cannot all stay resident.
    auto tight = load(96, 512);
    check_same_as_alone(*tight, run_batched(*tight), alone);
    CHECK(tight->counters().preemptions > 0);
    CHECK(tight->counters().used_pages == 0);
  }
}

TEST_CASE("batching: a cancelled request ends with 'cancelled' and frees its pages at the next step") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(0, 512);
  GenerateRequest a = greedy(*engine, kPrompts[1]), b = greedy(*engine, kPrompts[0]);
  a.stop.max_tokens = 200;
  a.cancelled = std::make_shared<std::atomic<bool>>(false);
  std::optional<FinishReason> fa, fb;
  engine->add_request(a, [&](const TokenEvent& e) { if (e.finished) fa = e.finish; });
  engine->add_request(b, [&](const TokenEvent& e) { if (e.finished) fb = e.finish; });
  for (int i = 0; i < 3; ++i) engine->step();
  CHECK(engine->counters().used_pages > 0);
  a.cancelled->store(true);
  engine->step();
  REQUIRE(fa);
  CHECK(*fa == FinishReason::Cancelled);
  while (engine->has_work()) engine->step();
  CHECK(fb == FinishReason::Length);
  CHECK(engine->counters().used_pages == 0);
}

TEST_CASE("batching: n sequences with a seed differ from each other and repeat across runs") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(0, 512);
  auto run = [&] {
    GenerateRequest r = greedy(*engine, "My three favourite words are");
    r.sampling.temperature = 1.5f;
    r.sampling.seed = 1234;
    r.n = 3;
    r.stop.max_tokens = 6;
    std::vector<std::vector<int32_t>> out(3);
    int done = 0;
    engine->add_request(r, [&](const TokenEvent& e) {
      if (e.token >= 0) out[e.index].push_back(e.token);
      done += e.finished;
    });
    while (done < 3) engine->step();
    return out;
  };
  auto first = run();
  CHECK(first == run());
  CHECK((first[0] != first[1] || first[1] != first[2]));
}
