// Automatic prefix caching in the engine (docs/prefix_caching.md), on the tiny llama-gqa fixture
// (pages of 16 tokens) and the default model: hits and misses, partial pages, decoded tokens
// reused by the next turn, salts, chunked prefill and batches sharing one prefix, eviction under
// memory pressure, page counts after cancellation, preemption and shutdown (Stem:
// test_prefix_cache_stem.cc). Every output is checked against an engine without the cache: greedy
// tokens equal, log-probabilities within rounding (tests/rounding.h).
#include <memory>
#include <random>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/engine/prefix_cache_util.h"

using namespace stem;
using namespace stem::prefix_cache_test;
using stem::test::greedy;
namespace fs = std::filesystem;

TEST_CASE("prefix cache: repeated prompts, shared and partial-page prefixes, the next turn of a chat") {
  auto cached = tiny(true), plain = tiny(false);
  const std::vector<int32_t> doc = random_tokens(300, 1);

  const Run ref = run(*plain, greedy(doc, 20));
  const Run first = run(*cached, greedy(doc, 20));
  CHECK(first.cached_tokens == 0);
  check_same(first, ref);
  // 300 prompt tokens and 19 decoded ones have K/V: 19 full pages.
  CHECK(cached->counters().cached_pages == 19);
  CHECK(plain->counters().cached_pages == 0);
  CHECK(plain->counters().prefix_cache_queries == 0);

  // The same prompt: every full page but the one holding its last token (its logits are needed).
  const Run again = run(*cached, greedy(doc, 20));
  CHECK(again.cached_tokens == 288);
  check_same(again, ref);
  CHECK(cached->counters().prefix_cache_queries == 600);
  CHECK(cached->counters().prefix_cache_hits == 288);

  // A prompt that leaves the document in the middle of a page: the pages before it.
  const std::vector<int32_t> question = concat(std::vector<int32_t>(doc.begin(), doc.begin() + 200), random_tokens(90, 2));
  const Run q = run(*cached, greedy(question, 8));
  CHECK(q.cached_tokens == 192);
  check_same(q, run(*plain, greedy(question, 8)));

  // The next turn: the document, the answer and a new question; the answer's pages were computed
  // while decoding (the last decoded token's K/V never was).
  const std::vector<int32_t> turn = concat(concat(doc, first.result.tokens), random_tokens(30, 3));
  const Run t = run(*cached, greedy(turn, 8));
  CHECK(t.cached_tokens == 304);
  check_same(t, run(*plain, greedy(turn, 8)));

  // Unrelated prompts miss.
  CHECK(run(*cached, greedy(random_tokens(100, 4), 2)).cached_tokens == 0);
  check_all_released(*cached);
}

TEST_CASE("prefix cache: a cache_salt shares pages only with the same salt") {
  auto e = tiny(true);
  const std::vector<int32_t> doc = random_tokens(100, 5);
  GenerateRequest r = greedy(doc, 2);
  CHECK(run(*e, r).cached_tokens == 0);
  r.cache_salt = "tenant-a";
  CHECK(run(*e, r).cached_tokens == 0);
  CHECK(run(*e, r).cached_tokens == 96);
  r.cache_salt = "tenant-b";
  CHECK(run(*e, r).cached_tokens == 0);
  r.cache_salt = "";
  CHECK(run(*e, r).cached_tokens == 96);
}

TEST_CASE("prefix cache: many requests sharing one prefix, batched and prefilled in chunks") {
  auto cached = tiny(true, 64), plain = tiny(false, 64);
  const std::vector<int32_t> doc = random_tokens(250, 6);
  std::vector<GenerateRequest> reqs;
  for (uint64_t i = 0; i < 6; ++i) reqs.push_back(greedy(concat(doc, random_tokens(20 + 7 * i, 10 + i)), 6));

  // The first request computes the document in chunks of 64 tokens; the others, added together,
  // take its 15 full pages and prefill their questions in one batch.
  const Run first = run(*cached, reqs[0]);
  CHECK(first.cached_tokens == 0);
  const std::vector<Run> batch = run_all(*cached, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    CHECK(batch[i].cached_tokens == (i == 0 ? 256 : 240));  // request 0: its own prompt's pages
    check_same(batch[i], run(*plain, reqs[i]));
  }
  check_all_released(*cached);
}

