// The CUDA Stem planner and prefill (kernels/cuda/stem.cuh) against the CPU reference
// (kernels/cpu/stem_plan.h): the estimate within rounding, the same selection up to ties within
// rounding, attention over the lists within bf16 tolerance, chunked = unchunked, and every block
// selected = dense. Settings checks run without a GPU.
#include <algorithm>
#include <iterator>
#include <map>
#include <numeric>
#include <tuple>

#include "kernels/cpu/stem_attention.h"
#include "kernels/cuda/stem.cuh"
#include "tests/cuda/test_attention_common.h"
#include "tests/cuda/test_stem_util.h"

using namespace stem;
using attn_test::PagedStep;
using attn_test::Seq;

namespace {

using stem_test::CpuViews;
using stem_test::download;
using stem_test::download_view;
using stem_test::HostLists;
using stem_test::plan_on_device;

struct Config {
  const char* name;
  int64_t hq, hkv, d, page_size;
  std::vector<Seq> seqs;
  std::vector<int32_t> prompts;
};

// A long prompt in one step (2 GEMM column tiles), a short prompt (dense by length), a chunk of a
// prompt that starts mid-block, a decode row; and a 40K prompt (several row and column tiles).
const std::vector<Config> kConfigs = {
    {"gqa4 d128 mixed step", 8, 2, 128, 16, {{16461, 16461}, {3000, 3000}, {12000, 1500}, {5000, 1}}, {16461, 3000, 12000, 4999}},
    {"gqa4 d64 40K prompt", 4, 1, 64, 64, {{40000, 40000}}, {40000}},
};

}  // namespace

