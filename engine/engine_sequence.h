// The engine's per-request state (private to engine*.cc): a request and its n sequences.
#pragma once
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "engine/sequence_output.h"

namespace stem {

// The scheduler sees a sequence as its SeqState base; the engine adds sampling and output.
struct Engine::Sequence : SeqState {
  Active* request = nullptr;
  int32_t index = 0;
  Sampler sampler;
  SequenceOutput output;
  bool done = false;
  bool stem = false;        // prefills with Stem (the request's mode, or the engine's default)
  bool stem_pages = false;  // that prefill selects causally with Stem: its pages are Stem K/V (their own kind)
  Sequence(Active* r, int32_t i, const SamplingParams& p, uint64_t seed, SequenceOutput out)
      : request(r), index(i), sampler(p, seed), output(std::move(out)) {}
};

struct Engine::Active {
  GenerateRequest request;
  StreamSink sink;
  int64_t prompt_len = 0;
  int64_t cached_tokens = -1;  // prompt tokens its first admitted sequence took from the cache; -1: none admitted yet
  std::vector<std::unique_ptr<Sequence>> seqs;
  int32_t unfinished = 0;
};

}  // namespace stem
