// One sequence's way from sampled tokens to streamed text: incremental detokenization, stop
// strings held back until they are decided, EOS and stop tokens, and the length limit.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/request.h"
#include "engine/stop_checker.h"
#include "text/tokenizer.h"

namespace stem {

class SequenceOutput {
 public:
  // tokenizer may be null (no text, only ids); max_new is the most tokens this sequence may add.
  SequenceOutput(const Tokenizer* tokenizer, const StopConditions& stop, const std::vector<int32_t>& eos_ids,
                 int64_t max_new);

  // The event for one newly sampled token; `finished` is set when it ends the sequence.
  TokenEvent on_token(int32_t token, const SampleResult& sample);
  int64_t num_generated() const { return generated_; }

 private:
  const StopConditions* stop_;
  const std::vector<int32_t>* eos_ids_;
  int64_t max_new_;
  int64_t generated_ = 0;
  std::unique_ptr<IncrementalDetokenizer> detok_;
  StopChecker stopper_;
};

}  // namespace stem
