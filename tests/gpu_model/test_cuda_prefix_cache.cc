// Prefix caching on the CUDA backend (docs/prefix_caching.md): an engine with the cache against
// one without, on a random model (head_dim 128, GQA 4/2, 4 layers) and a 4000-token prompt
// prefilled in chunks of 1024, dense and Stem (min_prompt_len 1024, budget_rate 0.25: k_s = 8 of
// 32 blocks, so a Stem prefill shares its first 1024 tokens only). The pages taken from the cache
// are read through the page table as a later chunk of a chunked prefill reads its earlier ones.
// Checked: the cached tokens each run reports, and greedy tokens and log-probabilities against
// the uncached engine within bf16 rounding (as test_cuda_vs_cpu: 2e-2). Under the causal schedule
// (--stem-schedule causal) a Stem prefill's whole blocks are cached too, and a hit restarts the
// prefill on a block boundary.
#include "engine/engine.h"
#include "tests/gpu_model/gpu_model_util.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
using namespace stem::gpu_model_test;

namespace {

constexpr double kTolerance = 2e-2;

struct Run {
  std::vector<int32_t> tokens;
  std::vector<SampleResult> samples;
  int64_t cached_tokens = -1;
};

Run run(Engine& e, const std::vector<int32_t>& prompt, SparsePrefill mode) {
  GenerateRequest r;
  r.prompt = prompt;
  r.sampling.temperature = 0;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 2;
  r.stop.max_tokens = 8;
  r.stop.ignore_eos = true;
  r.sparse_prefill = mode;
  Run out;
  bool done = false;
  e.add_request(r, [&](const TokenEvent& ev) {
    if (ev.token >= 0) {
      out.tokens.push_back(ev.token);
      out.samples.push_back(ev.sample);
    }
    if (ev.finished) out.cached_tokens = ev.cached_tokens, done = true;
  });
  while (!done) {
    const StepStats s = e.step();
    // Every step that ran a forward pass reports its device time (bench_prefix_cache's split).
    if (s.num_tokens > 0) CHECK(s.device_ms > 0);
  }
  return out;
}

void check_same(const Run& got, const Run& ref) {
  const size_t n = test::check_same_greedy(ref.tokens, ref.samples, got.tokens, kTolerance);
  for (size_t i = 0; i < n; ++i) {
    const float lp = ref.samples[i].logprob;
    CHECK(std::abs(got.samples[i].logprob - lp) <= kTolerance * std::max(1.f, std::abs(lp)));
  }
}

}  // namespace

// The random model (head_dim 128, GQA 4/2, 4 layers) with room for 8K positions.
ModelConfig write_model(const std::filesystem::path& dir, uint64_t seed) {
  nlohmann::json cfg = llama_config(512, 4, 2, 128, 4);
  cfg["max_position_embeddings"] = 8192;
  return write_random_model(dir, cfg, seed);
}

EngineOptions cuda_options() {
  EngineOptions o;
  o.device = "cuda";
  o.load_tokenizer = false;
  o.kv_cache_tokens = 16384;
  o.max_num_batched_tokens = 1024;
  o.stem.min_prompt_len = 1024;
  o.stem.budget_rate = 0.25;
  return o;
}

TEST_CASE("cuda prefix cache: hits give the uncached tokens, dense and Stem") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  const ModelConfig c = write_model(tmp.path(), 71);
  EngineOptions o = cuda_options();
  Engine cached(tmp.path(), o);
  o.enable_prefix_caching = false;
  Engine plain(tmp.path(), o);

  std::mt19937_64 rng(72);
  const std::vector<int32_t> prompt = random_tokens(rng, 4000, c.vocab_size);
  const Run stem_ref = run(plain, prompt, SparsePrefill::Stem), dense_ref = run(plain, prompt, SparsePrefill::Dense);

  const Run stem1 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem1.cached_tokens == 0);
  CHECK(cached.counters().cached_pages == 1024 / 16);
  const Run stem2 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem2.cached_tokens == 1024);
  const Run dense1 = run(cached, prompt, SparsePrefill::Dense);
  CHECK(dense1.cached_tokens == 1024);
  const Run dense2 = run(cached, prompt, SparsePrefill::Dense);
  CHECK(dense2.cached_tokens == 3984);
  const Run stem3 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem3.cached_tokens == 1024);
  for (const Run* r : {&stem1, &stem2, &stem3}) check_same(*r, stem_ref);
  for (const Run* r : {&dense1, &dense2}) check_same(*r, dense_ref);
  CHECK(cached.counters().used_pages == 0);
}

TEST_CASE("cuda prefix cache: the causal Stem schedule caches whole blocks; hits restart on a block boundary") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  const ModelConfig c = write_model(tmp.path(), 73);
  EngineOptions o = cuda_options();
  o.stem.causal = true;
  Engine cached(tmp.path(), o);
  o.enable_prefix_caching = false;
  Engine plain(tmp.path(), o);

  std::mt19937_64 rng(74);
  const std::vector<int32_t> prompt = random_tokens(rng, 4000, c.vocab_size);  // 31 whole blocks: 3968 tokens
  std::vector<int32_t> question(prompt.begin(), prompt.begin() + 2500);          // leaves it inside block 19
  const std::vector<int32_t> tail = random_tokens(rng, 700, c.vocab_size);
  question.insert(question.end(), tail.begin(), tail.end());
  const Run stem_ref = run(plain, prompt, SparsePrefill::Stem), dense_ref = run(plain, prompt, SparsePrefill::Dense);
  const Run question_ref = run(plain, question, SparsePrefill::Stem);

  const Run stem1 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem1.cached_tokens == 0);
  CHECK(cached.counters().cached_pages == 3968 / 16);
  const Run stem2 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem2.cached_tokens == 3968);
  const Run q = run(cached, question, SparsePrefill::Stem);
  CHECK(q.cached_tokens == 19 * 128);  // of the 156 pages shared, blocks 0-18
  // Stem's pages are their own kind: a dense request of the same tokens takes none.
  const Run dense1 = run(cached, prompt, SparsePrefill::Dense);
  CHECK(dense1.cached_tokens == 0);
  const Run stem3 = run(cached, prompt, SparsePrefill::Stem);
  CHECK(stem3.cached_tokens == 3968);
  for (const Run* r : {&stem1, &stem2, &stem3}) check_same(*r, stem_ref);
  check_same(q, question_ref);
  check_same(dense1, dense_ref);
  CHECK(cached.counters().used_pages == 0);
}
