// Stem under chunked prefill (CPU reference): a prompt planned in one step and in chunks chooses
// the same blocks for every query block both see whole; chunks that cut a block leave that block
// dense; sequences batched together plan as they would alone.
#include "tests/catch.h"
#include "tests/kernels/test_stem_util.h"

using namespace stem;
using stem_test::Lists;
using stem_test::plan_chunk;
using stem_test::Step;

TEST_CASE("stem chunked and unchunked prefill choose the same blocks") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st;
  st.block_size = 16;
  st.stride = 4;
  st.min_prompt_len = 0;
  const int32_t len = 2900;  // nb = 182, k_s = int(18.2) + 30 = 48: blocks 48..181 are sparse
  const int64_t hq = 4, hkv = 2, d = 16;
  Step step(rng, hq, hkv, d, 8, {{len, len}}, {len});
  const float scale = 0.25f;
  std::map<int32_t, bool> whole_sparse;
  const Lists whole = plan_chunk(step, 0, len, scale, st, &whole_sparse);
  REQUIRE(whole_sparse.size() == 182 - 48);

  // Chunks of whole blocks: every list equal. Chunks that cut blocks: equal except the cut blocks,
  // which are dense in the chunked plan.
  const int32_t chunk = GENERATE(256, 512, 300, 1000);
  INFO("chunk " << chunk);
  Lists chunked;
  std::map<int32_t, bool> chunked_sparse;
  for (int32_t begin = 0; begin < len; begin += chunk) {
    const Lists part = plan_chunk(step, begin, std::min(len, begin + chunk), scale, st, &chunked_sparse);
    for (const auto& [key, list] : part) {
      // A block cut by this chunk's start was planned (dense) by the previous chunk too; keep the
      // chunk that holds the block's last row, as attention's output comes from there.
      chunked[key] = list;
    }
  }
  REQUIRE(chunked.size() == whole.size());
  int64_t same = 0, cut = 0;
  for (const auto& [key, list] : whole) {
    const auto [i, h] = key;
    INFO("block " << i << " head " << h);
    const bool is_cut = (i * 16 < len) && ((i * 16) / chunk != std::min(len - 1, i * 16 + 15) / chunk);
    if (!is_cut) {
      CHECK(chunked.at(key) == list);
      CHECK(chunked_sparse.count(i) == whole_sparse.count(i));
      ++same;
    } else {
      ++cut;
      CHECK(chunked_sparse.count(i) == 0);
      std::vector<int32_t> dense(static_cast<size_t>(i + 1));
      for (int32_t j = 0; j <= i; ++j) dense[j] = j;
      CHECK(chunked.at(key) == dense);
    }
  }
  CHECK(same > 0);
  if (chunk % 16 == 0) CHECK(cut == 0);
}

TEST_CASE("stem plans a batched sequence as it would plan it alone") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st;
  st.block_size = 32;
  st.stride = 8;
  st.min_prompt_len = 1000;
  const int64_t hq = 4, hkv = 1, d = 16;
  // A chunk of a long prompt, a whole prompt, a decode row, a short prompt (dense by length).
  Step step(rng, hq, hkv, d, 16, {{2500, 700}, {2300, 2300}, {50, 1}, {600, 600}}, {4000, 2300, 49, 600});
  const cpu::StemPlan batched = step.plan(0.25f, st);
  int64_t b = 0;
  for (int64_t s = 0; s < step.n_seqs(); ++s) {
    INFO("sequence " << s);
    std::vector<int32_t> lens = {step.kv_lens[s]}, starts = {0, step.seqs[s].rows}, prompts = {step.prompt_lens[s]};
    const TensorView q = Step::view(step.q, {step.tokens, hq, d}).rows(step.query_start[s], step.query_start[s + 1]);
    const TensorView table(step.page_table.data() + s * step.max_pages, DType::I32, {1, step.max_pages});
    const cpu::StemPlan alone = cpu::stem_plan(
        q, step.cache_view(step.k_cache), step.cache_view(step.v_cache), table, TensorView(lens.data(), DType::I32, {1}),
        TensorView(starts.data(), DType::I32, {2}), stem_query_blocks(lens, starts, prompts, 0, st), 0.25f, st);
    for (int64_t a = 0; a < alone.n_qblocks(); ++a, ++b) {
      REQUIRE(batched.qblocks[2 * b] == s);
      CHECK(batched.qblocks[2 * b + 1] == alone.qblocks[2 * a + 1]);
      for (int64_t h = 0; h < hq; ++h) {
        const auto x = batched.list(b, h), y = alone.list(a, h);
        CHECK(std::vector<int32_t>(x.begin(), x.end()) == std::vector<int32_t>(y.begin(), y.end()));
      }
    }
  }
  CHECK(b == batched.n_qblocks());
}
