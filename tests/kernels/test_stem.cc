// Stem's CPU reference (kernels/cpu/stem*.h): the budget schedule against hand arithmetic, the
// step layout's chunking rules, the pooled estimate against XAttention's materialised antidiagonal
// scores, the value bonus and the selection against their definitions, and the attention over the
// lists against paged_attention. Chunked prefill's selections: tests/kernels/test_stem_chunks.cc.
#include <algorithm>
#include <array>
#include <cmath>
#include <set>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/stem_attention.h"
#include "tests/catch.h"
#include "tests/kernels/test_stem_util.h"

using namespace stem;
using stem_test::Step;

TEST_CASE("stem budget schedule matches the hand-computed values at 8K, 32K and 128K") {
  const StemSettings st;
  // 8K: nb = 8192/128 = 64, in [56, 160): k_s = int(0.2·64 + 30) = int(42.8) = 42.
  //   i < 42 keep 42; from i = 42 the span is nb − k_s − 1 = 21 and (α − 1)·k_s = −0.3·42 = −12.6:
  //   i = 43: 42 − 12.6·1/21 = 41.4 → 41;  i = 53: 42 − 12.6·11/21 = 35.4 → 35;
  //   i = 62: 42 − 12.6·20/21 = 30.0 → 30; i = 63: 42 − 12.6 = 29.4 → 29.
  CHECK(stem_num_blocks(8192, st) == 64);
  CHECK(stem_start_budget(64, st) == 42);
  const std::vector<std::pair<int64_t, int64_t>> at8k = {{0, 42}, {41, 42}, {42, 42}, {43, 41}, {53, 35}, {62, 30}, {63, 29}};
  for (auto [i, k] : at8k) CHECK(stem_row_budget(64, i, st) == k);
  // 32K: nb = 256 ≥ 160: k_s = int(0.1·256) + 30 = 25 + 30 = 55; span 256 − 55 − 1 = 200,
  //   (α − 1)·k_s = −16.5: i = 56: 55 − 16.5/200 = 54.9175 → 54; i = 155: 55 − 16.5·100/200 = 46.75 → 46;
  //   i = 255: 55 − 16.5 = 38.5 → 38.
  CHECK(stem_start_budget(256, st) == 55);
  const std::vector<std::pair<int64_t, int64_t>> at32k = {{0, 55}, {54, 55}, {55, 55}, {56, 54}, {155, 46}, {255, 38}};
  for (auto [i, k] : at32k) CHECK(stem_row_budget(256, i, st) == k);
  // 128K: nb = 1024: k_s = int(102.4) + 30 = 132; span 1024 − 132 − 1 = 891, (α − 1)·k_s = −39.6:
  //   i = 133: 132 − 39.6/891 = 131.96 → 131; i = 578: 132 − 39.6·446/891 = 112.18 → 112;
  //   i = 1023: 132 − 39.6 = 92.4 → 92.
  CHECK(stem_start_budget(1024, st) == 132);
  const std::vector<std::pair<int64_t, int64_t>> at128k = {{0, 132}, {131, 132}, {132, 132}, {133, 131}, {578, 112}, {1023, 92}};
  for (auto [i, k] : at128k) CHECK(stem_row_budget(1024, i, st) == k);

  // Short prompts keep every block; a prompt of 55 blocks is still short, 56 is not.
  CHECK(stem_start_budget(55, st) == 55);
  CHECK(stem_start_budget(56, st) == 41);  // int(0.2·56 + 30) = int(41.2)
  CHECK(stem_start_budget(159, st) == 61);  // int(61.8)
  CHECK(stem_start_budget(160, st) == 46);  // int(16.0) + 30
}

TEST_CASE("stem budget rate scales k_s, and nb − k_s − 1 = 0 keeps k_s") {
  StemSettings st;
  st.budget_rate = 0.5;
  CHECK(stem_start_budget(1024, st) == 66);  // floor(132 · 0.5)
  CHECK(stem_row_budget(1024, 1023, st) == 46);  // floor(66 − 0.3·66) = floor(46.2)
  st.budget_rate = 100;
  CHECK(stem_start_budget(64, st) == 64);  // clamped to nb
  // k_s = nb − 1: the only block past k_s is i = nb − 1 = k_s, with an empty span: k(i) = k_s.
  st.budget_rate = 63.0 / 42.0;
  REQUIRE(stem_start_budget(64, st) == 63);
  CHECK(stem_row_budget(64, 63, st) == 63);
  CHECK(stem_row_budget(64, 62, st) == 63);
}

