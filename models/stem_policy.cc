#include "models/stem_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "kernels/check.h"

namespace stem {

void check_stem_settings(const StemSettings& s) {
  check_stem_kernel_params(s);
  STEM_CHECK(s.alpha > 0 && s.alpha <= 1, "Stem: alpha must be in (0, 1], got ", s.alpha);
  STEM_CHECK(s.dense_layers >= 0, "Stem: dense layers must be >= 0, got ", s.dense_layers);
  STEM_CHECK(s.budget_rate > 0 && std::isfinite(s.budget_rate), "Stem: budget rate must be positive, got ",
             s.budget_rate);
  STEM_CHECK(s.min_prompt_len >= 0, "Stem: minimum prompt length must be >= 0, got ", s.min_prompt_len);
  STEM_CHECK(s.dense_tail_blocks >= 0, "Stem: dense tail blocks must be >= 0, got ", s.dense_tail_blocks);
}

const char* stem_selector_name(StemSelector selector) {
  switch (selector) {
    case StemSelector::TopK: return "topk";
    case StemSelector::Threshold: return "threshold";
    case StemSelector::None: return "none";
    case StemSelector::Adaptive: return "adaptive";
  }
  return "?";
}

StemSelector parse_stem_selector(std::string_view name) {
  for (StemSelector s : {StemSelector::TopK, StemSelector::Threshold, StemSelector::None, StemSelector::Adaptive})
    if (name == stem_selector_name(s)) return s;
  throw Error("Stem: unknown selector '" + std::string(name) + "' (topk, threshold, none, adaptive)");
}

std::string stem_selection_name(const StemSettings& s) {
  auto num = [](double x) {
    std::string t = std::to_string(x);
    t.erase(t.find_last_not_of('0') + 1);
    if (!t.empty() && t.back() == '.') t.pop_back();
    return t;
  };
  const std::string budget = s.causal ? "causal schedule, budget rate " + num(s.budget_rate)
                                      : "paper schedule, alpha " + num(s.alpha) + ", budget rate " + num(s.budget_rate);
  const std::string tail = s.dense_tail_blocks > 0 ? ", dense tail " + std::to_string(s.dense_tail_blocks) : "";
  switch (s.selector) {
    case StemSelector::Threshold: return "threshold " + num(s.threshold) + tail;
    case StemSelector::None: return "none" + tail;
    case StemSelector::TopK: return "topk (" + budget + ")" + tail;
    case StemSelector::Adaptive: return "adaptive " + num(s.threshold) + " (" + budget + ")" + tail;
  }
  return "?";
}

int64_t stem_num_blocks(int64_t prompt_len, const StemSettings& settings) {
  return (prompt_len + settings.block_size - 1) / settings.block_size;
}

int64_t stem_start_budget(int64_t nb, const StemSettings& settings) {
  if (nb <= 0) return 0;
  // Python's int() of a double, as the reference computes it.
  int64_t ks = nb;
  if (nb >= kStemSmallPromptBlocks && nb < kStemMediumPromptBlocks)
    ks = static_cast<int64_t>(kStemMediumRate * static_cast<double>(nb) + kStemBudgetBase);
  else if (nb >= kStemMediumPromptBlocks)
    ks = static_cast<int64_t>(kStemLongRate * static_cast<double>(nb)) + static_cast<int64_t>(kStemBudgetBase);
  if (settings.budget_rate != 1.0) ks = static_cast<int64_t>(std::floor(static_cast<double>(ks) * settings.budget_rate));
  return std::clamp<int64_t>(ks, 1, nb);
}

namespace {

int64_t decayed_row_budget(int64_t nb, int64_t block, const StemSettings& settings) {
  const int64_t ks = stem_start_budget(nb, settings);
  if (block < ks) return ks;
  // The reference's schedule past k_s, to the bit: floor(torch.linspace(k_s, α·k_s, nb − k_s,
  // dtype=float64)) on the GPU. torch computes element n of `steps` with step = (end − start)/(steps − 1):
  // start + step·n in the first half (n < steps/2), end − step·(steps − 1 − n) in the second, and nvcc
  // fuses each into one fma (one rounding). The paper's expression k_s + (i − k_s)/(nb − k_s − 1)·(α − 1)·k_s,
  // evaluated in double, floors to one block less or more on 52 (nb, i) pairs for nb ≤ 1100 at α = 0.7
  // (tests/models/test_stem_policy.cc lists them), where the exact value is an integer or lands within an ulp of one.
  const int64_t steps = nb - ks, n = block - ks;
  const double start = static_cast<double>(ks), end = static_cast<double>(ks) * settings.alpha;
  double k = start;
  if (steps > 1) {
    const double step = (end - start) / static_cast<double>(steps - 1);
    k = n < steps / 2 ? std::fma(step, static_cast<double>(n), start)
                      : std::fma(-step, static_cast<double>(steps - 1 - n), end);
  }
  return std::clamp<int64_t>(static_cast<int64_t>(std::floor(k)), 1, ks);
}

}  // namespace

int64_t stem_uniform_budget(int64_t nb, const StemSettings& settings) {
  if (nb <= 0) return 0;
  int64_t kept = 0;  // E
  for (int64_t i = 0; i < nb; ++i) kept += std::min(decayed_row_budget(nb, i, settings), i + 1);
  int64_t best = 1, best_gap = -1;
  for (int64_t k = 1; k <= nb; ++k) {
    const int64_t gap = std::abs(k * nb - k * (k - 1) / 2 - kept);
    if (best_gap < 0 || gap < best_gap) best = k, best_gap = gap;
  }
  return best;
}

bool stem_selection_causal(const StemSettings& settings) {
  if (settings.dense_tail_blocks > 0) return false;
  return settings.causal || settings.selector == StemSelector::Threshold || settings.selector == StemSelector::None;
}

int64_t stem_row_budget(int64_t nb, int64_t block, const StemSettings& settings) {
  if (settings.causal) return stem_start_budget(block + 1, settings);
  return settings.position_decay ? decayed_row_budget(nb, block, settings) : stem_uniform_budget(nb, settings);
}

std::vector<StemQueryBlock> stem_query_blocks(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start,
                                              std::span<const int32_t> prompt_lens, int64_t sliding_window,
                                              const StemSettings& settings) {
  check_stem_settings(settings);
  STEM_CHECK(query_start.size() == kv_lens.size() + 1 && prompt_lens.size() == kv_lens.size(),
             "stem_query_blocks: ", kv_lens.size(), " kv_lens need ", kv_lens.size() + 1, " query_start and ",
             kv_lens.size(), " prompt_lens entries, got ", query_start.size(), " and ", prompt_lens.size());
  const int64_t bs = settings.block_size;
  std::vector<StemQueryBlock> blocks;
  for (size_t s = 0; s < kv_lens.size(); ++s) {
    const int64_t rows = int64_t{query_start[s + 1]} - query_start[s], kv_len = kv_lens[s], prompt = prompt_lens[s];
    STEM_CHECK(rows >= 0 && kv_len >= rows, "stem_query_blocks: sequence ", s, " has ", rows, " query rows and kv_len ",
               kv_len);
    STEM_CHECK(prompt >= 0, "stem_query_blocks: sequence ", s, " has prompt length ", prompt);
    if (rows == 0) continue;
    const int64_t first_pos = kv_len - rows;
    const bool stem_sequence = sliding_window == 0 && prompt >= settings.min_prompt_len;
    const int64_t nb = stem_num_blocks(prompt, settings);
    // TopK and Adaptive have the schedule's budget (Adaptive keeps at most that many by score).
    const bool top_k = settings.selector == StemSelector::TopK || settings.selector == StemSelector::Adaptive;
    const int64_t always = settings.sink_blocks + settings.window_blocks;  // kept whatever the scores
    // Without position decay every row has the same budget: computed once, not per block.
    const int64_t uniform =
        stem_sequence && top_k && !settings.causal && !settings.position_decay ? stem_uniform_budget(nb, settings) : 0;
    for (int64_t i = first_pos / bs; i <= (kv_len - 1) / bs; ++i) {
      StemQueryBlock b;
      b.seq = static_cast<int32_t>(s);
      b.block = static_cast<int32_t>(i);
      const int64_t end = std::min((i + 1) * bs, kv_len);
      const bool whole = i * bs >= first_pos && end == std::min((i + 1) * bs, prompt);
      int64_t budget = i + 1;
      if (stem_sequence && i < nb && top_k)
        budget = settings.causal           ? stem_start_budget(i + 1, settings)
                 : settings.position_decay ? decayed_row_budget(nb, i, settings)
                                           : uniform;
      const bool drops = top_k ? budget < i + 1 : i + 1 > always;
      if (stem_sequence && whole && i < nb - settings.dense_tail_blocks && drops) {
        b.sparse = true;
        b.budget = top_k ? static_cast<int32_t>(budget) : 0;
        b.key_end = static_cast<int32_t>(end);
        const int64_t bound = top_k                                     ? budget + always
                              : settings.selector == StemSelector::None ? always
                                                                        : i + 1;
        b.list_bound = static_cast<int32_t>(std::min(i + 1, bound));
      } else {
        // As the attention kernel's dense lists: from the block the window reaches for the block's first row.
        const int64_t first_query = std::max(i * bs, first_pos);
        b.first_key = static_cast<int32_t>(
            sliding_window > 0 ? std::max<int64_t>(0, first_query - sliding_window + 1) / bs : 0);
        b.list_bound = static_cast<int32_t>(i - b.first_key + 1);
      }
      blocks.push_back(b);
    }
  }
  return blocks;
}

}  // namespace stem
