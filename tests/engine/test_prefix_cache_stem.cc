// Prefix caching with Stem (docs/prefix_caching.md, "Stem: what a cache hit does"), on the tiny
// llama-gqa fixture (pages of 16 tokens, Stem blocks of 128, min_prompt_len 1024). Under a causal
// selection (causal top-k and adaptive, threshold, none) a sparse prefill's whole blocks are
// cached under a seed of their own and a hit is cut back to a block boundary: a prompt prefilled
// fresh, in chunks, or on top of a cached prefix (also one that diverges mid-block) gives the
// uncached tokens and log-probabilities (within rounding, tests/rounding.h). Under the paper's
// schedule only the leading blocks it keeps dense are shared, with dense requests too.
#include <functional>
#include <string>

#include "engine/page_hash.h"
#include "tests/engine/prefix_cache_util.h"

using namespace stem;
using namespace stem::prefix_cache_test;
using stem::test::greedy;

namespace {

// The causal variants the tests run: causal top-k, causal adaptive, threshold, none.
EngineOptions causal_options(int variant, bool caching, int64_t batch_tokens = 2048, int64_t kv_tokens = 4096) {
  EngineOptions o = tiny_options(caching);
  o.max_num_batched_tokens = batch_tokens;
  o.kv_cache_tokens = kv_tokens;
  StemSettings& st = o.stem;
  st.causal = variant <= 1;
  if (variant == 1) st.selector = StemSelector::Adaptive, st.threshold = 0.5;
  if (variant == 2) st.selector = StemSelector::Threshold, st.threshold = 0.5;
  if (variant == 3) st.selector = StemSelector::None;
  REQUIRE(stem_selection_causal(st));
  return o;
}

GenerateRequest stem_request(std::vector<int32_t> prompt, int32_t max_tokens = 4) {
  return greedy(std::move(prompt), max_tokens, SparsePrefill::Stem);
}

}  // namespace

TEST_CASE("prefix cache, causal Stem: whole blocks are cached, hits restart on a block boundary") {
  const int variant = GENERATE(0, 1, 2, 3);
  INFO("variant " << variant);
  auto cached = tiny(causal_options(variant, true)), plain = tiny(causal_options(variant, false));
  const std::vector<int32_t> doc = random_tokens(1500, 60);  // 11 whole blocks: 1408 tokens, 88 pages

  const Run ref = run(*plain, stem_request(doc));
  REQUIRE(ref.skipped_key_blocks > 0);  // the selection really drops key blocks
  // In chunks (200 tokens a step, cut back to 128s): the same output, with the cache and without.
  check_same(run(*tiny(causal_options(variant, false, 200)), stem_request(doc)), ref);
  auto chunked = tiny(causal_options(variant, true, 200));
  check_same(run(*chunked, stem_request(doc)), ref);
  CHECK(chunked->counters().cached_pages == 88);
  const Run chunked_hit = run(*chunked, stem_request(doc));
  CHECK(chunked_hit.cached_tokens == 1408);
  check_same(chunked_hit, ref);

  const Run s1 = run(*cached, stem_request(doc));
  CHECK(s1.cached_tokens == 0);
  CHECK(cached->counters().cached_pages == 88);  // not the partial last block, nor decoded tokens
  const Run s2 = run(*cached, stem_request(doc));
  CHECK(s2.cached_tokens == 1408);
  CHECK(cached->counters().prefix_cache_hits == 1408);

  // A prompt that leaves the document inside block 7 (at token 1000): of the 62 pages they share,
  // the 56 of blocks 0-6.
  const std::vector<int32_t> question = concat({doc.begin(), doc.begin() + 1000}, random_tokens(300, 61));
  const Run q = run(*cached, stem_request(question));
  CHECK(q.cached_tokens == 896);
  check_same(q, run(*plain, stem_request(question)));

  // The next turn: the document's whole blocks (the answer's pages were computed by decode steps).
  const std::vector<int32_t> turn = concat(concat(doc, s1.result.tokens), random_tokens(30, 62));
  const Run t = run(*cached, stem_request(turn));
  CHECK(t.cached_tokens == 1408);
  check_same(t, run(*plain, stem_request(turn)));

  // Dense requests of the same tokens neither take Stem's pages nor give theirs.
  const Run dense_ref = run(*plain, greedy(doc, 4, SparsePrefill::Dense));
  const Run d1 = run(*cached, greedy(doc, 4, SparsePrefill::Dense));
  CHECK(d1.cached_tokens == 0);
  const Run d2 = run(*cached, greedy(doc, 4, SparsePrefill::Dense));
  CHECK(d2.cached_tokens == 1488);
  const Run s3 = run(*cached, stem_request(doc));
  CHECK(s3.cached_tokens == 1408);

  for (const Run* r : {&s1, &s2, &s3}) check_same(*r, ref);
  for (const Run* r : {&d1, &d2}) check_same(*r, dense_ref);
  check_all_released(*cached);
}

TEST_CASE("prefix cache, causal Stem: a chunk cut inside a block publishes nothing from that block on") {
  // 300 tokens a step, two prompts at once: A's chunks end on 128s (256 tokens), B gets the 44
  // left, which cut its blocks (computed densely, docs/stem.md): B's pages are not a Stem
  // prefill's, so none is published; A's whole blocks are.
  const std::vector<GenerateRequest> reqs = {stem_request(random_tokens(1500, 70)), stem_request(random_tokens(1500, 71))};
  auto cached = tiny(causal_options(0, true, 300));
  const std::vector<Run> got = run_all(*cached, reqs);
  const std::vector<Run> ref = run_all(*tiny(causal_options(0, false, 300)), reqs);
  for (size_t i = 0; i < reqs.size(); ++i) check_same(got[i], ref[i]);
  CHECK(cached->counters().cached_pages == 88);
  CHECK(run(*cached, reqs[0]).cached_tokens == 1408);
  CHECK(run(*cached, reqs[1]).cached_tokens == 0);  // alone, its chunks are whole blocks: now published
  CHECK(run(*cached, reqs[1]).cached_tokens == 1408);
  check_all_released(*cached);
}