TEST_CASE("stem budget is the reference's float64 torch.linspace, to the block") {
  // The reference (AngelSlim's stem, torch_impl.generate_exact_k_schedule) builds the rows past
  // k_s as floor(torch.linspace(k_s, α·k_s, nb − k_s, dtype=float64)) on the GPU. The paper's
  // expression k_s + (i − k_s)/(nb − k_s − 1)·(α − 1)·k_s in double is one block off on exactly
  // these (nb, i) pairs for nb ≤ 1100 at α = 0.7; the expected values are the reference's, computed
  // in exact rational arithmetic with one rounding per fused multiply-add (what nvcc emits for
  // torch's start + step·n and end − step·(steps − 1 − n)), e.g. nb = 1024, i = 897: 92.4 + 126·2/45
  // = 98 exactly, but the rounded step makes it 97.99999999999999.
  const StemSettings st;
  const std::vector<std::array<int64_t, 3>> differ = {
      {91, 83, 35}, {162, 146, 33}, {181, 158, 35}, {185, 133, 38}, {187, 163, 35}, {267, 231, 41},
      {267, 256, 39}, {334, 263, 48}, {337, 323, 44}, {364, 321, 48}, {364, 336, 47}, {364, 351, 46},
      {381, 328, 50}, {387, 333, 50}, {439, 373, 54}, {439, 423, 51}, {482, 388, 59}, {505, 451, 59},
      {560, 526, 61}, {584, 538, 63}, {600, 599, 62}, {601, 600, 62}, {602, 601, 62}, {603, 602, 62},
      {604, 584, 63}, {604, 603, 62}, {605, 604, 62}, {606, 605, 62}, {607, 606, 62}, {608, 607, 62},
      {609, 608, 62}, {622, 552, 67}, {661, 566, 71}, {667, 571, 71}, {815, 681, 83}, {827, 792, 79},
      {861, 736, 86}, {867, 741, 86}, {914, 841, 87}, {960, 721, 98}, {964, 591, 104}, {964, 746, 97},
      {964, 901, 90}, {967, 726, 98}, {967, 926, 89}, {1021, 872, 98}, {1024, 897, 97}, {1024, 942, 95},
      {1024, 987, 93}, {1027, 877, 98}, {1061, 906, 101}, {1067, 911, 101},
  };
  auto paper = [&](int64_t nb, int64_t i) {
    const int64_t ks = stem_start_budget(nb, st);
    if (i < ks) return ks;
    const int64_t span = nb - ks - 1;
    const double fraction = span > 0 ? static_cast<double>(i - ks) / static_cast<double>(span) : 0.0;
    const double k = static_cast<double>(ks) + fraction * (st.alpha - 1.0) * static_cast<double>(ks);
    return std::clamp<int64_t>(static_cast<int64_t>(std::floor(k)), 1, ks);
  };
  REQUIRE(differ.size() == 52);
  size_t found = 0;
  for (int64_t nb = 1; nb <= 1100; ++nb)
    for (int64_t i = 0; i < nb; ++i) {
      const auto it = std::find_if(differ.begin(), differ.end(), [&](const auto& d) { return d[0] == nb && d[1] == i; });
      if (it == differ.end()) {
        if (stem_row_budget(nb, i, st) != paper(nb, i)) FAIL_CHECK("nb " << nb << " i " << i);
      } else {
        ++found;
        CHECK(stem_row_budget(nb, i, st) == (*it)[2]);
        CHECK(std::abs(paper(nb, i) - (*it)[2]) == 1);
      }
    }
  CHECK(found == differ.size());
  // The examples the issue names (nb = 1024: rows 897, 942, 987), and the schedule's last row is
  // floor(α·k_s) as the reference's linspace ends exactly at its `end`.
  CHECK(stem_row_budget(1024, 897, st) == 97);
  CHECK(stem_row_budget(600, 599, st) == 62);  // k_s = 90, 90·0.7 = 62.99999999999999 in double
}

TEST_CASE("stem settings are checked") {
  StemSettings st;
  st.stride = 5;
  STEM_CHECK_ERROR(check_stem_settings(st), "must divide the block size");
  st = StemSettings{};
  st.alpha = 0;
  STEM_CHECK_ERROR(check_stem_settings(st), "alpha");
  st = StemSettings{};
  st.window_blocks = 0;
  STEM_CHECK_ERROR(check_stem_settings(st), "window blocks");
  CHECK(stem_layer_sparse(StemSettings{}, 2));
  CHECK_FALSE(stem_layer_sparse(StemSettings{}, 1));
}

