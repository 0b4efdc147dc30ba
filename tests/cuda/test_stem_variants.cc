// The CUDA planner's selection variants (StemSettings::selector, position_decay, lambda = 0; the
// baselines of bench/eval/) against the CPU reference: the same lists for every variant, up to
// blocks at the selection's cut whose scores the estimate's rounding can reorder; None exactly;
// attention over the threshold lists within bf16 tolerance.
#include <algorithm>
#include <iterator>
#include <map>

#include "kernels/cpu/stem_attention.h"
#include "kernels/cuda/stem.cuh"
#include "tests/cuda/test_attention_common.h"
#include "tests/cuda/test_stem_util.h"

using namespace stem;
using attn_test::PagedStep;
using attn_test::Seq;
using stem_test::CpuViews;
using stem_test::HostLists;

namespace {

struct Variant {
  const char* name;
  StemSettings settings;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  StemSettings st;
  st.min_prompt_len = 0;
  st.budget_rate = 0.5;  // sparse from short prompts on
  v.push_back({"stem rate 0.5", st});
  st.lambda = 0;
  v.push_back({"no value bonus", st});
  st.lambda = 0.2;
  st.position_decay = false;
  v.push_back({"no position decay", st});
  st.lambda = 0;
  v.push_back({"uniform top-k", st});
  st = StemSettings{};
  st.min_prompt_len = 0;
  st.selector = StemSelector::Threshold;
  st.lambda = 0;
  st.threshold = 0.9;
  v.push_back({"threshold 0.9", st});
  st.threshold = 0.3;
  st.lambda = 0.2;
  v.push_back({"threshold 0.3 with bonus", st});
  st = StemSettings{};
  st.min_prompt_len = 0;
  st.selector = StemSelector::None;
  st.window_blocks = 6;
  v.push_back({"sink + window", st});
  // The reference's HPC operating point (AngelSlim's hpc backend defaults): stride 16, λ 0.3, α 1.0.
  st = StemSettings{};
  st.min_prompt_len = 0;
  st.budget_rate = 0.5;
  st.stride = 16;
  st.lambda = 0.3;
  st.alpha = 1.0;
  v.push_back({"reference hpc: stride 16, lambda 0.3, alpha 1", st});
  // The adaptive budget: the threshold's blocks, at most k(i) (both branches at these settings).
  st = StemSettings{};
  st.min_prompt_len = 0;
  st.budget_rate = 0.5;
  st.selector = StemSelector::Adaptive;
  st.threshold = 0.6;
  v.push_back({"adaptive 0.6 within rate 0.5", st});
  st.threshold = 0.97;
  st.budget_rate = 0.25;
  v.push_back({"adaptive 0.97 within rate 0.25", st});
  return v;
}

// Where the CPU's selection of a row cuts its ranking: the scores of the last block kept by score
// and of the first one left out (absent: NaN). A device list may differ only by blocks whose
// scores are within rounding of these.
std::pair<float, float> cut_scores(const std::vector<float>& ranked, const StemQueryBlock& b, const StemSettings& st) {
  std::vector<float> sorted = ranked;
  std::stable_sort(sorted.begin(), sorted.end(), std::greater<float>());
  size_t kept = 0;
  if (st.selector == StemSelector::TopK) kept = static_cast<size_t>(b.budget);
  if (st.selector == StemSelector::Threshold) kept = cpu::stem_threshold_select(ranked, st.threshold).size();
  if (st.selector == StemSelector::Adaptive)
    kept = std::min(cpu::stem_threshold_select(ranked, st.threshold).size(), static_cast<size_t>(b.budget));
  if (kept == 0) return {NAN, NAN};
  return {sorted[kept - 1], kept < sorted.size() ? sorted[kept] : NAN};
}

}  // namespace

