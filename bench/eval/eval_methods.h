// The methods the Stem accuracy evaluation compares (issue 7): dense attention, Stem with its
// defaults, and Stem, its ablations and the baselines at matched block densities. Each is a
// StemSettings (models/stem_policy.h) plus the one knob that sets its density.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/stem_policy.h"

namespace stem::eval {

// Which knob a family turns to reach a density.
enum class Knob { None, BudgetRate, Threshold, Window };

struct Method {
  std::string name;    // unique, e.g. "stem@30%"
  std::string family;  // "dense", "stem", "stem-no-bonus", "stem-no-decay", "uniform-topk", "sink-window", "xattention",
                       // "stem-hpc", "stem-adaptive"
  bool sparse = true;  // false: dense attention (no Stem at all)
  double target = 0;   // the density at 8K it was calibrated to (0: none, e.g. Stem's defaults)
  Knob knob = Knob::None;
  StemSettings settings;
  // Where calibration left the knob (eval_long.cc): target, length, density reached, ...; null
  // until then.
  nlohmann::json calibration;
  double knob_value() const;
  void set_knob(double value);  // budget_rate, threshold, or window_blocks (rounded)
};

// The settings every sparse method shares: the defaults, with prompts from `min_prompt_len`
// tokens on sparse (Stem's own default, 8192, would leave the 2K-6K prompts dense).
StemSettings eval_base_settings(int64_t min_prompt_len);

// One method of a family with its knob at `value` (families as in Method::family). Below
// kLowDensity every family keeps 2 sink and 2 window blocks instead of 4 and 4: at 8K (64
// blocks) those 8 blocks alone are 23% of the causal blocks.
constexpr double kLowDensity = 0.27;
// small_always = false keeps the defaults' 4 + 4 at every density (the long-context methods: at
// 32K those 8 blocks are 6% of the causal blocks).
Method make_method(const std::string& family, double target, double value, int64_t min_prompt_len,
                   bool small_always = true);

// The full comparison: dense, Stem's defaults, and each family at each target density, with the
// knobs at starting guesses (calibrate_methods, eval_attention.h, sets them).
std::vector<Method> full_methods(const std::vector<double>& targets, int64_t min_prompt_len);

// The long-context comparison (issue 21; bench/eval/eval_long.h): dense; Stem at the paper's
// schedule (budget_rate 1) and the reference's HPC operating point ("stem-hpc": stride 16, λ 0.3,
// α 1.0, AngelSlim's hpc backend defaults) at rate 1; and at each target density (of the causal
// blocks at the calibration length, 32K): Stem rate-scaled, Stem without the value bonus, without
// the decay, uniform top-k on the plain score, the XAttention-style threshold, sink + window and
// stem-hpc rate-scaled, and "stem-adaptive" (StemSelector::Adaptive: a threshold on each head's
// score mass inside the decay envelope at budget rate 1.5; the threshold is its knob). Knobs
// uncalibrated (eval_long.cc calibrates them).
std::vector<Method> long_methods(const std::vector<double>& targets, int64_t min_prompt_len);

// The quick run's methods (no calibration): dense and Stem at a budget rate sparse at ~1K tokens.
std::vector<Method> quick_methods(int64_t min_prompt_len);

nlohmann::json to_json(const Method& m);
// The method to_json wrote (name, family, target, settings), e.g. from an earlier run's results.
Method method_from_json(const nlohmann::json& j);

}  // namespace stem::eval
