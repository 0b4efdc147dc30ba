// Stem's CPU reference (kernels/cpu/stem*.h): the kernel parameters' and the query blocks' checks,
// the pooled estimate against XAttention's materialised antidiagonal scores, the value bonus and
// the selection against their definitions, and the attention over the lists against
// paged_attention, on query blocks the policy classifies (models/stem_policy.h; its schedule and
// step layout: tests/models/test_stem_policy.cc). Chunked prefill's selections:
// tests/kernels/test_stem_chunks.cc.
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

TEST_CASE("stem kernel parameters and the query blocks a planner is handed are checked") {
  StemKernelParams p;
  check_stem_kernel_params(p);
  p.stride = 5;
  STEM_CHECK_ERROR(check_stem_kernel_params(p), "must divide the block size");
  p = StemKernelParams{};
  p.window_blocks = 0;
  STEM_CHECK_ERROR(check_stem_kernel_params(p), "window blocks");
  p = StemKernelParams{};
  p.lambda = -1;
  STEM_CHECK_ERROR(check_stem_kernel_params(p), "lambda");
  p = StemKernelParams{};
  p.threshold = 1.5;
  STEM_CHECK_ERROR(check_stem_kernel_params(p), "threshold");

  // A 300-token prompt in one step (blocks 0..2 of 128, the last partial and sparse) and a decode
  // row at position 99 of another sequence (its block 0, dense).
  p = StemKernelParams{};
  const std::vector<int32_t> lens = {300, 100}, starts = {0, 300, 301};
  const std::vector<StemQueryBlock> good = {
      {.seq = 0, .block = 0, .list_bound = 1},
      {.seq = 0, .block = 1, .list_bound = 2},
      {.seq = 0, .block = 2, .sparse = true, .budget = 1, .key_end = 300, .list_bound = 3},
      {.seq = 1, .block = 0, .list_bound = 1},
  };
  check_stem_query_blocks(good, lens, starts, p);
  check_stem_query_blocks({}, lens, starts, p);  // a step with no query block planned
  auto bad = [&](auto change) {
    std::vector<StemQueryBlock> b = good;
    change(b);
    return ktest::error_of([&] { check_stem_query_blocks(b, lens, starts, p); });
  };
  CHECK(ktest::contains(bad([](auto& b) { b[3].seq = 2; }), "names sequence 2 of 2"));
  CHECK(ktest::contains(bad([](auto& b) { std::swap(b[0], b[1]); }), "out of order"));
  CHECK(ktest::contains(bad([](auto& b) { std::swap(b[2], b[3]); }), "out of order"));
  CHECK(ktest::contains(bad([](auto& b) { b[2].block = 3; }), "has no rows in this step"));
  CHECK(ktest::contains(bad([](auto& b) { b[2].key_end = 384; }), "not whole in the step or has key_end 384"));
  CHECK(ktest::contains(bad([](auto& b) { b[2].list_bound = 4; }), "list bound 4"));
  CHECK(ktest::contains(bad([](auto& b) { b[3].sparse = true, b[3].key_end = 100, b[3].list_bound = 1; }),
                        "not whole in the step"));  // its block starts before the step's row
  CHECK(ktest::contains(bad([](auto& b) { b[1].list_bound = 1; }), "dense query block 1"));
  CHECK(ktest::contains(bad([](auto& b) { b[1].first_key = 2, b[1].list_bound = 0; }), "first key block 2"));
  STEM_CHECK_ERROR(check_stem_query_blocks(good, lens, std::vector<int32_t>{0, 300}, p), "query_start");

  // The CPU planner checks them before anything else.
  std::mt19937_64 rng(ktest::test_seed());
  Step step(rng, 2, 1, 16, 16, {{300, 300}, {100, 1}}, {300, 100});
  std::vector<StemQueryBlock> late = good;
  late[2].key_end = 299;
  STEM_CHECK_ERROR(cpu::stem_plan(Step::view(step.q, {step.tokens, 2, 16}), step.cache_view(step.k_cache),
                                  step.cache_view(step.v_cache), step.table_view(), step.lens_view(), step.starts_view(),
                                  late, 0.25f, p),
                   "key_end 299");
  const cpu::StemPlan plan = cpu::stem_plan(Step::view(step.q, {step.tokens, 2, 16}), step.cache_view(step.k_cache),
                                            step.cache_view(step.v_cache), step.table_view(), step.lens_view(),
                                            step.starts_view(), good, 0.25f, p);
  CHECK(plan.n_qblocks() == 4);
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
