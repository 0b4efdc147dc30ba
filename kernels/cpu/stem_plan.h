// The CPU reference of Stem's selection (DESIGN.md §3): the pooled antidiagonal estimate, the value
// bonus, the position-decay budget and the top-k ∪ sink ∪ window selection, producing the block
// lists that block-sparse attention takes (the layout of kernels/cuda/attention_prefill.cuh), and
// the attention over them (stem_attention.h). fp32 inputs; sums in double. The oracle for the CUDA
// planner (kernels/cuda/stem.cuh).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/stem.h"
#include "kernels/view.h"

namespace stem::cpu {

// Block lists in CSR, as cuda::BlockSparsePlan (blocks of settings.block_size positions):
//   qblocks        [n_qblocks·2]: (sequence s, query block i), in the order of the blocks given
//   block_offsets  [n_qblocks·Hq + 1]: the key blocks of query block b, head h are
//   block_indices  [block_offsets[b·Hq + h] .. block_offsets[b·Hq + h + 1]), ascending j.
struct StemPlan {
  int64_t q_heads = 0, block_size = 0;
  std::vector<int32_t> qblocks, block_offsets, block_indices;
  int64_t n_qblocks() const { return static_cast<int64_t>(qblocks.size() / 2); }
  std::span<const int32_t> list(int64_t b, int64_t h) const {
    const int32_t begin = block_offsets[b * q_heads + h], end = block_offsets[b * q_heads + h + 1];
    return {block_indices.data() + begin, static_cast<size_t>(end - begin)};
  }
};

// What the selection looked at, for the tests: one row per sparse query block, in the order of
// `blocks`, with cols = the longest causal row (max i + 1).
//   logit[row][h][j]  the pooled estimate M[i,j] without the bonus (j ≤ i; 0 past i)
//   bonus[row][g][j]  vb[j] of query block i's statistics, per KV head g (j ≤ i; 0 past i)
// A block's score is logit + bonus (in float, as the selection adds them).
struct StemScores {
  std::vector<StemQueryBlock> blocks;
  int64_t q_heads = 0, kv_heads = 0, cols = 0;
  std::vector<float> logit, bonus;
  float score(int64_t row, int64_t h, int64_t j) const {
    return logit[(row * q_heads + h) * cols + j] + bonus[(row * kv_heads + h / (q_heads / kv_heads)) * cols + j];
  }
};

// q: f32 [T,Hq,D]; k_cache, v_cache: f32 [P,page_size,Hkv,D]; page_table, kv_lens, query_start:
// as in kernels/cpu/attention.h (host memory). blocks: the step's query blocks as the policy
// classified them (models/stem_policy.h; checked by check_stem_query_blocks):
// the sparse ones are scored and selected with their budgets, the dense ones list every causal
// block from first_key. scale: the attention's (1/√D), which the estimate's 1/(√d·S·R²) uses too.
// Blocks are params.block_size positions. Fills *scores when given.
StemPlan stem_plan(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   std::span<const StemQueryBlock> blocks, float scale, const StemKernelParams& params,
                   StemScores* scores = nullptr);

// Top-k of one row: the `k` largest of scores[0..n) (ties: lower index first), ascending index.
std::vector<int32_t> stem_top_k(std::span<const float> scores, int64_t k);

// Threshold selection of one row (StemSelector::Threshold): with p[j] = exp(scores[j] − max), in
// double, the fewest of the largest scores (ties: lower index first) whose p sums to at least
// tau·Σp, at least one; ascending index. tau in (0, 1].
std::vector<int32_t> stem_threshold_select(std::span<const float> scores, double tau);

}  // namespace stem::cpu
