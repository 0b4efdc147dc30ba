// Stem's selection variants (StemSettings::selector, position_decay, lambda = 0; docs/stem.md
// "Variants"), the baselines of the accuracy evaluation (bench/eval/): selections against their
// definitions, and chunked = unchunked for each. Their budgets, names and checks (the policy):
// tests/models/test_stem_policy.cc.
#include <algorithm>
#include <cmath>
#include <set>

#include "tests/catch.h"
#include "tests/kernels/test_stem_util.h"

using namespace stem;
using stem_test::Step;

namespace {

std::set<int32_t> as_set(std::span<const int32_t> list) { return {list.begin(), list.end()}; }

// Sink blocks j < 4 and window blocks i − 3..i (the defaults).
std::set<int32_t> sink_and_window(int64_t i) {
  std::set<int32_t> keep;
  for (int32_t j = 0; j < 4 && j <= i; ++j) keep.insert(j);
  for (int64_t j = std::max<int64_t>(0, i - 3); j <= i; ++j) keep.insert(static_cast<int32_t>(j));
  return keep;
}

StemSettings small_blocks() {
  StemSettings st;
  st.block_size = 16;
  st.stride = 4;
  st.min_prompt_len = 0;
  return st;
}

}  // namespace

TEST_CASE("stem without the value bonus (lambda 0) ranks by the plain pooled estimate") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st = small_blocks();
  st.lambda = 0;
  const int64_t hq = 4, hkv = 2, d = 16;
  Step step(rng, hq, hkv, d, 8, {{2500, 2500}}, {2500});
  cpu::StemScores scores;
  const cpu::StemPlan plan = step.plan(0.25f, st, &scores);
  REQUIRE(!scores.blocks.empty());
  CHECK(std::all_of(scores.bonus.begin(), scores.bonus.end(), [](float x) { return x == 0.f; }));
  int64_t row = 0, lists = 0;
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int64_t i = plan.qblocks[2 * b + 1];
    if (row >= static_cast<int64_t>(scores.blocks.size()) || scores.blocks[row].block != i) continue;
    for (int64_t h = 0; h < hq; ++h) {
      std::vector<float> logit(scores.logit.begin() + (row * hq + h) * scores.cols,
                               scores.logit.begin() + (row * hq + h) * scores.cols + i + 1);
      std::set<int32_t> want = sink_and_window(i);
      for (int32_t j : cpu::stem_top_k(logit, scores.blocks[row].budget)) want.insert(j);
      CHECK(as_set(plan.list(b, h)) == want);
      ++lists;
    }
    ++row;
  }
  CHECK(lists > 100);
  // The bonus does change what is kept: with λ = 0.2 some list differs.
  const cpu::StemPlan with_bonus = step.plan(0.25f, small_blocks());
  CHECK(with_bonus.block_indices != plan.block_indices);
}

