// Stem sparse prefill (DESIGN.md §3, docs/stem.md): the mechanism the kernels share, what they need
// to estimate scores and select key blocks (the kernel parameters, the selector) and the query
// blocks a step hands them (StemQueryBlock). Plain host code with no kernels: the CPU reference
// (stem_plan.h) and the CUDA planner (kernels/cuda/stem.cuh) both build on it. The policy (which
// prompts and layers use Stem, the budget schedule, the classification of a step's query blocks)
// is the model's: models/stem_policy.h.
#pragma once
#include <cstdint>
#include <span>

namespace stem {

// How a sparse query block picks its key blocks by score (before the sink and window blocks are
// added). TopK is Stem; the others are the baselines of the accuracy evaluation (bench/eval/).
enum class StemSelector : int32_t {
  TopK = 0,       // the k(i) highest scores (the query block's budget)
  Threshold = 1,  // XAttention-style: the fewest blocks whose softmax mass of scores reaches `threshold`
  None = 2,       // nothing by score: the sink and window blocks only (StreamingLLM-like)
  // Per-head adaptive budget inside the position-decay envelope: the fewest blocks whose softmax
  // mass of scores reaches `threshold` (as Threshold), but never more than k(i) (as TopK): the
  // shorter of the two prefixes of the same ranking. A head whose mass is concentrated keeps few
  // blocks; one whose mass is spread keeps up to the schedule's budget.
  Adaptive = 3,
};

// What the kernels need to score and select a sparse query block's key blocks, with the paper's
// defaults. The policy's settings (models/stem_policy.h) extend it.
struct StemKernelParams {
  int64_t block_size = 128;    // B: query and key block (the CUDA kernels take 128 only)
  int64_t stride = 8;          // S: antidiagonal stride; R = B / S pooled groups per block
  double lambda = 0.2;         // weight of the value bonus λ·max(0, z)
  int64_t sink_blocks = 4;     // key blocks j < sink_blocks are always kept
  int64_t window_blocks = 4;   // key blocks i − window_blocks + 1 .. i are always kept
  // Selection variants (docs/stem.md, "Variants"); the default is Stem. A value bonus of zero is
  // lambda = 0 (the score is then the plain pooled estimate).
  StemSelector selector = StemSelector::TopK;
  double threshold = 0.9;      // Threshold, Adaptive: the softmax mass of a row's block scores to keep, (0, 1]
};

// Added to the largest value norm before the log, and to the std before dividing by it.
constexpr double kStemValueEpsilon = 1e-6;

// Rejects parameters the kernels cannot run with (stride not dividing the block, negative counts...).
void check_stem_kernel_params(const StemKernelParams& params);

// How Stem treats one query block of a step (the policy classifies them: models/stem_policy.h).
struct StemQueryBlock {
  int32_t seq = 0, block = 0;  // sequence s and absolute query block i (positions [iB, iB + B))
  bool sparse = false;         // scored and selected; otherwise every causal block (dense)
  int32_t budget = 0;          // k(i) (sparse blocks)
  int32_t first_key = 0;       // dense blocks: the first key block the sliding window reaches
  int32_t key_end = 0;         // sparse blocks: keys at positions < key_end are visible (min((i+1)B, kv_len))
  int32_t list_bound = 0;      // the most key blocks its list can hold
};

// Rejects query blocks a planner cannot take, against the step's host metadata (kv_lens [S],
// query_start [S+1]): each block's sequence in range, its rows in this step, sequences in
// ascending order and each one's blocks ascending i (the planners pool a sequence's keys once for
// its consecutive sparse blocks), a sparse block whole in the step with key_end = min((i+1)B,
// kv_len), and list bounds that its causal blocks can fill.
void check_stem_query_blocks(std::span<const StemQueryBlock> blocks, std::span<const int32_t> kv_lens,
                             std::span<const int32_t> query_start, const StemKernelParams& params);

}  // namespace stem
