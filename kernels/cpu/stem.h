// Stem sparse prefill (DESIGN.md §3, docs/stem.md): the settings, the position-decay budget and
// the step layout (which query blocks of a step are sparse, and their budgets). Plain host code with
// no kernels: the CPU reference (stem_plan.h) and the CUDA planner (kernels/cuda/stem.cuh) both
// build on it, so that they classify every query block identically.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace stem {

// How a sparse query block picks its key blocks by score (before the sink and window blocks are
// added). TopK is Stem; the others are the baselines of the accuracy evaluation (bench/eval/).
enum class StemSelector : int32_t {
  TopK = 0,       // the k(i) highest scores (the position-decay budget)
  Threshold = 1,  // XAttention-style: the fewest blocks whose softmax mass of scores reaches `threshold`
  None = 2,       // nothing by score: the sink and window blocks only (StreamingLLM-like)
  // Per-head adaptive budget inside the position-decay envelope: the fewest blocks whose softmax
  // mass of scores reaches `threshold` (as Threshold), but never more than k(i) (as TopK): the
  // shorter of the two prefixes of the same ranking. A head whose mass is concentrated keeps few
  // blocks; one whose mass is spread keeps up to the schedule's budget.
  Adaptive = 3,
};

// Every constant of the method, with the paper's defaults. The engine maps its flags onto these.
struct StemSettings {
  int64_t block_size = 128;    // B: query and key block (the CUDA kernels take 128 only)
  int64_t stride = 8;          // S: antidiagonal stride; R = B / S pooled groups per block
  double alpha = 0.7;          // position decay: the last query block keeps alpha · k_s blocks
  double lambda = 0.2;         // weight of the value bonus λ·max(0, z)
  int64_t sink_blocks = 4;     // key blocks j < sink_blocks are always kept
  int64_t window_blocks = 4;   // key blocks i − window_blocks + 1 .. i are always kept
  int64_t dense_layers = 2;    // layers 0 .. dense_layers − 1 stay dense (applied by the caller)
  double budget_rate = 1.0;    // multiplies k_s (1.0: the paper's schedule)
  int64_t min_prompt_len = 8192;  // shorter prompts stay dense
  // Selection variants (docs/stem.md, "Variants"); the defaults are Stem. A value bonus of zero is
  // lambda = 0 (the score is then the plain pooled estimate).
  StemSelector selector = StemSelector::TopK;
  bool position_decay = true;  // false: the decayed schedule's total budget spread evenly (TopK)
  // The causal schedule (TopK, Adaptive): row i keeps the start budget of a prompt of i + 1 blocks,
  // k(i) = stem_start_budget(i + 1), so a block's selection depends on its own index and the
  // settings only, never on what follows it (a prefix's K/V is the same in any longer prompt:
  // prefix caching can share it). The kept fraction k(i)/(i + 1) still decays with position and
  // the first 55 blocks stay dense; alpha and position_decay are unused.
  bool causal = false;
  double threshold = 0.9;      // Threshold, Adaptive: the softmax mass of a row's block scores to keep, (0, 1]
  // The last tail_blocks query blocks of a prompt stay dense (0: none). They hold the end of the
  // prompt (a question, the turn being answered), whose rows make the first token; a dense row costs
  // about 1/nb of the causal blocks. The tail depends on the prompt's length, so a selection with a
  // tail is not causal (stem_selection_causal).
  int64_t dense_tail_blocks = 0;
};

// How the settings select, in words for logs: "threshold 0.8738", "topk (paper schedule, alpha 0.7,
// budget rate 1)", "topk (causal schedule, budget rate 1)", "none".
std::string stem_selection_name(const StemSettings& settings);

// "topk", "threshold", "none", "adaptive"; parse_stem_selector throws stem::Error naming the choices.
const char* stem_selector_name(StemSelector selector);
StemSelector parse_stem_selector(std::string_view name);

// The budget schedule's constants (DESIGN.md §3): k_s = nb below kSmallPromptBlocks blocks,
// int(0.2·nb + 30) below kMediumPromptBlocks, int(0.1·nb) + 30 from there on.
constexpr int64_t kStemSmallPromptBlocks = 56;
constexpr int64_t kStemMediumPromptBlocks = 160;
constexpr double kStemMediumRate = 0.2;
constexpr double kStemLongRate = 0.1;
constexpr double kStemBudgetBase = 30;
// Added to the largest value norm before the log, and to the std before dividing by it.
constexpr double kStemValueEpsilon = 1e-6;

