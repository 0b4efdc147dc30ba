// Stem's policy (models/stem_policy.h): the budget schedule against hand arithmetic and the
// reference's float64 torch.linspace, the settings' checks, the step layout's rules (which query
// blocks are sparse, chunking, the dense tail), the uniform and causal schedules, and the
// selection's names. What the kernels do with the classified blocks: tests/kernels/test_stem*.cc.
#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "models/stem_policy.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"  // STEM_CHECK_ERROR

using namespace stem;

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
  // Each sequence needs its whole prompt's length.
  STEM_CHECK_ERROR(stem_query_blocks(lens, starts, std::vector<int32_t>{}, 0, st), "prompt_lens");
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

TEST_CASE("stem selectors: names, parsing and checks") {
  for (StemSelector s : {StemSelector::TopK, StemSelector::Threshold, StemSelector::None, StemSelector::Adaptive})
    CHECK(parse_stem_selector(stem_selector_name(s)) == s);
  CHECK(std::string(stem_selector_name(StemSelector::Threshold)) == "threshold");
  CHECK(std::string(stem_selector_name(StemSelector::Adaptive)) == "adaptive");
  STEM_CHECK_ERROR(parse_stem_selector("xattention"), "topk, threshold, none, adaptive");
  StemSettings st;
  CHECK(st.selector == StemSelector::TopK);  // the defaults are Stem
  CHECK(st.position_decay);
  st.threshold = 0;
  STEM_CHECK_ERROR(check_stem_settings(st), "threshold");
  st.threshold = 1.5;
  STEM_CHECK_ERROR(check_stem_settings(st), "threshold");
  st.threshold = 1;
  check_stem_settings(st);
}

TEST_CASE("stem without position decay spreads the decayed total budget evenly") {
  StemSettings st;
  st.position_decay = false;
  // 8K (nb 64): the decayed rows keep min(k(i), i + 1): rows 0..41 keep 1..42 (903 blocks), rows
  // 42..63 keep 42, 41, 40, 40, 39, 39, 38, 37, 37, 36, 36, 35, 34, 34, 33, 33, 32, 31, 31, 30, 30,
  // 29 (777): E = 1680. f(k) = 64k − k(k − 1)/2: f(36) = 2304 − 630 = 1674, f(37) = 2368 − 666 = 1702.
  CHECK(stem_uniform_budget(64, st) == 36);
  for (int64_t i : {0, 35, 36, 63}) CHECK(stem_row_budget(64, i, st) == 36);
  // nb 16 at budget rate 0.5: k_s = 8; k(8..15) = 8, 7, 7, 6, 6, 6, 5, 5 (8 − 2.4·(i − 8)/7, floored):
  // E = (1 + .. + 8) + 50 = 86; f(6) = 96 − 15 = 81 and f(7) = 112 − 21 = 91 tie at 5: the smaller.
  st.budget_rate = 0.5;
  CHECK(stem_uniform_budget(16, st) == 6);
  st.budget_rate = 1;

  // In a step: every block from k = 36 on is sparse with budget 36; the ones before keep everything.
  st.min_prompt_len = 0;
  const std::vector<int32_t> lens = {8192}, starts = {0, 8192}, prompts = {8192};
  const std::vector<StemQueryBlock> blocks = stem_query_blocks(lens, starts, prompts, 0, st);
  REQUIRE(blocks.size() == 64);
  for (const StemQueryBlock& b : blocks) {
    INFO("block " << b.block);
    CHECK(b.sparse == (b.block >= 36));
    if (b.sparse) CHECK(b.budget == 36);
  }
  // The decayed schedule is untouched by the setting's default.
  CHECK(stem_row_budget(64, 63, StemSettings{}) == 29);
}

TEST_CASE("the causal schedule: a block's budget is the start budget of a prompt that ends with it") {
  StemSettings st;
  st.causal = true;
  CHECK(stem_selection_causal(st));
  CHECK_FALSE(stem_selection_causal(StemSettings{}));  // the paper's schedule depends on nb
  for (int64_t nb : {64, 256, 1024})
    for (int64_t i : {0, 54, 55, 100, 159, 160, 255}) {
      if (i >= nb) continue;
      INFO("nb " << nb << ", block " << i);
      CHECK(stem_row_budget(nb, i, st) == stem_start_budget(i + 1, st));
    }
  CHECK(stem_row_budget(256, 54, st) == 55);    // 55 blocks: all of them (dense)
  CHECK(stem_row_budget(256, 55, st) == 41);    // int(0.2·56 + 30)
  CHECK(stem_row_budget(256, 255, st) == 55);   // int(0.1·256) + 30
  CHECK(stem_row_budget(1024, 1023, st) == 132);
  st.budget_rate = 0.5;
  CHECK(stem_row_budget(1024, 1023, st) == 66);  // floor(132 · 0.5)
}

TEST_CASE("the selection named for the logs") {
  StemSettings threshold;
  threshold.selector = StemSelector::Threshold;
  threshold.threshold = 0.8738;
  CHECK(stem_selection_name(threshold) == "threshold 0.8738");
  CHECK(stem_selection_name(StemSettings{}) == "topk (paper schedule, alpha 0.7, budget rate 1)");
  StemSettings causal;
  causal.causal = true;
  causal.budget_rate = 0.5;
  CHECK(stem_selection_name(causal) == "topk (causal schedule, budget rate 0.5)");
}