TEST_CASE("stem threshold selection keeps the fewest blocks whose softmax mass reaches tau") {
  // Scores ln 4, 0, ln 2, 0: masses 4, 1, 2, 1 of 8.
  const std::vector<float> s = {std::log(4.f), 0.f, std::log(2.f), 0.f};
  CHECK(cpu::stem_threshold_select(s, 0.5) == std::vector<int32_t>{0});           // 4/8 = 0.5
  CHECK(cpu::stem_threshold_select(s, 0.51) == std::vector<int32_t>{0, 2});       // 6/8
  CHECK(cpu::stem_threshold_select(s, 0.8) == std::vector<int32_t>{0, 1, 2});     // 7/8: the tie goes to j = 1
  CHECK(cpu::stem_threshold_select(s, 1.0) == std::vector<int32_t>{0, 1, 2, 3});  // all
  CHECK(cpu::stem_threshold_select(s, 1e-9) == std::vector<int32_t>{0});          // at least one
  CHECK(cpu::stem_threshold_select(std::vector<float>{}, 0.9).empty());

  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st = small_blocks();
  st.selector = StemSelector::Threshold;
  st.lambda = 0;
  const int64_t hq = 4, hkv = 1, d = 16;
  // q scaled up so that the block scores spread and the mass concentrates.
  Step step(rng, hq, hkv, d, 8, {{2000, 2000}, {700, 700}}, {2000, 700}, 8.f);
  int64_t previous = -1;
  for (double tau : {0.5, 0.9, 0.99}) {
    INFO("tau " << tau);
    st.threshold = tau;
    cpu::StemScores scores;
    const cpu::StemPlan plan = step.plan(0.25f, st, &scores);
    size_t row = 0;
    for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
      const int64_t i = plan.qblocks[2 * b + 1];
      // Every whole block past the sink and window blocks is scored (budget unused); the rest are dense.
      const bool sparse = row < scores.blocks.size() && scores.blocks[row].seq == plan.qblocks[2 * b] &&
                          scores.blocks[row].block == i;
      CHECK(sparse == (i >= 8));
      for (int64_t h = 0; h < hq; ++h) {
        std::set<int32_t> want;
        if (sparse) {
          CHECK(scores.blocks[row].budget == 0);
          std::vector<double> mass(static_cast<size_t>(i + 1));
          double top = -INFINITY, total = 0;
          for (int64_t j = 0; j <= i; ++j) top = std::max(top, double{scores.score(row, h, j)});
          for (int64_t j = 0; j <= i; ++j) total += (mass[j] = std::exp(scores.score(row, h, j) - top));
          // Add blocks from the highest mass down until tau of the total is reached.
          std::vector<int32_t> order(static_cast<size_t>(i + 1));
          for (int32_t j = 0; j <= i; ++j) order[j] = j;
          std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return mass[x] > mass[y]; });
          double kept = 0;
          for (int32_t j : order) {
            if (!want.empty() && kept >= tau * total) break;
            want.insert(j);
            kept += mass[j];
          }
          const std::set<int32_t> always = sink_and_window(i);
          want.insert(always.begin(), always.end());
        } else {
          for (int32_t j = 0; j <= i; ++j) want.insert(j);
        }
        CHECK(as_set(plan.list(b, h)) == want);
      }
      if (sparse) ++row;
    }
    // A higher tau keeps more.
    const int64_t listed = static_cast<int64_t>(plan.block_indices.size());
    CHECK(listed > previous);
    previous = listed;
  }
}

TEST_CASE("stem adaptive keeps the threshold's blocks, at most k(i) of them") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st = small_blocks();
  st.selector = StemSelector::Adaptive;
  st.budget_rate = 0.5;
  const int64_t hq = 4, hkv = 2, d = 16;
  // nb = 125 blocks of 16: k_s = int(0.2·125 + 30)·0.5 = 27, so blocks from 27 on are sparse
  // (their budget k(i) < i + 1), as for TopK.
  Step step(rng, hq, hkv, d, 8, {{2000, 2000}}, {2000}, 8.f);
  int64_t from_threshold = 0, capped = 0;
  for (double tau : {0.5, 0.95}) {
    INFO("tau " << tau);
    st.threshold = tau;
    cpu::StemScores scores;
    const cpu::StemPlan plan = step.plan(0.25f, st, &scores);
    REQUIRE(scores.blocks.size() == 125 - 27);
    for (size_t row = 0; row < scores.blocks.size(); ++row) {
      const StemQueryBlock& b = scores.blocks[row];
      CHECK(b.budget == stem_row_budget(125, b.block, st));
      const int64_t item = b.block;  // one sequence from position 0: item b is query block b
      for (int64_t h = 0; h < hq; ++h) {
        std::vector<float> score(static_cast<size_t>(b.block + 1));
        for (int32_t j = 0; j <= b.block; ++j) score[j] = scores.score(row, h, j);
        const std::vector<int32_t> by_mass = cpu::stem_threshold_select(score, tau);
        const bool fits = static_cast<int64_t>(by_mass.size()) <= b.budget;
        std::set<int32_t> want = fits ? as_set(by_mass) : as_set(cpu::stem_top_k(score, b.budget));
        (fits ? from_threshold : capped) += 1;
        const std::set<int32_t> always = sink_and_window(b.block);
        want.insert(always.begin(), always.end());
        CHECK(as_set(plan.list(item, h)) == want);
      }
    }
  }
  // Both branches ran: concentrated heads stop early, spread ones hit the schedule's cap.
  CHECK(from_threshold > 0);
  CHECK(capped > 0);
}

