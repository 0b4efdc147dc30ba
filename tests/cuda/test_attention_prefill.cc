// The block-sparse prefill kernel against the CPU twin (dense causal lists, through the explicit
// plan, the in-kernel dense lists and the router) and against a block-restricted softmax (hand-made
// sparse lists). On Hopper, head dim 128 runs the wgmma/TMA kernel: the same checks cover it, the
// mma.sync kernel is checked beside it (STEM_PREFILL_SM90=0), and the two are compared on steps
// with many work items per CTA. Host-side checks and the plan helpers run without a GPU too.
#include <cstdlib>
#include <optional>
#include <set>

#include "tests/cuda/test_attention_common.h"

using namespace stem;
using attn_test::DevicePlan;
using attn_test::PagedStep;
using attn_test::Seq;

namespace {

struct PrefillCase {
  const char* name;
  int64_t hq, hkv, d, page_size;
  std::vector<Seq> seqs;
  int64_t window;
};

// Lengths that are not multiples of 128 or of the page, several sequences per step, chunks that
// start mid-block, GQA ratios 1, 3 and 4, both head dims, pages from 4 (a row lookup each) to 128.
const std::vector<PrefillCase> kCases = {
    {"gqa4 d128 page16 whole prompts", 8, 2, 128, 16, {{300, 300}, {1, 1}, {129, 129}, {1000, 1000}}, 0},
    {"gqa3 d64 page32 chunks", 6, 2, 64, 32, {{700, 200}, {1500, 333}, {64, 64}, {260, 5}}, 0},
    {"gqa1 d128 page128", 4, 4, 128, 128, {{257, 257}, {513, 100}}, 0},
    {"gqa4 d64 page4", 8, 2, 64, 4, {{391, 391}, {77, 10}}, 0},
    {"gqa4 d128 page8 window200", 8, 2, 128, 8, {{640, 640}, {333, 150}}, 200},
    {"gqa4 d128 page64 window300 chunk", 12, 3, 128, 64, {{1100, 1100}, {900, 257}}, 300},
};

void poison(const PagedStep& step) { step.d_out->poison(); }

// Sets an environment variable for a scope (the prefill launcher reads STEM_PREFILL_SM90 per call).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Whether launches of this head dim and page size take the Hopper kernel on this device (the rule
// of kernels/cuda/attention_prefill_sm90.cuh, with the switch at its default).
bool hopper_path(int64_t d, int64_t page_size) {
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0 && d == 128 && page_size >= 8;
}

void run_plan(const PagedStep& step, const DevicePlan& plan, float scale, int64_t window) {
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), plan.qblocks_view(), plan.offsets_view(),
                             plan.indices_view(), scale, window, nullptr);
}

}  // namespace

