// What stemserve promises when one prompt is computed in another shape: prefilled whole or in
// chunks, alone or batched with other sequences, preempted and recomputed, or on another CPU.
//
// The same arithmetic, up to float32 rounding. The CPU backend's matrix products go to OpenBLAS,
// which picks its kernels by CPU (OPENBLAS_CORETYPE) and by matrix shape; a kernel fixes the order
// in which each dot product is summed, so two shapes of one computation can differ in the last
// bits (seen: 1e-5 on the tiny model's logits under the Haswell and Zen kernels, 0 under
// SkylakeX). What must be exact stays exact: which Stem blocks are selected (their scores differ
// by rounding only, far less than the gaps at the cut in these tests), and greedy tokens wherever
// the two best candidates are further apart than rounding can move them. The same shape run
// twice in one process is bit for bit the same.
//
// The tolerance: a dot product of k terms summed in two orders differs by at most
// 2·k·u·Σ|a_i·b_i| (u = 2^-24, float32's unit roundoff; Higham, "Accuracy and Stability of
// Numerical Algorithms", §3.1). Each layer adds its own share; the longest reduction of a layer is
// its largest of hidden size, intermediate size and attended keys. So per value x of a model with
// `layers` layers: |Δx| ≤ 2·layers·k·u·max(1, |x|), taking Σ|a_i·b_i| at the scale of max(1, |x|)
// (the norms keep activations near 1). It is a first-order bound, not a proof for the whole
// network; what it must catch are real bugs (a wrong position, page or block), which move values
// by whole units.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "base/model_config.h"
#include "engine/sampler.h"
#include "tests/catch.h"

namespace stem::test {

inline double rounding_tolerance(int64_t layers, int64_t longest_reduction) {
  return 2.0 * static_cast<double>(layers) * static_cast<double>(longest_reduction) * 0x1p-24;
}

// The same for a model's config and sequences of up to `max_tokens` tokens.
inline double rounding_tolerance(const ModelConfig& c, int64_t max_tokens) {
  return rounding_tolerance(c.num_hidden_layers, std::max({c.hidden_size, c.intermediate_size, max_tokens}));
}

// The largest |a − b| / max(1, |b|) over n values.
inline double max_scaled_diff(const float* a, const float* b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, std::abs(double(a[i]) - b[i]) / std::max(1.0, std::abs(double(b[i]))));
  return d;
}

// The gap between the best and second-best log-probability of a sample with top_logprobs >= 2.
inline double top2_margin(const SampleResult& s) {
  REQUIRE(s.top.size() >= 2);
  return double(s.top[0].logprob) - s.top[1].logprob;
}

// Greedy tokens of `got` against `ref` (ref's samples with top_logprobs >= 2): equal at every
// step, except that where ref's two best candidates are within 2·tol of each other rounding may
// pick the other one, after which the runs may part. Returns the number of steps compared.
inline size_t check_same_greedy(const std::vector<int32_t>& ref_tokens, const std::vector<SampleResult>& ref_samples,
                                const std::vector<int32_t>& got, double tol) {
  REQUIRE(ref_samples.size() == ref_tokens.size());
  for (size_t i = 0; i < ref_tokens.size(); ++i) {
    const double margin = top2_margin(ref_samples[i]);
    REQUIRE(i < got.size());
    if (got[i] != ref_tokens[i] && margin <= 2 * tol) {
      WARN("greedy step " << i << ": the top-2 margin " << margin << " is within rounding (2 x " << tol
                          << ") and the runs took different tokens: compared up to here");
      return i;
    }
    INFO("greedy step " << i << " (top-2 margin " << margin << ")");
    CHECK(got[i] == ref_tokens[i]);
  }
  CHECK(got.size() == ref_tokens.size());
  return ref_tokens.size();
}

}  // namespace stem::test