TEST_CASE("cuda stem estimate, selection and attention match the CPU reference") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t which = GENERATE(0, 1);
  const Config& c = kConfigs[which];
  INFO(c.name);
  PagedStep step(rng, c.hq, c.hkv, c.d, c.page_size, c.seqs);
  CpuViews cpu(step, c.prompts);
  const StemSettings st;
  const float scale = attn_test::default_scale(c.d);

  cpu::StemScores scores;
  const cpu::StemPlan ref_plan = cpu::stem_plan(cpu.q_view, cpu.k_view, cpu.v_view, cpu.table_view, cpu.lens_view,
                                                cpu.starts_view, cpu.blocks(st), scale, st, &scores);
  const cuda::StemPlan plan = plan_on_device(step, cpu, st);
  REQUIRE(plan.sparse_blocks().size() == scores.blocks.size());
  REQUIRE(!scores.blocks.empty());

  // The estimate: M[i, j ≤ i] of every sparse block and head.
  const std::vector<float> est = download_view<float>(plan.estimate(), plan.estimate().numel());
  std::vector<float> got, want;
  for (size_t r = 0; r < scores.blocks.size(); ++r) {
    REQUIRE(plan.sparse_blocks()[r].block == scores.blocks[r].block);
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t j = 0; j <= scores.blocks[r].block; ++j) {
        got.push_back(est[(r * c.hq + h) * plan.estimate_cols() + j]);
        want.push_back(scores.logit[(r * c.hq + h) * scores.cols + j]);
      }
  }
  // The GEMM's bf16 hi + lo operands keep ~16 bits: far inside bf16's 1e-2, near an f32 GEMM's.
  STEM_CHECK_CLOSE(std::string("stem_estimate ") + c.name, got, want, 1e-4);

  // The selection: equal sets, except blocks whose CPU score is within rounding of the k-th score.
  const HostLists lists = download(plan);
  std::map<std::pair<int32_t, int32_t>, size_t> row_of;
  for (size_t r = 0; r < scores.blocks.size(); ++r) row_of[{scores.blocks[r].seq, scores.blocks[r].block}] = r;
  int64_t compared = 0, differing = 0;
  for (int64_t b = 0; b < ref_plan.n_qblocks(); ++b)
    for (int64_t h = 0; h < c.hq; ++h) {
      const int32_t s = ref_plan.qblocks[2 * b], i = ref_plan.qblocks[2 * b + 1];
      const auto cpu_list = ref_plan.list(b, h);
      const std::vector<int32_t> want_list(cpu_list.begin(), cpu_list.end());
      const auto found = lists.by_key.find({s, i, static_cast<int32_t>(h)});
      REQUIRE(found != lists.by_key.end());
      ++compared;
      if (found->second == want_list) continue;
      const auto row = row_of.find({s, i});
      INFO("sequence " << s << " block " << i << " head " << h);
      REQUIRE(row != row_of.end());  // dense lists never differ
      std::vector<float> ranked(static_cast<size_t>(i + 1));
      float largest = 0;
      for (int32_t j = 0; j <= i; ++j) {
        ranked[j] = scores.score(row->second, h, j);
        largest = std::max(largest, std::abs(ranked[j]));
      }
      std::vector<float> sorted = ranked;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const float kth = sorted[scores.blocks[row->second].budget - 1], tol = 1e-4f * largest;
      std::vector<int32_t> diff;
      std::set_symmetric_difference(found->second.begin(), found->second.end(), want_list.begin(), want_list.end(),
                                    std::back_inserter(diff));
      for (int32_t j : diff) {
        INFO("block " << j << " score " << ranked[j] << " k-th " << kth);
        CHECK(std::abs(ranked[j] - kth) <= tol);
      }
      ++differing;
    }
  INFO(differing << " of " << compared << " lists differ by near-ties");
  CHECK(differing * 20 <= compared);  // near-ties are rare: a sanity bound, the check above is the test
  gpu_test::report_error(std::string("stem_selection_ties ") + c.name, double(differing) / double(compared));

  // Attention: stem_prefill against the CPU attention over the device's own lists.
  step.d_out->poison();
  cuda::stem_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(), step.lens_view(),
                     step.start_view(), cpu.batch(st), scale, 0, st, nullptr);
  std::vector<float> ref(static_cast<size_t>(step.out_size()), NAN);
  cpu::block_sparse_attention(TensorView(ref.data(), DType::F32, {step.tokens, c.hq, c.d}), cpu.q_view, cpu.k_view,
                              cpu.v_view, cpu.table_view, cpu.lens_view, cpu.starts_view, lists.plan, scale, 0);
  STEM_CHECK_CLOSE(std::string("stem_prefill ") + c.name, step.download_out(), ref, gpu_test::kBf16Tolerance);
  // The lists are sparse where the prompt is long.
  CHECK(lists.plan.block_indices.size() < ref_plan.block_indices.size() + ref_plan.block_indices.size() / 100);
}

TEST_CASE("cuda stem chunked and unchunked prefill choose the same blocks") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int32_t len = 20000;  // nb = 157, k_s = int(61.4) = 61
  PagedStep step(rng, 8, 2, 128, 16, {{len, len}});
  CpuViews cpu(step, {len});
  const StemSettings st;
  const HostLists whole = download(plan_on_device(step, cpu, st));
  const int32_t chunk = GENERATE(4096, 2048 + 100);
  INFO("chunk " << chunk);
  int64_t same = 0;
  for (int32_t begin = 0; begin < len; begin += chunk) {
    const int32_t end = std::min(len, begin + chunk);
    const std::vector<int32_t> lens = {end}, starts = {0, end - begin}, prompts = {len};
    const auto d_lens = gpu_test::upload(lens), d_starts = gpu_test::upload(starts);
    const std::vector<StemQueryBlock> blocks = stem_query_blocks(lens, starts, prompts, 0, st);
    const cuda::StemPlan plan = cuda::stem_plan(
        step.q_view().rows(begin, end), step.k_view(), step.v_view(), step.table_view(),
        d_lens->view(DType::I32, {1}), d_starts->view(DType::I32, {2}), cuda::StemBatch{lens, starts, blocks},
        attn_test::default_scale(128), 0, st, nullptr);
    const HostLists part = download(plan);
    for (const auto& [key, list] : part.by_key) {
      const int32_t i = std::get<1>(key);
      const bool cut = i * 128 < begin || std::min(len, (i + 1) * 128) > end;
      INFO("block " << i << " head " << std::get<2>(key));
      if (cut) continue;  // dense in this chunk, checked by the CPU tests
      CHECK(list == whole.by_key.at(key));
      ++same;
    }
  }
  // Every block but the ones a chunk boundary cuts (at most one per chunk).
  CHECK(same >= (157 - (len + chunk - 1) / chunk) * 8);
}