TEST_CASE("cuda prefill with dense causal lists matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // Indices, not from_range: Catch2 v3 keeps that in a header tests/catch.h does not include.
  const size_t which = GENERATE(0, 1, 2, 3, 4, 5);
  REQUIRE(which < kCases.size());
  const PrefillCase& c = kCases[which];
  INFO(c.name);
  PagedStep step(rng, c.hq, c.hkv, c.d, c.page_size, c.seqs, 2.f);
  const float scale = attn_test::default_scale(c.d);
  const std::vector<float> ref = step.reference(scale, c.window);

  const cuda::BlockSparsePlan plan = cuda::dense_causal_plan(step.kv_lens, step.query_start, c.hq, c.window);
  const DevicePlan dplan(plan);
  poison(step);
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), dplan.qblocks_view(), dplan.offsets_view(),
                             dplan.indices_view(), scale, c.window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_prefill_plan ") + c.name, step.download_out(), ref,
                   gpu_test::kBf16Tolerance);
  if (hopper_path(c.d, c.page_size)) {  // the mma.sync kernel stays the fallback: keep it checked
    ScopedEnv off("STEM_PREFILL_SM90", "0");
    poison(step);
    run_plan(step, dplan, scale, c.window);
    STEM_CHECK_CLOSE(std::string("attention_prefill_mma ") + c.name, step.download_out(), ref,
                     gpu_test::kBf16Tolerance);
  }

  poison(step);  // the same lists, computed in the kernel
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), dplan.qblocks_view(), TensorView(), TensorView(),
                             scale, c.window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_prefill_dense ") + c.name, step.download_out(), ref,
                   gpu_test::kBf16Tolerance);

  poison(step);  // the router: decode rows to the decode kernel, the rest planned on the device
  cuda::paged_attention(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, c.window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_router ") + c.name, step.download_out(), ref, gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda prefill reads q from fused qkv rows and may write over them") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t hq = 8, hkv = 2, d = 128;
  PagedStep step(rng, hq, hkv, d, 16, {{450, 450}, {300, 130}, {20, 1}}, 1.f, (hq + 2 * hkv) * d);
  const float scale = attn_test::default_scale(d);
  const std::vector<float> ref = step.reference(scale, 0);
  // out is q's own strided view: each CTA reads its rows before it writes them.
  cuda::paged_attention(step.q_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, 0, nullptr);
  STEM_CHECK_CLOSE("attention_router fused-qkv in place", step.download_q_heads(), ref, gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda block_sparse_prefill follows hand-made sparse block lists") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t d = GENERATE(64, 128);
  const int64_t hq = 8, hkv = 2;
  PagedStep step(rng, hq, hkv, d, 16, {{1000, 1000}, {700, 300}, {131, 131}}, 2.f);
  const float scale = attn_test::default_scale(d);

  // Random subsets of the causal blocks in random order: some without the diagonal block, some with
  // only it, and one empty list (its rows must come out as zeros).
  cuda::BlockSparsePlan plan;
  plan.qblocks = cuda::prefill_query_blocks(step.kv_lens, step.query_start);
  plan.block_offsets.push_back(0);
  std::bernoulli_distribution keep(0.45);
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int32_t i = plan.qblocks[2 * b + 1];
    for (int64_t h = 0; h < hq; ++h) {
      std::vector<int32_t> list;
      const int kind = static_cast<int>((b * hq + h) % 5);
      if (kind == 0 && b == 1) {
        // empty
      } else if (kind == 1) {
        list.push_back(i);
      } else {
        for (int32_t j = 0; j <= i; ++j)
          if (keep(rng) && !(kind == 2 && j == i)) list.push_back(j);
        if (list.empty()) list.push_back(0);
      }
      std::shuffle(list.begin(), list.end(), rng);
      plan.block_indices.insert(plan.block_indices.end(), list.begin(), list.end());
      plan.block_offsets.push_back(static_cast<int32_t>(plan.block_indices.size()));
    }
  }
  const std::vector<float> ref = step.block_reference(plan, scale);
  const DevicePlan dplan(plan);
  step.d_out->poison();
  cuda::block_sparse_prefill(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                             step.lens_view(), step.start_view(), dplan.qblocks_view(), dplan.offsets_view(),
                             dplan.indices_view(), scale, 0, nullptr);
  STEM_CHECK_CLOSE("attention_prefill_sparse d" + std::to_string(d), step.download_out(), ref,
                   gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda prefill's Hopper kernel matches the mma.sync kernel over many work items per CTA") {
  STEM_REQUIRE_GPU();
  const int64_t hq = 32, hkv = 8, d = 128;
  const int64_t page_size = GENERATE(16, 8);
  if (!hopper_path(d, page_size)) SKIP("not a compute capability 9.0 device: both runs would take the mma.sync kernel");
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed << ", page size " << page_size);
  std::mt19937_64 rng(seed);
  // ~1300 (query block, head) items, ten or so per CTA: Q buffers and the K/V ring wrap many times
  // inside a CTA. A whole prompt, a chunk starting mid-block, a one-row sequence.
  PagedStep step(rng, hq, hkv, d, page_size, {{4100, 4100}, {2600, 700}, {300, 1}}, 2.f);
  const float scale = attn_test::default_scale(d);

  // Stem-shaped lists: sinks, a window, random blocks between, in random order; some lists empty.
  cuda::BlockSparsePlan sparse;
  sparse.qblocks = cuda::prefill_query_blocks(step.kv_lens, step.query_start);
  sparse.block_offsets.push_back(0);
  std::bernoulli_distribution keep(0.3);
  for (int64_t b = 0; b < sparse.n_qblocks(); ++b) {
    const int32_t i = sparse.qblocks[2 * b + 1];
    for (int64_t h = 0; h < hq; ++h) {
      std::vector<int32_t> list;
      if ((b * hq + h) % 97 != 5)
        for (int32_t j = 0; j <= i; ++j)
          if (j < 4 || j > i - 4 || keep(rng)) list.push_back(j);
      std::shuffle(list.begin(), list.end(), rng);
      sparse.block_indices.insert(sparse.block_indices.end(), list.begin(), list.end());
      sparse.block_offsets.push_back(static_cast<int32_t>(sparse.block_indices.size()));
    }
  }
  struct Lists {
    const char* name;
    cuda::BlockSparsePlan plan;
    int64_t window;
  };
  const std::vector<Lists> runs = {
      {"dense", cuda::dense_causal_plan(step.kv_lens, step.query_start, hq), 0},
      {"sparse", sparse, 0},
      {"window1000", cuda::dense_causal_plan(step.kv_lens, step.query_start, hq, 1000), 1000},
  };
  for (const Lists& r : runs) {
    const DevicePlan dplan(r.plan);
    poison(step);
    run_plan(step, dplan, scale, r.window);
    const std::vector<float> hopper = step.download_out();
    std::vector<float> mma;
    {
      ScopedEnv off("STEM_PREFILL_SM90", "0");
      poison(step);
      run_plan(step, dplan, scale, r.window);
      mma = step.download_out();
    }
    REQUIRE(gpu_test::count_nan(mma) == 0);
    STEM_CHECK_CLOSE(std::string("attention_prefill_sm90_vs_mma ") + r.name + " page" + std::to_string(page_size),
                     hopper, mma, gpu_test::kBf16Tolerance);
  }
  // The router's device-side plan (its item count is read on the device) on the same step.
  poison(step);
  cuda::paged_attention(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                        step.lens_view(), step.start_view(), scale, 0, nullptr);
  const std::vector<float> routed = step.download_out();
  std::vector<float> mma;
  {
    ScopedEnv off("STEM_PREFILL_SM90", "0");
    poison(step);
    cuda::paged_attention(step.out_view(), step.q_view(), step.k_view(), step.v_view(), step.table_view(),
                          step.lens_view(), step.start_view(), scale, 0, nullptr);
    mma = step.download_out();
  }
  STEM_CHECK_CLOSE(std::string("attention_router_sm90_vs_mma page") + std::to_string(page_size), routed, mma,
                   gpu_test::kBf16Tolerance);
}

