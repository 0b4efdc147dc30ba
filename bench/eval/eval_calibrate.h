// Calibrating a method's knob to a block density (the long-context evaluation, eval_long.h) with as
// few model runs as the family allows. Density: listed / causal (query block, head, key block)
// triples of one prefill of `tokens` tokens, the same in every sparse layer and head for the
// families whose lists do not depend on the scores.
//   sink + window   no scores: exact on the host (always_density), no model run
//   top-k families  the knob is k_s (budget_rate = (k_s + 0.5) / k_s at rate 1): a row keeps at
//                   least max(k(i), |sink ∪ window|) and at most min(i + 1, k(i) + |sink ∪ window|)
//                   blocks, so host bounds (schedule_density) bracket the k_s that reaches the
//                   target, and a search over the integers in the bracket runs the model a few times
//   threshold       bisection on the threshold, one model run a step
#pragma once
#include <functional>
#include <nlohmann/json.hpp>

#include "bench/eval/eval_methods.h"

namespace stem::eval {

struct DensityBounds {
  double lo = 0, hi = 0;
};

// Bounds of a top-k method's density over a prompt of `tokens` tokens (dense below min_prompt_len).
DensityBounds schedule_density(int64_t tokens, const StemSettings& settings);
// The density of the sink and window blocks alone (selector None): exact.
double always_density(int64_t tokens, const StemSettings& settings);

// Sets m's knob so that measure(m) — its density on the calibration prompt of `tokens` tokens — is
// nearest m.target; returns what it did (knob, density, model runs) and stores it in m.calibration.
nlohmann::json calibrate(Method& m, int64_t tokens, const std::function<double(const Method&)>& measure);

}  // namespace stem::eval
