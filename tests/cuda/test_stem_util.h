// Shared by the CUDA Stem tests (tests/cuda/test_stem*.cc): device plans brought back to the host,
// a step's inputs as the CPU reference takes them, and the planner called on a PagedStep. The query
// blocks are classified by the policy (models/stem_policy.h), as the backends do.
#pragma once
#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "kernels/cpu/stem_plan.h"
#include "kernels/cuda/stem.cuh"
#include "models/stem_policy.h"
#include "tests/cuda/test_attention_common.h"

namespace stem::stem_test {

using attn_test::PagedStep;

// The first n elements of a device view, after the device is idle (a kernel's fault shows here).
template <typename T>
inline std::vector<T> download_view(const TensorView& v, int64_t n) {
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> host(static_cast<size_t>(n));
  if (n > 0) CUDA_CHECK(cudaMemcpy(host.data(), v.data, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// A plan's lists brought back to the host, keyed by (sequence, query block, head).
struct HostLists {
  cpu::StemPlan plan;  // block size 128, the device's order
  std::map<std::tuple<int32_t, int32_t, int32_t>, std::vector<int32_t>> by_key;
};

inline HostLists download(const cuda::StemPlan& plan) {
  HostLists h;
  const int64_t items = plan.n_qblocks() * plan.q_heads();
  h.plan.q_heads = plan.q_heads();
  h.plan.block_size = 128;
  h.plan.qblocks = download_view<int32_t>(plan.qblocks(), plan.n_qblocks() * 2);
  h.plan.block_offsets = download_view<int32_t>(plan.block_offsets(), items + 1);
  h.plan.block_indices = download_view<int32_t>(plan.block_indices(), h.plan.block_offsets.back());
  for (int64_t b = 0; b < plan.n_qblocks(); ++b)
    for (int64_t hd = 0; hd < plan.q_heads(); ++hd) {
      const auto list = h.plan.list(b, hd);
      std::vector<int32_t> sorted(list.begin(), list.end());
      std::sort(sorted.begin(), sorted.end());
      h.by_key[{h.plan.qblocks[2 * b], h.plan.qblocks[2 * b + 1], static_cast<int32_t>(hd)}] = sorted;
    }
  return h;
}

struct CpuViews {
  std::vector<float> q;  // heads only, [T, Hq, D]
  std::vector<float> k, v;
  std::vector<int32_t> table, lens, starts, prompts;
  TensorView q_view, k_view, v_view, table_view, lens_view, starts_view;
  CpuViews(const PagedStep& step, std::vector<int32_t> prompt_lens)
      : k(step.k_cache), v(step.v_cache), table(step.page_table), lens(step.kv_lens), starts(step.query_start),
        prompts(std::move(prompt_lens)) {
    const int64_t s = static_cast<int64_t>(step.seqs.size());
    q.resize(static_cast<size_t>(step.out_size()));
    for (int64_t t = 0; t < step.tokens; ++t)
      std::copy_n(step.q.begin() + t * step.q_width, step.hq * step.d, q.begin() + t * step.hq * step.d);
    q_view = TensorView(q.data(), DType::F32, {step.tokens, step.hq, step.d});
    k_view = TensorView(k.data(), DType::F32, {step.pages, step.page_size, step.hkv, step.d});
    v_view = TensorView(v.data(), DType::F32, {step.pages, step.page_size, step.hkv, step.d});
    table_view = TensorView(table.data(), DType::I32, {s, step.max_pages});
    lens_view = TensorView(lens.data(), DType::I32, {s});
    starts_view = TensorView(starts.data(), DType::I32, {s + 1});
  }
  // The step's query blocks as the policy classifies them.
  std::vector<StemQueryBlock> blocks(const StemSettings& st) const {
    return stem_query_blocks(lens, starts, prompts, 0, st);
  }
  // The host half of the device planner's input, over blocks(st) (valid until the next call).
  cuda::StemBatch batch(const StemSettings& st) const {
    classified_ = blocks(st);
    return {lens, starts, classified_};
  }

 private:
  mutable std::vector<StemQueryBlock> classified_;
};

inline cuda::StemPlan plan_on_device(const PagedStep& step, const CpuViews& cpu, const StemSettings& st) {
  return cuda::stem_plan(step.q_view(), step.k_view(), step.v_view(), step.table_view(), step.lens_view(),
                         step.start_view(), cpu.batch(st), attn_test::default_scale(step.d), 0, st, nullptr);
}

}  // namespace stem::stem_test
