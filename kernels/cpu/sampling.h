// Sampling: logits rows → one token per row (penalties, temperature, top-k, top-p, min-p, a
// seeded draw) plus the logprobs a user may ask for. The CPU twin of kernels/cuda/sampling.cuh;
// both follow the definition below to the bit where they can and to rounding where they cannot.
//
// Per row r, with w = logits[r] after penalties (f32, NaN read as -inf, -0 as +0):
//   penalties (vLLM's): for each listed token t with prompt/output occurrence, repetition
//     w[t] = w[t] > 0 ? w[t] / rep : w[t] * rep; then for output tokens
//     w[t] -= frequency · count + presence.
//   greedy (temperature == 0 or top_k == 1): token = argmax w, the lowest id among ties.
//   otherwise, with m = max w and e[i] = exp((w[i] − m) / temperature) in double:
//     top-k (0 < k < V): keep w[i] >= the k-th largest w. TIES AT THE THRESHOLD ARE ALL KEPT (as
//       vLLM's top-k does), so a row may keep more than k tokens when values repeat.
//     top-p (< 1): with Z = Σ e over the top-k set, keep w[i] >= T, T the largest value such
//       that Σ_{w >= T} e >= top_p · Z: the smallest set of whole value groups, best first, whose
//       mass reaches top_p (ties at the threshold all kept, as for top-k).
//     min-p (> 0): keep e[i] >= min_p (e of the best token is 1, so it is always kept).
//     the draw: u = sampling_uniform(seed, step) in [0, 1); target = u · Σ_{kept} e; the token is
//       the first kept id, IN TOKEN-ID ORDER, whose running sum of e exceeds target (the last
//       kept id if rounding leaves none). Id order lets the GPU do it with a prefix sum.
//   logprob (when row.logprobs or top_logprobs > 0, else 0): log-softmax of the RAW logits (the
//     model's distribution, before penalties and temperature) at the chosen token.
//   top ids/logprobs: the top_logprobs largest raw logits (ties: lower id), best first, with
//     their log-softmax; unused slots hold id −1 and logprob 0.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/view.h"

#if defined(__CUDACC__)
#define STEM_SAMPLING_HD __host__ __device__
#else
#define STEM_SAMPLING_HD
#endif

namespace stem {

constexpr int kMaxTopLogprobs = 20;  // the width of the top ids/logprobs outputs

// One row's parameters, a POD the CUDA kernel reads as is (56 bytes).
struct SamplingRow {
  float temperature = 1.0f;         // 0: greedy
  int32_t top_k = 0;                // <= 0: off
  float top_p = 1.0f;               // >= 1: off
  float min_p = 0.0f;               // <= 0: off
  float repetition_penalty = 1.0f;  // 1: off; on prompt and output tokens
  float presence_penalty = 0.0f;    // 0: off; on output tokens
  float frequency_penalty = 0.0f;   // 0: off; on output tokens, times their count
  int32_t top_logprobs = 0;         // 0..kMaxTopLogprobs
  int32_t logprobs = 0;             // != 0: fill the token's logprob
  int32_t reserved = 0;
  uint64_t seed = 0;  // the draw is a function of (seed, step) only
  uint64_t step = 0;  // tokens generated so far by this sequence

  STEM_SAMPLING_HD bool greedy() const { return temperature == 0.0f || top_k == 1; }
  STEM_SAMPLING_HD bool wants_logprobs() const { return logprobs != 0 || top_logprobs > 0; }
  STEM_SAMPLING_HD bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};
static_assert(sizeof(SamplingRow) == 56, "SamplingRow is shared with the GPU kernel as is");

// A distinct token of the sequence so far, built on the host (engine/sampler.h keeps it
// incrementally). A row's list must not name a token twice.
struct PenaltyToken {
  int32_t id = 0;
  int32_t output_count = 0;  // occurrences among the generated tokens
  int32_t in_prompt = 0;     // != 0: occurs in the prompt
};
static_assert(sizeof(PenaltyToken) == 12, "PenaltyToken is shared with the GPU kernel as is");

// The draw: splitmix64's (step+1)-th output from the state mix(seed), as a double in [0, 1) from
// its top 53 bits. Counter-based, so any step of any sequence is drawn without the ones before.
STEM_SAMPLING_HD inline uint64_t sampling_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
STEM_SAMPLING_HD inline double sampling_uniform(uint64_t seed, uint64_t step) {
  const uint64_t state = sampling_mix64(seed ^ 0x6a09e667f3bcc909ull);
  const uint64_t h = sampling_mix64(state + (step + 1) * 0x9e3779b97f4a7c15ull);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// The per-row inputs besides the logits: host memory for cpu::sample, device memory for
// cuda::sample.
struct SamplingInputs {
  const SamplingRow* rows = nullptr;         // [R]
  const int32_t* penalty_offsets = nullptr;  // [R+1]: row r's tokens are penalties[offsets[r] .. offsets[r+1])
  const PenaltyToken* penalties = nullptr;   // [offsets[R]]; may be null when offsets[R] == 0
  int64_t num_rows = 0;                      // R
};

// The outputs, one entry (or one row of kMaxTopLogprobs) per logit row.
struct SamplingOutputs {
  TensorView token;         // i32 [R]
  TensorView logprob;       // f32 [R]
  TensorView top_ids;       // i32 [R, kMaxTopLogprobs]
  TensorView top_logprobs;  // f32 [R, kMaxTopLogprobs]
};

}  // namespace stem

namespace stem::cpu {

// logits: f32 [R, V] (row-strided allowed), read only. scratch: f32 [R, V] for the penalised
// rows (row-strided allowed), or an empty view: the CPU twin then uses memory of its own.
void sample(const SamplingOutputs& out, const TensorView& logits, const SamplingInputs& in,
            const TensorView& scratch);

// What the twin decided for one row, for the GPU test to judge a disagreement precisely.
struct SampleTrace {
  int32_t token = -1;
  bool greedy = false;
  std::vector<int32_t> kept;  // the kept ids in id order (non-greedy rows)
  std::vector<double> cum;    // running sum of e over `kept`, inclusive
  double target = 0;          // u · cum.back()
  // How close the kept set's own decisions came to flipping, relative to the mass involved:
  // top-p: min(mass(>= T) − top_p·Z, top_p·Z − mass(> T)) / Z; min-p: min |e[i] − min_p|.
  double top_p_margin = std::numeric_limits<double>::infinity();
  double min_p_margin = std::numeric_limits<double>::infinity();
};

// One row of cpu::sample with its trace: logits f32 [V] (row), penalties [count].
SampleTrace sample_row_trace(const float* logits, int64_t vocab, const SamplingRow& row,
                             const PenaltyToken* penalties, int64_t count);

}  // namespace stem::cpu