TEST_CASE("dense_causal_plan lists every causal block, aligned to absolute positions") {
  // No GPU needed: host helpers only.
  // A whole prompt of 300 tokens and a chunk at positions 500..699 of a 700-token prompt.
  const std::vector<int32_t> kv_lens = {300, 700}, query_start = {0, 300, 500};
  const cuda::BlockSparsePlan plan = cuda::dense_causal_plan(kv_lens, query_start, 2);
  // Latest blocks first: (1,5), (1,4), (1,3), (0,2), (0,1), (0,0).
  CHECK(plan.qblocks == std::vector<int32_t>{1, 5, 1, 4, 1, 3, 0, 2, 0, 1, 0, 0});
  REQUIRE(plan.block_offsets.size() == 13);
  auto list = [&](int b, int h) {
    return std::vector<int32_t>(plan.block_indices.begin() + plan.block_offsets[b * 2 + h],
                                plan.block_indices.begin() + plan.block_offsets[b * 2 + h + 1]);
  };
  CHECK(list(0, 1) == std::vector<int32_t>{0, 1, 2, 3, 4, 5});
  CHECK(list(5, 0) == std::vector<int32_t>{0});
  // A 200-token window: query block 5 starts at 640, so it reaches back to 441 (block 3).
  const cuda::BlockSparsePlan windowed = cuda::dense_causal_plan(kv_lens, query_start, 1, 200);
  CHECK(std::vector<int32_t>(windowed.block_indices.begin(), windowed.block_indices.begin() + windowed.block_offsets[1]) ==
        std::vector<int32_t>{3, 4, 5});
  // Chunk block 3 starts at the chunk's first row, 500: it reaches back to 301, block 2.
  CHECK(cuda::first_key_block(500, 200) == 2);
  CHECK(cuda::first_key_block(100, 0) == 0);
  CHECK(ktest::error_of([&] { cuda::prefill_query_blocks(std::vector<int32_t>{5}, std::vector<int32_t>{0, 9}); })
            .find("has 9 query rows and kv_len 5") != std::string::npos);
}

