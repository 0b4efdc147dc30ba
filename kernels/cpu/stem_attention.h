// Attention over Stem's block lists on the CPU (fp32): the reference the CUDA block-sparse prefill
// is checked against on Stem's selections, and the CPU backend's Stem prefill.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/cpu/stem_plan.h"
#include "kernels/view.h"

namespace stem::cpu {

// Arguments as paged_attention (kernels/cpu/attention.h). Each row of query block (s, i) of the
// plan, head h, attends to the cache positions p ≤ its own (and inside the sliding window) whose
// block p / plan.block_size is on the list of (i, h); an empty list gives zeros. Rows that no
// query block of the plan covers are left untouched. With every causal block listed this is
// paged_attention, bit for bit (same order of the same float operations).
void block_sparse_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                            const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                            const TensorView& query_start, const StemPlan& plan, float scale, int64_t sliding_window);

// Stem prefill on the CPU: stem_plan over the step's classified query blocks, then
// block_sparse_attention. Which layers call it is the model's policy (models/stem_policy.h).
void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  std::span<const StemQueryBlock> blocks, float scale, int64_t sliding_window,
                  const StemKernelParams& params);

}  // namespace stem::cpu