TEST_CASE("cuda stem selection variants match the CPU reference") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // A whole 10K prompt, a chunk of another that starts mid-block, and a decode row (dense).
  PagedStep step(rng, 8, 2, 64, 16, {{10000, 10000}, {7000, 2300}, {3000, 1}}, 2.f);
  CpuViews cpu(step, {10000, 9000, 2999});
  const float scale = attn_test::default_scale(64);
  for (const Variant& v : variants()) {
    INFO(v.name);
    const StemSettings& st = v.settings;
    cpu::StemScores scores;
    const cpu::StemPlan ref = cpu::stem_plan(cpu.q_view, cpu.k_view, cpu.v_view, cpu.table_view, cpu.lens_view,
                                             cpu.starts_view, cpu.blocks(st), scale, st, &scores);
    const cuda::StemPlan plan = stem_test::plan_on_device(step, cpu, st);
    REQUIRE(plan.sparse_blocks().size() == scores.blocks.size());
    REQUIRE(scores.blocks.size() > 60);
    const HostLists lists = stem_test::download(plan);
    std::map<std::pair<int32_t, int32_t>, size_t> row_of;
    for (size_t r = 0; r < scores.blocks.size(); ++r) row_of[{scores.blocks[r].seq, scores.blocks[r].block}] = r;
    int64_t compared = 0, differing = 0;
    for (int64_t b = 0; b < ref.n_qblocks(); ++b)
      for (int64_t h = 0; h < step.hq; ++h) {
        const int32_t s = ref.qblocks[2 * b], i = ref.qblocks[2 * b + 1];
        const auto cpu_list = ref.list(b, h);
        const std::vector<int32_t> want(cpu_list.begin(), cpu_list.end());
        const auto found = lists.by_key.find({s, i, static_cast<int32_t>(h)});
        REQUIRE(found != lists.by_key.end());
        ++compared;
        if (found->second == want) continue;
        ++differing;
        INFO("sequence " << s << " block " << i << " head " << h);
        REQUIRE(st.selector != StemSelector::None);  // no scores, no rounding: always equal
        const auto row = row_of.find({s, i});
        REQUIRE(row != row_of.end());  // dense lists never differ
        std::vector<float> ranked(static_cast<size_t>(i + 1));
        float largest = 0;
        for (int32_t j = 0; j <= i; ++j) {
          ranked[j] = scores.score(row->second, h, j);
          largest = std::max(largest, std::abs(ranked[j]));
        }
        const auto [last_kept, first_left] = cut_scores(ranked, scores.blocks[row->second], st);
        const float tol = 1e-4f * largest;
        std::vector<int32_t> diff;
        std::set_symmetric_difference(found->second.begin(), found->second.end(), want.begin(), want.end(),
                                      std::back_inserter(diff));
        for (int32_t j : diff) {
          INFO("block " << j << " score " << ranked[j] << " cut between " << last_kept << " and " << first_left);
          CHECK((std::abs(ranked[j] - last_kept) <= tol || std::abs(ranked[j] - first_left) <= tol));
        }
      }
    INFO(differing << " of " << compared << " lists differ at the cut");
    CHECK(differing * 20 <= compared);
    gpu_test::report_error(std::string("stem_variant_ties ") + v.name, double(differing) / double(compared));

    if (st.selector == StemSelector::Threshold && st.lambda == 0) {
      // Attention over the device's threshold lists, against the CPU over the same lists.
      step.d_out->poison();
      cuda::stem_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                         step.lens_view(), step.start_view(), cpu.batch(st), scale, 0, st, nullptr);
      std::vector<float> out(static_cast<size_t>(step.out_size()), NAN);
      cpu::block_sparse_attention(TensorView(out.data(), DType::F32, {step.tokens, step.hq, step.d}), cpu.q_view,
                                  cpu.k_view, cpu.v_view, cpu.table_view, cpu.lens_view, cpu.starts_view, lists.plan,
                                  scale, 0);
      STEM_CHECK_CLOSE("stem_prefill_threshold", step.download_out(), out, gpu_test::kBf16Tolerance);
    }
  }
}
