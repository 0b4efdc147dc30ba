#include "engine/sequence_output.h"

#include <algorithm>

namespace stem {

SequenceOutput::SequenceOutput(const Tokenizer* tokenizer, const StopConditions& stop,
                               const std::vector<int32_t>& eos_ids, int64_t max_new)
    : stop_(&stop), eos_ids_(&eos_ids), max_new_(max_new), stopper_(stop.stop) {
  if (tokenizer) detok_ = std::make_unique<IncrementalDetokenizer>(*tokenizer);
}

TokenEvent SequenceOutput::on_token(int32_t token, const SampleResult& sample) {
  TokenEvent e;
  e.token = token;
  e.sample = sample;
  e.completion_tokens = ++generated_;
  const bool eos = !stop_->ignore_eos && std::count(eos_ids_->begin(), eos_ids_->end(), token);
  const bool stop_token = std::count(stop_->stop_token_ids.begin(), stop_->stop_token_ids.end(), token);
  const bool last = generated_ >= max_new_;
  if (eos || stop_token) {
    // The stop token's own text is not output; what was held back is.
    if (detok_) e.text = stopper_.push(detok_->flush()) + stopper_.flush();
    e.finished = true;
    e.finish = FinishReason::Stop;
    e.stop_reason = std::to_string(token);
    return e;
  }
  if (!detok_) {
    e.finished = last;
    return e;
  }
  std::string piece = detok_->push(token);
  if (last) piece += detok_->flush();
  e.text = stopper_.push(piece);
  if (stopper_.stopped()) {
    if (stop_->include_stop_str) e.text += stopper_.matched();
    e.finished = true;
    e.finish = FinishReason::Stop;
    e.stop_reason = stopper_.matched();
    return e;
  }
  if (last) {
    e.text += stopper_.flush();
    e.finished = true;
    e.finish = FinishReason::Length;
  }
  return e;
}

}  // namespace stem