TEST_CASE("cuda stem with every block selected equals dense prefill") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  PagedStep step(rng, 8, 2, 128, 16, {{9000, 9000}, {3000, 1000}});
  CpuViews cpu(step, {9000, 5000});
  StemSettings st;
  st.budget_rate = 1000;  // k_s = nb: every causal block
  const float scale = attn_test::default_scale(128);
  const cuda::StemPlan plan = plan_on_device(step, cpu, st);
  const HostLists lists = download(plan);
  for (const auto& [key, list] : lists.by_key) {
    std::vector<int32_t> dense(static_cast<size_t>(std::get<1>(key) + 1));
    std::iota(dense.begin(), dense.end(), 0);
    CHECK(list == dense);
  }
  step.d_out->poison();
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), plan.qblocks(), plan.block_offsets(),
                             plan.block_indices(), scale, 0, nullptr);
  const std::vector<float> stem_out = step.download_out();
  step.d_out->poison();
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), plan.qblocks(), TensorView(), TensorView(), scale, 0,
                             nullptr);
  const std::vector<float> dense_out = step.download_out();
  CHECK(gpu_test::count_nan(stem_out) == 0);
  CHECK(stem_out == dense_out);
  // And stem_prefill takes the dense path for it, matching the CPU twin.
  step.d_out->poison();
  cuda::stem_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(), step.lens_view(),
                     step.start_view(), cpu.batch(st), scale, 0, st, nullptr);
  STEM_CHECK_CLOSE("stem_prefill_all_blocks", step.download_out(), step.reference(scale, 0), gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda stem rejects settings the kernels cannot run") {
  // Host checks only: no device memory is touched, so this runs without a GPU.
  alignas(16) static uint16_t fake[16];
  const TensorView q(fake, DType::BF16, {1, 8, 128}), cache(fake, DType::BF16, {1, 16, 2, 128});
  const TensorView table(fake, DType::I32, {1, 1}), lens(fake, DType::I32, {1}), starts(fake, DType::I32, {2});
  const std::vector<int32_t> h_lens = {1}, h_starts = {0, 1};
  const std::vector<StemQueryBlock> h_blocks = {{.seq = 0, .block = 0, .list_bound = 1}};
  const cuda::StemBatch batch{h_lens, h_starts, h_blocks};
  StemSettings st;
  st.block_size = 64;
  st.stride = 8;
  STEM_CHECK_ERROR(cuda::stem_plan(q, cache, cache, table, lens, starts, batch, 0.1f, 0, st, nullptr), "block size must be 128");
  st = StemSettings{};
  st.stride = 1;
  STEM_CHECK_ERROR(cuda::stem_plan(q, cache, cache, table, lens, starts, batch, 0.1f, 0, st, nullptr), "pooling threads");
  st = StemSettings{};
  // Host copies that do not match the step, and query blocks the planner cannot take (the policy's
  // own inputs, the prompt lengths: tests/models/test_stem_policy.cc).
  const std::vector<int32_t> short_starts = {0};
  STEM_CHECK_ERROR(cuda::stem_plan(q, cache, cache, table, lens, starts, {h_lens, short_starts, h_blocks}, 0.1f, 0, st,
                                   nullptr),
                   "query_start");
  const std::vector<StemQueryBlock> other_seq = {{.seq = 1, .block = 0, .list_bound = 1}};
  STEM_CHECK_ERROR(cuda::stem_plan(q, cache, cache, table, lens, starts, {h_lens, h_starts, other_seq}, 0.1f, 0, st,
                                   nullptr),
                   "names sequence 1 of 1");
  STEM_CHECK_ERROR(cuda::stem_step({h_lens, h_starts, other_seq}, 8, 2, 128, st, nullptr), "names sequence 1 of 1");
}