TEST_CASE("stem step layout: which query blocks are sparse") {
  StemSettings st;
  st.min_prompt_len = 1000;
  const int64_t bs = st.block_size;
  // A 9000-token prompt (nb = 71, k_s = int(44.2) = 44) in one step: blocks 44..70 are sparse,
  // including the last, partial one (its rows end where the prompt does).
  std::vector<int32_t> lens = {9000}, starts = {0, 9000}, prompts = {9000};
  std::vector<StemQueryBlock> blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 71);
  for (const StemQueryBlock& b : blocks) {
    INFO("block " << b.block);
    CHECK(b.sparse == (b.block >= 44));
    if (b.sparse) {
      CHECK(b.budget == stem_row_budget(71, b.block, st));
      CHECK(b.key_end == std::min<int64_t>((b.block + 1) * bs, 9000));
      CHECK(b.list_bound == std::min<int64_t>(b.block + 1, b.budget + 8));
    } else {
      CHECK(b.list_bound == b.block + 1);
    }
  }
  // A chunk [6000, 7000) of the same prompt: block 46 starts before the chunk and block 54 ends
  // after it, so both are dense; 47..53 are sparse with the whole prompt's budgets.
  lens = {7000}, starts = {0, 1000};
  blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 9);
  for (const StemQueryBlock& b : blocks) {
    INFO("block " << b.block);
    CHECK(b.sparse == (b.block >= 47 && b.block <= 53));
    if (b.sparse) CHECK(b.budget == stem_row_budget(71, b.block, st));
  }
  // Short prompts, sliding windows and rows past the prompt stay dense.
  prompts = {999};
  lens = {999}, starts = {0, 999};
  for (const StemQueryBlock& b : stem_query_blocks(lens, starts, prompts, 0, st)) CHECK_FALSE(b.sparse);
  prompts = {9000};
  lens = {9000}, starts = {0, 9000};
  blocks = stem_query_blocks(lens, starts, prompts, 4096, st);
  for (const StemQueryBlock& b : blocks) CHECK_FALSE(b.sparse);
  CHECK(blocks.back().first_key == (70 * 128 - 4096 + 1) / 128);
  lens = {9001}, starts = {0, 1};  // a decode row after the prompt
  blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 1);
  CHECK_FALSE(blocks[0].sparse);
}

TEST_CASE("stem dense tail: a prompt's last query blocks stay dense, whatever the chunking") {
  StemSettings st;
  st.min_prompt_len = 1000;
  st.selector = StemSelector::Threshold;
  st.dense_tail_blocks = 2;
  CHECK_FALSE(stem_selection_causal(st));  // the tail moves with the prompt's length
  CHECK(stem_selection_name(st) == "threshold 0.9, dense tail 2");
  st.dense_tail_blocks = -1;
  STEM_CHECK_ERROR(check_stem_settings(st), "dense tail");
  st.dense_tail_blocks = 2;
  // A 9000-token prompt (nb = 71): under the threshold blocks 8..68 are sparse, 69 and 70 dense.
  std::vector<int32_t> lens = {9000}, starts = {0, 9000}, prompts = {9000};
  std::vector<StemQueryBlock> blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 71);
  for (const StemQueryBlock& b : blocks) {
    INFO("block " << b.block);
    CHECK(b.sparse == (b.block >= 8 && b.block <= 68));
    if (!b.sparse) CHECK(b.list_bound == b.block + 1);
  }
  // The last chunk [8000, 9000) of the same prompt: the tail is the whole prompt's, not the chunk's.
  lens = {9000}, starts = {0, 1000};
  blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 9);
  for (const StemQueryBlock& b : blocks) {
    INFO("block " << b.block);
    CHECK(b.sparse == (b.block >= 63 && b.block <= 68));
  }
  // A tail longer than the prompt leaves every block dense.
  st.dense_tail_blocks = 100;
  lens = {9000}, starts = {0, 9000};
  for (const StemQueryBlock& b : stem_query_blocks(lens, starts, prompts, 0, st)) CHECK_FALSE(b.sparse);
}