TEST_CASE("prefix cache: under memory pressure cached pages are evicted, never in the way") {
  // 32 pages of 16; each prompt needs 19 or more: every request evicts part of the last one's.
  auto cached = tiny(true, 2048, 512), plain = tiny(false, 2048, 512);
  std::vector<std::vector<int32_t>> prompts;
  for (uint64_t i = 0; i < 4; ++i) prompts.push_back(random_tokens(300, 20 + i));
  for (int round = 0; round < 2; ++round)
    for (const auto& p : prompts) {
      const Run got = run(*cached, greedy(p, 4));
      CHECK(got.finish == FinishReason::Length);
      check_same(got, run(*plain, greedy(p, 4)));
      CHECK(cached->counters().cached_pages <= 32);
    }
  // The most recent prompt keeps its head (a prompt's tail pages are evicted first).
  CHECK(run(*cached, greedy(prompts.back(), 2)).cached_tokens > 0);
  check_all_released(*cached);
}

TEST_CASE("prefix cache: cancellation, preemption and shutdown leave no page held") {
  SECTION("cancelled in the middle of a chunked prefill") {
    auto e = tiny(true, 64);
    GenerateRequest r = greedy(random_tokens(400, 30), 4);
    r.cancelled = std::make_shared<std::atomic<bool>>(false);
    std::optional<FinishReason> finish;
    e->add_request(r, [&](const TokenEvent& ev) { if (ev.finished) finish = ev.finish; });
    for (int i = 0; i < 3; ++i) e->step();
    CHECK(e->counters().used_pages == 12);  // 3 chunks of 64 tokens computed, 4 pages each
    CHECK(e->counters().cached_pages == 12);  // each published after its step
    r.cancelled->store(true);
    e->step();
    CHECK(finish == FinishReason::Cancelled);
    check_all_released(*e);
    CHECK(e->counters().cached_pages == 12);
    // What the cancelled request computed is reused.
    CHECK(run(*e, greedy(random_tokens(400, 30), 2)).cached_tokens == 192);
  }
  SECTION("a preempted sequence takes its own pages back from the cache") {
    // 8 pages of 16. A (older) and B prefill 60 tokens, 4 pages each; at position 64 A needs a
    // fifth: B is preempted (its 3 full pages stay cached) and A, growing to 100 tokens, evicts B's
    // last two. B's recompute takes its first page back.
    auto cached = tiny(true, 2048, 128), plain = tiny(false);
    const std::vector<GenerateRequest> reqs = {greedy(random_tokens(60, 40), 40), greedy(random_tokens(60, 41), 10)};
    const std::vector<Run> got = run_all(*cached, reqs);
    CHECK(cached->counters().preemptions == 1);
    CHECK(cached->counters().prefix_cache_hits == 16);
    for (size_t i = 0; i < reqs.size(); ++i) {
      INFO("request " << i);
      CHECK(got[i].cached_tokens == 0);  // cached_tokens is the prompt's first prefill's
      check_same(got[i], run(*plain, reqs[i]));
    }
    check_all_released(*cached);
  }
  SECTION("shutdown ends every request") {
    auto e = tiny(true, 64);
    const std::vector<int32_t> doc = random_tokens(200, 50);
    run(*e, greedy(doc, 2));
    int finished = 0;
    for (int i = 0; i < 3; ++i)
      e->add_request(greedy(concat(doc, random_tokens(10, 51 + i)), 50), [&](const TokenEvent& ev) { finished += ev.finished; });
    for (int i = 0; i < 4; ++i) e->step();
    CHECK(e->counters().used_pages > 0);
    e->abort_all("shutting down");
    CHECK(finished == 3);
    check_all_released(*e);
    CHECK_FALSE(e->has_work());
  }
}

TEST_CASE("prefix cache: the default model gives the uncached greedy tokens on a cache hit") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  EngineOptions o;
  o.max_model_len = 512;
  Engine cached(test::default_model_dir(), o);
  o.enable_prefix_caching = false;
  Engine plain(test::default_model_dir(), o);
  std::string text;
  for (int i = 1; i <= 25; ++i) text += "Item " + std::to_string(i) + ": a line of the shared document.\n";
  const std::vector<int32_t> doc = cached.tokenizer().encode(text, true);
  REQUIRE(doc.size() > 200);
  const double tol = test::rounding_tolerance(cached.config(), 512);
  for (const char* q : {"Question: which item comes after 41?", "Question: how many items are there?"}) {
    INFO(q);
    GenerateRequest r = greedy(concat(doc, cached.tokenizer().encode(q, false)), 12);
    const Run ref = run(plain, r), got = run(cached, r);
    test::check_same_greedy(ref.result.tokens, ref.result.samples, got.result.tokens, tol);
  }
  // The second question took the document's full pages from the first.
  CHECK(cached.counters().prefix_cache_hits >= static_cast<int64_t>(doc.size()) / 16 * 16 - 16);
}
