// Helpers of the engine's prefix-cache tests (test_prefix_cache.cc, test_prefix_cache_stem.cc):
// the tiny llama-gqa fixture with the cache on or off, requests run to the end, and outputs
// compared within rounding (tests/rounding.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "engine/engine.h"
#include "tests/engine/tiny_model.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

namespace stem::prefix_cache_test {

inline EngineOptions tiny_options(bool caching) {
  EngineOptions o;
  o.load_tokenizer = false;
  o.max_model_len = 2048;
  o.enable_prefix_caching = caching;
  o.sparse_prefill = SparsePrefill::Dense;
  // Stem, for the requests that ask: as tests/engine/test_stem_engine.cc (k_s = a quarter of the blocks).
  o.stem.min_prompt_len = 1024;
  o.stem.budget_rate = 0.25;
  o.stem.sink_blocks = 1;
  o.stem.window_blocks = 2;
  o.stem.dense_layers = 1;
  return o;
}

inline std::unique_ptr<Engine> tiny(const EngineOptions& o) {
  return std::make_unique<Engine>(test::tiny_model_2k().path(), o);
}

inline std::unique_ptr<Engine> tiny(bool caching, int64_t batch_tokens = 2048, int64_t kv_tokens = 0) {
  EngineOptions o = tiny_options(caching);
  o.max_num_batched_tokens = batch_tokens;
  o.kv_cache_tokens = kv_tokens;
  return tiny(o);
}

inline std::vector<int32_t> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(3 + rng() % 250);
  return t;
}

inline std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Run {
  GenerateResult result;
  int64_t cached_tokens = -1;  // as the last event says
  int64_t sparse_blocks = 0;   // summed over the steps (only meaningful for one request)
  int64_t skipped_key_blocks = 0;
  FinishReason finish = FinishReason::Length;
};

// Adds requests at once and steps until all finish.
inline std::vector<Run> run_all(Engine& e, const std::vector<GenerateRequest>& reqs) {
  std::vector<Run> out(reqs.size());
  size_t done = 0;
  for (size_t i = 0; i < reqs.size(); ++i)
    e.add_request(reqs[i], [&, i](const TokenEvent& ev) {
      if (ev.token >= 0) {
        out[i].result.tokens.push_back(ev.token);
        out[i].result.samples.push_back(ev.sample);
      }
      if (ev.finished) {
        out[i].cached_tokens = ev.cached_tokens;
        out[i].finish = ev.finish;
        ++done;
      }
    });
  while (done < reqs.size()) {
    const StepStats s = e.step();
    for (Run& r : out) {
      r.sparse_blocks += s.stem.sparse_blocks;
      r.skipped_key_blocks += s.stem.skipped_key_blocks;
    }
  }
  return out;
}

inline Run run(Engine& e, const GenerateRequest& r) { return run_all(e, {r})[0]; }

// The tiny model: 3 layers; the longest reduction is over at most 2048 keys.
inline const double kTol = test::rounding_tolerance(3, 2048);

inline void check_same(const Run& got, const Run& ref) {
  const size_t n = test::check_same_greedy(ref.result.tokens, ref.result.samples, got.result.tokens, kTol);
  REQUIRE(got.result.samples.size() >= n);
  for (size_t i = 0; i < n; ++i) {
    const float lp = ref.result.samples[i].logprob;
    CHECK(std::abs(got.result.samples[i].logprob - lp) <= kTol * std::max(1.f, std::abs(lp)));
  }
}

// Every page is back: none held, the cached ones all evictable.
inline void check_all_released(const Engine& e) {
  const EngineCounters c = e.counters();
  CHECK(c.used_pages == 0);
  CHECK(c.num_running == 0);
  CHECK(c.num_waiting == 0);
  CHECK(c.cached_pages <= c.total_pages);
}

}  // namespace stem::prefix_cache_test