TEST_CASE("stem pooled estimate equals the materialised antidiagonal estimate") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  struct Shape {
    int64_t block, stride, len, rows;
  };
  // The paper's blocks on a prompt just long enough to be sparse, and small blocks on a chunk
  // that ends mid-prompt (partial last block, key_end < kv_len).
  // Stride 16 is the reference's HPC operating point (R = 8 groups a block).
  const Shape shape = GENERATE(Shape{128, 8, 8300, 8300}, Shape{128, 16, 8300, 8300}, Shape{16, 4, 1500, 1500},
                               Shape{32, 8, 1700, 700});
  INFO("B " << shape.block << " S " << shape.stride << " L " << shape.len);
  StemSettings st;
  st.block_size = shape.block;
  st.stride = shape.stride;
  st.min_prompt_len = 0;
  const int64_t hq = 4, hkv = 2, d = 16;
  Step step(rng, hq, hkv, d, 16, {{static_cast<int32_t>(shape.len), static_cast<int32_t>(shape.rows)}},
            {static_cast<int32_t>(shape.len + 500)});
  const float scale = 1.f / std::sqrt(float(d));
  cpu::StemScores scores;
  step.plan(scale, st, &scores);
  REQUIRE(!scores.blocks.empty());

  const int64_t bs = st.block_size, stride = st.stride, per_block = bs / stride;
  const std::vector<float>& k = step.k_logical[0];
  const std::vector<float>& v = step.v_logical[0];
  const int64_t first_pos = shape.len - shape.rows, kv_len = shape.len;
  double worst_logit = 0, worst_bonus = 0;
  for (size_t row = 0; row < scores.blocks.size(); ++row) {
    const StemQueryBlock& b = scores.blocks[row];
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv);
      // A[m,n] = scale/S · Σ_t q[mS + S−1−t]·k[nS + t], absent positions as zeros, averaged over
      // the R×R tile of blocks (i, j).
      auto q_at = [&](int64_t p, int64_t e) {
        return p < b.key_end ? double{step.q[((p - first_pos) * hq + h) * d + e]} : 0.0;
      };
      auto k_at = [&](int64_t p, int64_t e) { return p < kv_len ? double{k[(p * hkv + g) * d + e]} : 0.0; };
      for (int64_t j = 0; j <= b.block; ++j) {
        double sum = 0;
        for (int64_t m = b.block * per_block; m < (b.block + 1) * per_block; ++m)
          for (int64_t n = j * per_block; n < (j + 1) * per_block; ++n)
            for (int64_t t = 0; t < stride; ++t)
              for (int64_t e = 0; e < d; ++e) sum += q_at(m * stride + stride - 1 - t, e) * k_at(n * stride + t, e);
        const double naive = sum * scale / stride / double(per_block * per_block);
        const double got = scores.logit[(row * hq + h) * scores.cols + j];
        worst_logit = std::max(worst_logit, std::abs(got - naive) / (std::abs(naive) + 1e-3));
      }
    }
    // The value bonus from its definition: z-scores over the groups before the block's end.
    for (int64_t g = 0; g < hkv; ++g) {
      const int64_t groups = (b.key_end + stride - 1) / stride;
      std::vector<double> u(static_cast<size_t>(groups));
      for (int64_t n = 0; n < groups; ++n) {
        double largest = 0;
        for (int64_t p = n * stride; p < std::min((n + 1) * stride, kv_len); ++p) {
          double sq = 0;
          for (int64_t e = 0; e < d; ++e) sq += double{v[(p * hkv + g) * d + e]} * v[(p * hkv + g) * d + e];
          largest = std::max(largest, std::sqrt(sq));
        }
        u[n] = std::log(largest + 1e-6);
      }
      double mean = 0, var = 0;
      for (double x : u) mean += x / groups;
      for (double x : u) var += (x - mean) * (x - mean) / (groups - 1);
      for (int64_t j = 0; j <= b.block; ++j) {
        double sum = 0;
        int64_t count = 0;
        for (int64_t n = j * per_block; n < std::min((j + 1) * per_block, groups); ++n, ++count)
          sum += std::max(0.0, (u[n] - mean) / (std::sqrt(var) + 1e-6));
        const double want = st.lambda * sum / count;
        worst_bonus = std::max(worst_bonus, std::abs(scores.bonus[(row * hkv + g) * scores.cols + j] - want));
      }
    }
  }
  INFO("worst logit error " << worst_logit << ", worst bonus error " << worst_bonus);
  CHECK(worst_logit < 1e-5);
  CHECK(worst_bonus < 1e-6);
}