TEST_CASE("prefix cache, causal Stem: a preempted sequence takes its own whole blocks back") {
  // 138 pages of 16 hold the two 1100-token prompts (69 pages each). When A (older) needs a 70th
  // page, B is preempted; its 8 whole blocks stay cached (64 pages) and A's growth takes only free
  // pages. B's recompute (a Stem prefill of its prompt and the tokens it had generated) waits for
  // A, then takes those 64 pages and computes the rest from block 8 on.
  const std::vector<GenerateRequest> reqs = {stem_request(random_tokens(1100, 80), 40),
                                             stem_request(random_tokens(1100, 81), 10)};
  auto cached = tiny(causal_options(0, true, 2048, 2208));
  const std::vector<Run> got = run_all(*cached, reqs);
  const std::vector<Run> ref = run_all(*tiny(causal_options(0, false, 2048, 2208)), reqs);  // preempted alike
  CHECK(cached->counters().preemptions == 1);
  CHECK(cached->counters().prefix_cache_hits == 1024);
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    CHECK(got[i].cached_tokens == 0);  // the first prefill's
    check_same(got[i], ref[i]);
  }
  check_all_released(*cached);
}

TEST_CASE("prefix cache: Stem's seed names every setting that changes its K/V") {
  StemSettings base;
  base.causal = true;
  const std::string kind = stem_kv_kind(base);
  CHECK(kind != kDenseKvKind);
  const PageHash seed = prefix_seed("model", kind, "");
  const std::vector<std::function<void(StemSettings&)>> changes = {
      [](StemSettings& s) { s.selector = StemSelector::Threshold; },
      [](StemSettings& s) { s.threshold = 0.8; },
      [](StemSettings& s) { s.causal = false; },
      [](StemSettings& s) { s.budget_rate = 0.5; },
      [](StemSettings& s) { s.alpha = 0.7000000000000001; },  // the last bit counts
      [](StemSettings& s) { s.lambda = 0; },
      [](StemSettings& s) { s.stride = 16; },
      [](StemSettings& s) { s.block_size = 64; },
      [](StemSettings& s) { s.sink_blocks = 2; },
      [](StemSettings& s) { s.window_blocks = 3; },
      [](StemSettings& s) { s.dense_layers = 1; },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    INFO("change " << i);
    StemSettings s = base;
    changes[i](s);
    CHECK(stem_kv_kind(s) != kind);
    CHECK_FALSE(prefix_seed("model", stem_kv_kind(s), "") == seed);
  }
  StemSettings longer = base;
  longer.min_prompt_len = 1 << 20;  // decides only whether a prompt is sparse (short ones use "dense")
  CHECK(stem_kv_kind(longer) == kind);
}

TEST_CASE("prefix cache, the paper's Stem schedule: only the pages it computes densely, shared with dense requests") {
  // Room for two prompts: a Stem run's sparse pages do not evict the dense run's cached ones.
  auto cached = tiny(true, 2048, 4096), plain = tiny(false);
  const std::vector<int32_t> doc = random_tokens(1500, 60);  // 12 blocks, k_s = 3: blocks 0-2 dense
  const int64_t dense_prefix = 3 * 128;

  const Run stem_ref = run(*plain, greedy(doc, 4, SparsePrefill::Stem));
  const Run dense_ref = run(*plain, greedy(doc, 4, SparsePrefill::Dense));
  REQUIRE(stem_ref.sparse_blocks > 0);

  const Run stem1 = run(*cached, greedy(doc, 4, SparsePrefill::Stem));
  CHECK(stem1.cached_tokens == 0);
  CHECK(cached->counters().cached_pages == dense_prefix / 16);  // nothing sparse, nothing decoded after it
  const Run stem2 = run(*cached, greedy(doc, 4, SparsePrefill::Stem));
  CHECK(stem2.cached_tokens == dense_prefix);
  // A dense prefill takes the dense pages a Stem prefill published, and publishes all of its own.
  const Run dense1 = run(*cached, greedy(doc, 4, SparsePrefill::Dense));
  CHECK(dense1.cached_tokens == dense_prefix);
  CHECK(cached->counters().cached_pages == (1500 + 3) / 16);
  // Stem still stops where its schedule turns sparse; dense takes everything.
  const Run stem3 = run(*cached, greedy(doc, 4, SparsePrefill::Stem));
  CHECK(stem3.cached_tokens == dense_prefix);
  const Run dense2 = run(*cached, greedy(doc, 4, SparsePrefill::Dense));
  CHECK(dense2.cached_tokens == 1488);

  for (const Run* r : {&stem1, &stem2, &stem3}) {
    CHECK(r->sparse_blocks == stem_ref.sparse_blocks);  // the same blocks are sparse, selected in full
    check_same(*r, stem_ref);
  }
  for (const Run* r : {&dense1, &dense2}) {
    CHECK(r->sparse_blocks == 0);
    check_same(*r, dense_ref);
  }
  check_all_released(*cached);
}