// Whether a block's selection depends only on its own and earlier blocks (never on the prompt's
// total length): the Threshold and None selectors, and TopK/Adaptive under the causal schedule;
// never with a dense tail.
// Then a sparse prefill's K/V of a whole block is the same in every prompt that starts with it.
bool stem_selection_causal(const StemSettings& settings);

// Rejects settings the method cannot run with (stride not dividing the block, negative counts...).
void check_stem_settings(const StemSettings& settings);

// Whether layer `layer` (0-based) uses Stem at all.
inline bool stem_layer_sparse(const StemSettings& settings, int64_t layer) { return layer >= settings.dense_layers; }

// nb: blocks of a prompt of `prompt_len` tokens, ceil(L / B).
int64_t stem_num_blocks(int64_t prompt_len, const StemSettings& settings);

// k_s: the budget of the first query blocks for a prompt of nb blocks, times budget_rate,
// clamped to [1, nb].
int64_t stem_start_budget(int64_t nb, const StemSettings& settings);

// k(i): how many key blocks query block i keeps by score (before the sink and window blocks are
// added). Under the causal schedule: stem_start_budget(i + 1), whatever nb is. Otherwise k_s while i < k_s, then decaying linearly to alpha·k_s at i = nb − 1: exactly the
// reference's floor(torch.linspace(k_s, α·k_s, nb − k_s, dtype=float64))[i − k_s] as torch computes
// it on the GPU (step = (end − start)/(steps − 1); start + step·n for n < steps/2, else
// end − step·(steps − 1 − n), each one fma), clamped to [1, k_s]. Without position decay: the
// uniform budget (stem_uniform_budget), the same for every block.
int64_t stem_row_budget(int64_t nb, int64_t block, const StemSettings& settings);

// The budget without position decay: the k for every query block that keeps, in total over the
// nb blocks, as many key blocks as the decayed schedule does. A row keeps min(k, i + 1) blocks,
// so the totals are E = Σ_i min(k(i), i + 1) (decayed) and f(k) = Σ_i min(k, i + 1)
// = k·nb − k(k − 1)/2; the uniform budget is the k in [1, nb] with f(k) nearest E (ties: the
// smaller k).
int64_t stem_uniform_budget(int64_t nb, const StemSettings& settings);

// How Stem treats one query block of a step.
struct StemQueryBlock {
  int32_t seq = 0, block = 0;  // sequence s and absolute query block i (positions [iB, iB + B))
  bool sparse = false;         // scored and selected; otherwise every causal block (dense)
  int32_t budget = 0;          // k(i) (sparse blocks)
  int32_t first_key = 0;       // dense blocks: the first key block the sliding window reaches
  int32_t key_end = 0;         // sparse blocks: keys at positions < key_end are visible (min((i+1)B, kv_len))
  int32_t list_bound = 0;      // the most key blocks its list can hold
};

// The query blocks of a step, sequence by sequence, ascending i. Host copies of the attention
// metadata (kernels/cpu/attention.h) plus each sequence's whole prompt length, which fixes nb
// however the prompt is chunked. A block is sparse when
//   - its sequence uses Stem: prompt_len ≥ min_prompt_len and no sliding window;
//   - the step holds every row of it that the prompt has: iB ≥ first row's position, and
//     min((i+1)B, kv_len) = min((i+1)B, prompt_len) (a chunk that ends mid-block leaves that
//     block dense, and so does the next chunk that starts mid-block: their query rows are not all
//     at hand, and the pooled estimate needs all of them);
//   - selecting can drop something: k(i) < i + 1 for TopK and Adaptive (the first k_s blocks are dense), and
//     i + 1 > sink_blocks + window_blocks for Threshold and None (their budget is 0: unused).
// Sequences with no rows this step have no blocks.
std::vector<StemQueryBlock> stem_query_blocks(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start,
                                              std::span<const int32_t> prompt_lens, int64_t sliding_window,
                                              const StemSettings& settings);

}  // namespace stem