TEST_CASE("stem with the None selector keeps the sink and window blocks only") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st = small_blocks();
  st.selector = StemSelector::None;
  const int64_t hq = 2, hkv = 1, d = 16;
  // nb = 100 blocks of 16: each head lists min(i + 1, 8) blocks: 1 + .. + 8 + 92·8 = 772 of 5050.
  Step step(rng, hq, hkv, d, 8, {{1600, 1600}}, {1600});
  cpu::StemScores scores;
  const cpu::StemPlan plan = step.plan(0.25f, st, &scores);
  CHECK(plan.block_indices.size() == 772 * hq);
  CHECK(scores.blocks.size() == 92);
  for (const StemQueryBlock& b : scores.blocks) CHECK(b.list_bound == 8);
  for (int64_t b = 0; b < plan.n_qblocks(); ++b)
    for (int64_t h = 0; h < hq; ++h) CHECK(as_set(plan.list(b, h)) == sink_and_window(plan.qblocks[2 * b + 1]));
  // Attention over those lists equals a softmax restricted to them.
  std::vector<float> out = ktest::poisoned(step.tokens * hq * d);
  cpu::block_sparse_attention(step.view(out, {step.tokens, hq, d}), step.view(step.q, {step.tokens, hq, d}),
                              step.cache_view(step.k_cache), step.cache_view(step.v_cache), step.table_view(),
                              step.lens_view(), step.starts_view(), plan, 0.25f, 0);
  CHECK(ktest::rel_error(out, step.block_reference(plan, 0.25f)) < 1e-5);
}

TEST_CASE("stem variants choose the same blocks chunked and unchunked") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st = small_blocks();
  const int variant = GENERATE(0, 1, 2, 3, 4);
  if (variant == 0) st.position_decay = false;
  if (variant == 1) st.lambda = 0, st.position_decay = false;  // uniform top-k on the plain estimate
  if (variant == 2) st.selector = StemSelector::Threshold, st.threshold = 0.8;
  if (variant == 3) st.selector = StemSelector::None, st.window_blocks = 6;
  if (variant == 4) st.selector = StemSelector::Adaptive, st.threshold = 0.8, st.budget_rate = 0.5;
  INFO("variant " << variant);
  const int32_t len = 2100, chunk = 256;
  Step step(rng, 4, 2, 16, 8, {{len, len}}, {len}, 4.f);
  std::map<int32_t, bool> whole_sparse;
  const stem_test::Lists whole = stem_test::plan_chunk(step, 0, len, 0.25f, st, &whole_sparse);
  CHECK(whole_sparse.size() > 50);
  stem_test::Lists chunked;
  for (int32_t begin = 0; begin < len; begin += chunk)
    for (const auto& [key, list] : stem_test::plan_chunk(step, begin, std::min(len, begin + chunk), 0.25f, st))
      chunked[key] = list;
  CHECK(chunked == whole);
}

TEST_CASE("causal selections: a prompt's blocks select the same keys as in any longer prompt") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int variant = GENERATE(0, 1, 2, 3, 4);
  StemSettings st = small_blocks();
  if (variant == 1) st.causal = true;
  if (variant == 2) st.causal = true, st.selector = StemSelector::Adaptive, st.threshold = 0.8;
  if (variant == 3) st.selector = StemSelector::Threshold, st.threshold = 0.8;
  if (variant == 4) st.selector = StemSelector::None, st.window_blocks = 6;
  INFO("variant " << variant);
  const int32_t len = 2100, prefix = 1600;  // the prefix ends on a block boundary (16 · 100)
  Step step(rng, 4, 2, 16, 8, {{len, len}}, {len}, 4.f);
  std::map<int32_t, bool> sparse;
  const stem_test::Lists whole = stem_test::plan_chunk(step, 0, len, 0.25f, st, &sparse);
  step.prompt_lens[0] = prefix;  // the same tokens, as a prompt that ends at the prefix
  const stem_test::Lists alone = stem_test::plan_chunk(step, 0, prefix, 0.25f, st);
  stem_test::Lists shared;
  for (const auto& [key, list] : whole)
    if (key.first < prefix / 16) shared[key] = list;
  CHECK(sparse.size() > 50);
  if (variant == 0)
    CHECK(alone != shared);  // the paper's schedule: k(i) depends on the whole prompt's length
  else
    CHECK(alone == shared);
}

