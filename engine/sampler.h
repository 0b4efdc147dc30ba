// Turns one row of logits into a token: penalties, temperature, top-k, top-p, min-p, then a
// seeded draw. A given seed gives the same tokens on every run and machine (own RNG math).
#pragma once
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

namespace stem {

struct SamplingParams {
  float temperature = 1.0f;         // 0: greedy
  int32_t top_k = 0;                // 0 or -1: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // on prompt and output tokens; 1: off
  float presence_penalty = 0.0f;    // on output tokens
  float frequency_penalty = 0.0f;   // on output tokens
  std::optional<uint64_t> seed;
  int32_t top_logprobs = 0;  // alternatives to report per token (with logprobs)
  bool logprobs = false;

  // Throws stem::Error naming the field for values out of range.
  void validate() const;
  bool greedy() const { return temperature == 0.0f || top_k == 1; }
};

struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;            // of `token` under the model's distribution
  std::vector<TokenLogprob> top;   // the top_logprobs most likely tokens, best first
};

class Sampler {
 public:
  // fallback_seed is used when params.seed is unset (the engine draws it from its own RNG).
  Sampler(const SamplingParams& params, uint64_t fallback_seed);

  SampleResult sample(std::span<const float> logits, std::span<const int32_t> prompt,
                      std::span<const int32_t> output);

 private:
  double uniform();  // [0, 1) from 53 random bits

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

}  // namespace stem
