// Stem's policy (DESIGN.md §3, docs/stem.md): which prompts and layers use Stem, the budget
// schedule (the paper's position decay, the causal schedule, the uniform budget) and the
// classification of a step's query blocks into what the kernels take (StemQueryBlock). The model
// runner classifies once per step and hands the blocks to the planners (kernels/cpu/stem_plan.h,
// kernels/cuda/stem.cuh), which know only the mechanism (kernels/cpu/stem.h).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/stem.h"

namespace stem {

// Every constant of the method, with the paper's defaults: the kernels' parameters (the base, what
// the planners take) and the policy's. The engine maps its flags onto these.
struct StemSettings : StemKernelParams {
  double alpha = 0.7;          // position decay: the last query block keeps alpha · k_s blocks
  int64_t dense_layers = 2;    // layers 0 .. dense_layers − 1 stay dense (applied by the caller)
  double budget_rate = 1.0;    // multiplies k_s (1.0: the paper's schedule)
  int64_t min_prompt_len = 8192;  // shorter prompts stay dense
  bool position_decay = true;  // false: the decayed schedule's total budget spread evenly (TopK)
  // The causal schedule (TopK, Adaptive): row i keeps the start budget of a prompt of i + 1 blocks,
  // k(i) = stem_start_budget(i + 1), so a block's selection depends on its own index and the
  // settings only, never on what follows it (a prefix's K/V is the same in any longer prompt:
  // prefix caching can share it). The kept fraction k(i)/(i + 1) still decays with position and
  // the first 55 blocks stay dense; alpha and position_decay are unused.
  bool causal = false;
  // The last tail_blocks query blocks of a prompt stay dense (0: none). They hold the end of the
  // prompt (a question, the turn being answered), whose rows make the first token; a dense row costs
  // about 1/nb of the causal blocks. The tail depends on the prompt's length, so a selection with a
  // tail is not causal (stem_selection_causal).
  int64_t dense_tail_blocks = 0;

  // The kernels' part, for the planners.
  const StemKernelParams& kernel() const { return *this; }
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

// Whether a block's selection depends only on its own and earlier blocks (never on the prompt's
// total length): the Threshold and None selectors, and TopK/Adaptive under the causal schedule;
// never with a dense tail.
// Then a sparse prefill's K/V of a whole block is the same in every prompt that starts with it.
bool stem_selection_causal(const StemSettings& settings);

// Rejects settings the method cannot run with (the kernels' parameters, check_stem_kernel_params,
// then the policy's: alpha, negative counts...).
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

// The query blocks of a step, sequence by sequence, ascending i: what the planners take
// (kernels/cpu/stem_plan.h, kernels/cuda/stem.cuh). Host copies of the attention
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