TEST_CASE("stem selection is the top-k by score, united with the sink and window blocks") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st;
  st.block_size = 16;
  st.stride = 4;
  st.min_prompt_len = 0;
  const int64_t hq = 4, hkv = 1, d = 16;
  Step step(rng, hq, hkv, d, 8, {{3000, 3000}, {700, 700}}, {3000, 700});
  cpu::StemScores scores;
  const cpu::StemPlan plan = step.plan(1.f / 4, st, &scores);
  size_t row = 0;
  int64_t sparse_lists = 0;
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int64_t i = plan.qblocks[2 * b + 1];
    const bool sparse = row < scores.blocks.size() && scores.blocks[row].seq == plan.qblocks[2 * b] &&
                        scores.blocks[row].block == i;
    for (int64_t h = 0; h < hq; ++h) {
      const auto list = plan.list(b, h);
      std::set<int32_t> got(list.begin(), list.end());
      CHECK(got.size() == list.size());
      CHECK(std::is_sorted(list.begin(), list.end()));
      std::set<int32_t> want;
      if (!sparse) {
        for (int32_t j = 0; j <= i; ++j) want.insert(j);
      } else {
        ++sparse_lists;
        // Rank every causal block by (score desc, j asc) and keep the first k(i).
        std::vector<int32_t> order(static_cast<size_t>(i + 1));
        for (int32_t j = 0; j <= i; ++j) order[j] = j;
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t x, int32_t y) { return scores.score(row, h, x) > scores.score(row, h, y); });
        want.insert(order.begin(), order.begin() + scores.blocks[row].budget);
        for (int32_t j = 0; j < 4 && j <= i; ++j) want.insert(j);
        for (int64_t j = std::max<int64_t>(0, i - 3); j <= i; ++j) want.insert(static_cast<int32_t>(j));
        CHECK(got.size() >= static_cast<size_t>(scores.blocks[row].budget));
        CHECK(got.size() <= static_cast<size_t>(scores.blocks[row].list_bound));
      }
      CHECK(got == want);
    }
    if (sparse) ++row;
  }
  CHECK(row == scores.blocks.size());
  CHECK(sparse_lists > 100);
  // Ties go to the lower block.
  const std::vector<float> tied = {1.f, 3.f, 2.f, 3.f, 3.f};
  CHECK(cpu::stem_top_k(tied, 2) == std::vector<int32_t>{1, 3});
  CHECK(cpu::stem_top_k(tied, 4) == std::vector<int32_t>{1, 2, 3, 4});
}

TEST_CASE("stem with every block selected equals dense attention, bit for bit") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st;
  st.block_size = 16;
  st.stride = 4;
  st.min_prompt_len = 0;
  st.budget_rate = 1000;  // k_s = nb: every list holds every causal block
  const int64_t hq = 6, hkv = 2, d = 16;
  Step step(rng, hq, hkv, d, 4, {{1200, 1200}, {900, 300}, {77, 1}}, {1200, 2000, 76});
  const float scale = 1.f / 4;
  const std::vector<float> dense = step.dense(scale, 0);
  const std::vector<float> sparse = step.stem(scale, st, 0);
  CHECK(ktest::count_nan(sparse.data(), int64_t(sparse.size())) == 0);
  CHECK(sparse == dense);
  // With a sliding window Stem stays dense too, through the window's lists.
  st.budget_rate = 1;
  CHECK(step.stem(scale, st, 100) == step.dense(scale, 100));
}

TEST_CASE("stem attention over sparse lists matches a softmax restricted to the listed blocks") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  StemSettings st;
  st.block_size = 16;
  st.stride = 4;
  st.min_prompt_len = 0;
  const int64_t hq = 4, hkv = 2, d = 16;
  Step step(rng, hq, hkv, d, 8, {{2000, 2000}, {1500, 600}}, {2000, 3000}, 2.f);
  const float scale = 1.f / 4;
  const cpu::StemPlan plan = step.plan(scale, st);
  std::vector<float> out = ktest::poisoned(step.tokens * hq * d);
  cpu::block_sparse_attention(step.view(out, {step.tokens, hq, d}), step.view(step.q, {step.tokens, hq, d}),
                              step.cache_view(step.k_cache), step.cache_view(step.v_cache), step.table_view(),
                              step.lens_view(), step.starts_view(), plan, scale, 0);
  const std::vector<double> ref = step.block_reference(plan, scale);
  CHECK(ktest::count_nan(out.data(), int64_t(out.size())) == 0);
  CHECK(ktest::rel_error(out, ref) < 1e-5);
  // The lists are sparse: fewer blocks than the dense causal count.
  int64_t listed = int64_t(plan.block_indices.size()), dense = 0;
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) dense += (plan.qblocks[2 * b + 1] + 1) * hq;
  CHECK(listed < dense * 8 / 10);
}
