// Sampling parameters as a request states them, and the per-sequence Sampler that turns them
// into the batched sampling op's rows (kernels/cpu/sampling.h, kernels/cuda/sampling.cuh).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <span>
#include <vector>

#include "kernels/cpu/sampling.h"
#include "structured/token_mask.h"

namespace stem {

struct SampledTokens;  // models/backend.h
struct ForwardBatch;
struct SamplingBatch;
class ModelBackend;

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
  // Structured output: only tokens this grammar allows are sampled, EOS only once its value is
  // complete (structured/token_mask.h). Shared by the request's sequences; null: unconstrained.
  std::shared_ptr<structured::TokenGrammar> grammar;

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

// A sequence's sampler: its parameters as the sampling op's row (kernels/cpu/sampling.h has the
// definition of every parameter and of the draw), and its penalty tokens, kept incrementally.
// The draw is a function of (seed, tokens generated so far), so a seed gives the same tokens on
// every run, on the host and on the GPU alike.
class Sampler {
 public:
  // fallback_seed is used when params.seed is unset (the engine draws it from its own RNG).
  Sampler(const SamplingParams& params, uint64_t fallback_seed);

  const SamplingParams& params() const { return params_; }
  // The op's row for the next token, with `generated` tokens generated so far.
  SamplingRow row(int64_t generated) const;
  // The penalty tokens of a sequence whose tokens are `tokens` (the first prompt_len the prompt),
  // empty when no penalty is on. Incremental: each call counts only the tokens the last call did
  // not see, so a long prompt is hashed once, not every step. Valid until the next call.
  std::span<const PenaltyToken> penalties(std::span<const int32_t> tokens, int64_t prompt_len);

  // One row on the host with the CPU op: the token after `prompt` + `output`.
  SampleResult sample(std::span<const float> logits, std::span<const int32_t> prompt,
                      std::span<const int32_t> output);

  // The user-facing result of row r of the op's output.
  SampleResult result(const SampledTokens& out, int64_t r, int64_t vocab_size) const;

  // With a grammar: the ids allowed next (a bitmask, structured/token_mask.h), valid until the
  // next accept(); null without one.
  const uint32_t* allowed();
  // The token chosen for this sequence: the grammar moves past it. False when the grammar does
  // not allow it (never for a token sampled under allowed()'s mask).
  bool accept(int32_t token);

 private:
  SamplingParams params_;
  uint64_t seed_;
  // Penalty tokens: list_[index_[id]]; seen_ tokens of the sequence so far.
  std::vector<PenaltyToken> list_;
  std::unordered_map<int32_t, int32_t> index_;
  size_t seen_ = 0;
  std::optional<structured::TokenMatcher> matcher_;
};

}  // namespace stem
