#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "kernels/check.h"
#include "models/backend.h"

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
    : params_(params), seed_(params.seed.value_or(fallback_seed)) {
  if (params_.grammar) matcher_.emplace(params_.grammar);
}

const uint32_t* Sampler::allowed() { return matcher_ ? matcher_->mask() : nullptr; }

bool Sampler::accept(int32_t token) { return !matcher_ || matcher_->accept(token); }

SamplingRow Sampler::row(int64_t generated) const {
  SamplingRow r;
  r.temperature = params_.temperature;
  r.top_k = params_.top_k;
  r.top_p = params_.top_p;
  r.min_p = params_.min_p;
  r.repetition_penalty = params_.repetition_penalty;
  r.presence_penalty = params_.presence_penalty;
  r.frequency_penalty = params_.frequency_penalty;
  r.top_logprobs = params_.top_logprobs;
  r.logprobs = params_.logprobs ? 1 : 0;
  r.seed = seed_;
  r.step = static_cast<uint64_t>(generated);
  return r;
}

std::span<const PenaltyToken> Sampler::penalties(std::span<const int32_t> tokens, int64_t prompt_len) {
  const bool repetition = params_.repetition_penalty != 1.0f;
  if (!repetition && params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f) return {};
  if (tokens.size() < seen_) {  // not the sequence this list was built from: start over
    list_.clear();
    index_.clear();
    seen_ = 0;
  }
  for (; seen_ < tokens.size(); ++seen_) {
    const bool prompt = static_cast<int64_t>(seen_) < prompt_len;
    // Presence and frequency count output tokens only: without repetition, prompt tokens do nothing.
    if (prompt && !repetition) continue;
    const int32_t id = tokens[seen_];
    auto [it, added] = index_.try_emplace(id, static_cast<int32_t>(list_.size()));
    if (added) list_.push_back(PenaltyToken{id, 0, 0});
    PenaltyToken& p = list_[static_cast<size_t>(it->second)];
    if (prompt)
      p.in_prompt = 1;
    else
      ++p.output_count;
  }
  return list_;
}

SampleResult Sampler::sample(std::span<const float> logits, std::span<const int32_t> prompt,
                             std::span<const int32_t> output) {
  const auto V = static_cast<int64_t>(logits.size());
  STEM_CHECK(V > 0, "empty logits");
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  tokens.insert(tokens.end(), output.begin(), output.end());
  Sampler fresh(params_, seed_);  // this call's own penalty list: prompt and output may be any tokens
  const std::span<const PenaltyToken> pen = fresh.penalties(tokens, static_cast<int64_t>(prompt.size()));
  for (const PenaltyToken& p : pen)
    STEM_CHECK(p.id >= 0 && p.id < V, "token id ", p.id, " is outside the vocabulary of ", V);

  std::vector<float> masked;
  if (const uint32_t* mask = allowed()) {
    masked.assign(logits.begin(), logits.end());
    structured::apply_mask(masked.data(), V, mask);
    logits = masked;
  }
  SamplingBatch batch;
  batch.add_row(row(static_cast<int64_t>(output.size())));
  batch.add_penalties(pen.data(), pen.size());
  SampledTokens out;
  out.resize(1);
  cpu::sample(out.outputs(), TensorView(const_cast<float*>(logits.data()), DType::F32, {1, V}), batch.inputs(),
              TensorView());
  return result(out, 0, V);
}

SampleResult Sampler::result(const SampledTokens& out, int64_t r, int64_t vocab_size) const {
  SampleResult s;
  s.token = out.tokens[static_cast<size_t>(r)];
  s.logprob = out.logprobs[static_cast<size_t>(r)];
  const int64_t n = std::min<int64_t>(params_.top_logprobs, vocab_size);
  for (int64_t j = 0; j < n; ++j) {
    const size_t at = static_cast<size_t>(r * kMaxTopLogprobs + j);
    s.top.push_back({out.top_ids[at], out.top_logprobs[at]});
  }
  return s;
}

}  // namespace stem