TEST_CASE("cuda attention launchers reject bad arguments before touching the GPU") {
  // Host memory stands in for device memory: every check runs before a launch.
  std::vector<uint64_t> mem(1 << 16);
  void* p = mem.data();
  const int64_t t = 4, hq = 4, hkv = 2, d = 64, pages = 2, ps = 16, s = 1;
  const TensorView q(p, DType::BF16, {t, hq, d}), out(p, DType::BF16, {t, hq, d});
  const TensorView kc(p, DType::BF16, {pages, ps, hkv, d}), table(p, DType::I32, {s, 2});
  const TensorView lens(p, DType::I32, {s}), start(p, DType::I32, {s + 1});
  auto route = [&](const TensorView& o, const TensorView& qq, const TensorView& k, float scale, int64_t window) {
    cuda::paged_attention(o, qq, k, k, table, lens, start, scale, window, nullptr);
  };
  STEM_CHECK_ERROR(route(out, TensorView(p, DType::F32, {t, hq, d}), kc, 0.125f, 0), "q must be bf16");
  STEM_CHECK_ERROR(route(TensorView(p, DType::BF16, {t, hq, 96}), TensorView(p, DType::BF16, {t, hq, 96}),
                         TensorView(p, DType::BF16, {pages, ps, hkv, 96}), 0.1f, 0),
                   "head dim must be 64 or 128");
  STEM_CHECK_ERROR(route(out, q, TensorView(p, DType::BF16, {pages, 48, hkv, d}), 0.125f, 0),
                   "page_size must be a power of two dividing 128");
  STEM_CHECK_ERROR(route(out, TensorView(p, DType::BF16, {t, 3, d}), kc, 0.125f, 0), "must match q");
  STEM_CHECK_ERROR(route(TensorView(p, DType::BF16, {t, 3, d}), TensorView(p, DType::BF16, {t, 3, d}), kc, 0.125f, 0),
                   "not a multiple of the cache's 2 KV heads");
  STEM_CHECK_ERROR(route(out, q, kc, 0.f, 0), "scale must be positive");
  STEM_CHECK_ERROR(route(out, q, kc, 0.125f, -3), "sliding_window must be >= 0");
  TensorView odd = q;
  odd.stride[0] = hq * d + 4;  // rows 8 bytes apart from 16-byte alignment
  odd.stride[1] = d;
  STEM_CHECK_ERROR(route(out, odd, kc, 0.125f, 0), "16-byte aligned");
  const TensorView qblocks(p, DType::I32, {3, 2});
  STEM_CHECK_ERROR(cuda::block_sparse_prefill(out, q, kc, kc, table, lens, start, qblocks,
                                              TensorView(p, DType::I32, {5}), TensorView(p, DType::I32, {7}), 0.125f,
                                              0, nullptr),
                   "query blocks x q heads + 1");
  STEM_CHECK_ERROR(cuda::block_sparse_prefill(out, q, kc, kc, table, lens, start, TensorView(p, DType::I32, {3, 3}),
                                              TensorView(), TensorView(), 0.125f, 0, nullptr),
                   "(sequence, query block) pairs");
}
