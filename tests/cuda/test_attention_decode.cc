// The paged decode kernel (and the router on mixed steps) against the CPU twin: single and few rows
// per sequence, GQA ratios 1, 3, 4 and 32, both head dims, long contexts split over CTAs.
#include "tests/cuda/test_attention_common.h"

using namespace stem;
using attn_test::PagedStep;
using attn_test::Seq;

namespace {

struct DecodeCase {
  const char* name;
  int64_t hq, hkv, d, page_size;
  std::vector<Seq> seqs;
  int64_t window;
};

// Rows per sequence stay within decode_max_rows (16 query vectors per KV head); an idle sequence
// with a long context sits among them; 8K contexts with few sequences split over many CTAs.
const std::vector<DecodeCase> kCases = {
    {"gqa4 d128 page16 8K", 32, 8, 128, 16, {{1, 1}, {37, 1}, {1000, 1}, {8192, 1}, {5000, 0}}, 0},
    {"gqa3 d64 page32 few rows", 12, 4, 64, 32, {{300, 5}, {1200, 3}, {64, 2}}, 0},
    {"gqa1 d128 page64 8K 16 rows", 4, 4, 128, 64, {{8192, 16}, {100, 7}}, 0},
    {"gqa4 d64 page8 window100", 8, 2, 64, 8, {{2000, 1}, {150, 4}}, 100},
    {"gqa32 d128 page16", 64, 2, 128, 16, {{3000, 1}, {50, 1}}, 0},
    {"gqa4 d128 page4 8K batch", 8, 2, 128, 4, {{8000, 2}, {8191, 1}, {4097, 4}}, 0},
};

}  // namespace

TEST_CASE("cuda paged_decode matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // Indices, not from_range: Catch2 v3 keeps that in a header tests/catch.h does not include.
  const size_t which = GENERATE(0, 1, 2, 3, 4, 5);
  REQUIRE(which < kCases.size());
  const DecodeCase& c = kCases[which];
  INFO(c.name);
  for (const Seq& s : c.seqs) REQUIRE(s.rows <= cuda::decode_max_rows(c.hq, c.hkv));
  PagedStep step(rng, c.hq, c.hkv, c.d, c.page_size, c.seqs, 2.f);
  const float scale = attn_test::default_scale(c.d);
  const std::vector<float> ref = step.reference(scale, c.window);

  step.d_out->poison();
  cuda::paged_decode(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                     step.lens_view(), step.start_view(), scale, c.window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_decode ") + c.name, step.download_out(), ref, gpu_test::kBf16Tolerance);

  step.d_out->poison();
  cuda::paged_attention(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, c.window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_router ") + c.name, step.download_out(), ref, gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda paged_decode leaves longer sequences to the prefill kernel") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // decode_max_rows(8, 2) = 4: the 5-row chunk is not the decode kernel's.
  PagedStep step(rng, 8, 2, 64, 16, {{40, 1}, {90, 5}}, 1.f);
  step.d_out->poison();
  cuda::paged_decode(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                     step.lens_view(), step.start_view(), 0.125f, 0, nullptr);
  const std::vector<float> out = step.download_out();
  const int64_t row = 8 * 64;
  CHECK(gpu_test::count_nan(std::vector<float>(out.begin(), out.begin() + row)) == 0);
  CHECK(gpu_test::count_nan(std::vector<float>(out.begin() + row, out.end())) == 5 * row);
}

TEST_CASE("cuda paged_attention routes a mixed step of decode rows and prefill chunks") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t d = GENERATE(64, 128);
  const int64_t window = GENERATE(0, 150);
  const int64_t hq = 8, hkv = 2;
  // decode_max_rows = 4: rows 1, 2 and 4 decode; 5, 64 and 200 prefill; one sequence idle.
  PagedStep step(rng, hq, hkv, d, 16, {{500, 1}, {700, 200}, {64, 64}, {3000, 2}, {10, 0}, {129, 4}, {333, 5}}, 2.f,
                 (hq + 2 * hkv) * d);
  const float scale = attn_test::default_scale(d);
  const std::vector<float> ref = step.reference(scale, window);
  step.d_out->poison();
  cuda::paged_attention(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, window, nullptr);
  const std::string what = "attention_router mixed d" + std::to_string(d) + " window " + std::to_string(window);
  STEM_CHECK_CLOSE(what, step.download_out(), ref, gpu_test::kBf16Tolerance);
  // In place over fused qkv rows, as the model calls it.
  cuda::paged_attention(step.q_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, window, nullptr);
  STEM_CHECK_CLOSE(what + " in place", step.download_q_heads(), ref, gpu_test::kBf16Tolerance);
}
