#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "kernels/check.h"

namespace stem {

void SamplingParams::validate() const {
  auto bad = [](const char* field, const std::string& why) { throw Error(std::string(field) + " " + why); };
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) bad("temperature", "must be a number >= 0");
  if (top_k < -1) bad("top_k", "must be -1, 0 (off) or a positive count");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p", "must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p", "must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) bad("repetition_penalty", "must be > 0");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) bad("presence_penalty", "must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) bad("frequency_penalty", "must be in [-2, 2]");
  if (top_logprobs < 0 || top_logprobs > 20) bad("top_logprobs", "must be in [0, 20]");
}

Sampler::Sampler(const SamplingParams& params, uint64_t fallback_seed)
    : params_(params), rng_(params.seed.value_or(fallback_seed)) {}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

namespace {

// log-softmax value of logits[id], with the row's max and log-sum-exp precomputed.
struct LogSoftmax {
  float max = -std::numeric_limits<float>::infinity();
  double log_sum = 0;
  explicit LogSoftmax(std::span<const float> x) {
    for (float v : x) max = std::max(max, v);
    double s = 0;
    for (float v : x) s += std::exp(static_cast<double>(v) - max);
    log_sum = std::log(s);
  }
  float operator()(float v) const { return static_cast<float>(static_cast<double>(v) - max - log_sum); }
};

}  // namespace

SampleResult Sampler::sample(std::span<const float> logits, std::span<const int32_t> prompt,
                             std::span<const int32_t> output) {
  const int32_t V = static_cast<int32_t>(logits.size());
  STEM_CHECK(V > 0, "empty logits");
  work_.assign(logits.begin(), logits.end());

  // Penalties, as vLLM applies them: repetition on prompt+output, presence/frequency on output.
  if (params_.repetition_penalty != 1.0f) {
    auto penalise = [&](int32_t t) {
      if (t < 0 || t >= V) return;
      float& l = work_[t];
      l = l > 0 ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    };
    std::vector<bool> seen(V, false);
    for (auto span : {prompt, output})
      for (int32_t t : span)
        if (t >= 0 && t < V && !seen[t]) {
          seen[t] = true;
          penalise(t);
        }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : output) ++counts[t];
    for (auto [t, n] : counts)
      if (t >= 0 && t < V) work_[t] -= params_.frequency_penalty * n + params_.presence_penalty;
  }

  SampleResult r;
  if (params_.greedy()) {
    r.token = static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    // Candidates sorted by logit (ties: lower id), then top-k, temperature, top-p, min-p.
    order_.resize(V);
    std::iota(order_.begin(), order_.end(), 0);
    int32_t keep = V;
    if (params_.top_k > 0) keep = std::min(keep, params_.top_k);
    auto by_logit = [&](int32_t a, int32_t b) { return work_[a] > work_[b] || (work_[a] == work_[b] && a < b); };
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
    order_.resize(keep);
    std::vector<double> p(keep);
    const double inv_t = 1.0 / params_.temperature, top = work_[order_[0]];
    double sum = 0;
    for (int32_t i = 0; i < keep; ++i) sum += p[i] = std::exp((work_[order_[i]] - top) * inv_t);
    for (double& x : p) x /= sum;
    if (params_.top_p < 1.0f) {
      double cum = 0;
      int32_t n = 0;
      while (n < keep && cum < params_.top_p) cum += p[n++];
      keep = std::max(n, 1);
    }
    if (params_.min_p > 0.0f) {
      const double floor = params_.min_p * p[0];
      int32_t n = 1;
      while (n < keep && p[n] >= floor) ++n;
      keep = n;
    }
    double total = 0;
    for (int32_t i = 0; i < keep; ++i) total += p[i];
    double u = uniform() * total, cum = 0;
    r.token = order_[keep - 1];
    for (int32_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (u < cum) {
        r.token = order_[i];
        break;
      }
    }
  }

  if (params_.logprobs || params_.top_logprobs > 0) {
    // Log-probabilities of the model's own distribution (before penalties and temperature).
    LogSoftmax ls(logits);
    r.logprob = ls(logits[r.token]);
    const int32_t n = std::min(params_.top_logprobs, V);
    if (n > 0) {
      std::vector<int32_t> idx(V);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int32_t i = 0; i < n; ++i) r.top.push_back({idx[i], ls(logits[idx[i]])});
    }
  }
  return r;
}

}  // namespace stem
