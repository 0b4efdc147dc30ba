// The model as the evaluation drives it: sequences straight through a backend (models/backend.h)
// with each method's StemSettings, so that a whole prompt is prefilled in one step (every position
// through the sparse path) and any rows' logits come back; greedy decoding of several prompts
// together; teacher-forced scoring of long documents in chunks (the logits never all at once); the
// attention time of one prefill from the CUDA backend's per-op profile; and a prefill whose ops a
// decorator observes (the attention stage's capture, eval_attention.h).
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bench/eval/eval_methods.h"
#include "text/chat_template.h"
#include "base/model_config.h"
#include "base/tensor.h"
#include "text/tokenizer.h"
#include "base/weights.h"
#include "models/backend.h"

namespace stem {
class CudaModelBackend;
class ForwardingOps;
}

namespace stem::eval {

struct PrefillResult {
  Tensor logits;  // f32 [rows asked for, vocab]
  double seconds = 0;
  // Listed / causal (query block, head, key block) triples over the sparse layers and every query
  // block of the prompt (both backends count them; 1 for dense).
  double density = 0;
};

// One greedy answer (greedy_batch).
struct Generation {
  std::vector<int32_t> tokens;  // generated, the EOS included when it came
  std::string text;             // decoded, special tokens skipped
  double density = 0;           // of the prompt's prefill
  double prefill_seconds = 0;
};

// How a greedy answer ends besides an EOS token and its token budget.
enum class StopRule { Eos, Line };  // Line: once a non-blank line of text is complete

// Teacher-forced scores of one sequence (score).
struct SequenceScore {
  double nll_sum = 0;   // −Σ log p(ids[t + 1] | ids[..t]) over the scored positions
  int64_t count = 0;    // positions scored (tokens − 1)
  int64_t correct = 0;  // of them, where the greedy token was ids[t + 1]
  double density = 0;
  double seconds = 0;
};

// One prefill timed on the device (timed_prefill).
struct PrefillTiming {
  double step_ms = 0;       // the whole step (CUDA: device time; CPU: wall time)
  double attention_ms = 0;  // the attention ops of every layer, Stem's planning included (CUDA; NaN on the CPU)
  double density = 0;
};

class EvalModel {
 public:
  // max_tokens: the longest sequence (prompt + generated) any call will run; max_batch: how many
  // sequences greedy_batch holds at once (the KV pool is max_batch · max_tokens).
  // quantization: BackendOptions::quantization ("" or "fp8"); kv_cache_dtype: BackendOptions::
  // kv_cache_dtype ("auto", "bf16" or "fp8").
  EvalModel(const std::filesystem::path& dir, const std::string& device, int64_t max_tokens, int64_t max_batch = 1,
            const std::string& quantization = "", const std::string& kv_cache_dtype = "auto");
  ~EvalModel();

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const WeightStore& weights() const { return weights_; }
  const std::string& device() const { return device_; }
  int64_t max_tokens() const { return max_tokens_; }
  int64_t max_batch() const { return max_batch_; }
  // The chat template rendered for one user message, with the generation prompt.
  std::string chat(const std::string& user) const;

  // Makes `m` the method of the following calls (the backend's Stem settings, switched in place).
  void use(const Method& m);
  // One prefill step of `ids` from position 0; logits of `rows` (indices into ids). `ops`: a
  // decorator the backend's ops run through in this step (ModelBackend::set_op_decorator; the
  // CPU backend's).
  PrefillResult prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& rows,
                        ForwardingOps* ops = nullptr);
  // Prefill, then greedy decoding (dense) of up to `max_new` tokens, stopping at an EOS token.
  std::vector<int32_t> greedy(const std::vector<int32_t>& ids, int max_new, double* density = nullptr);
  // Each prompt prefilled alone (one step each, through the method's sparse path), then all decoded
  // together, one token per sequence a step, until each has its max_new tokens, an EOS or its stop.
  std::vector<Generation> greedy_batch(const std::vector<std::span<const int32_t>>& prompts,
                                       const std::vector<int>& max_new, StopRule stop);
  // Teacher-forced NLL of ids[1..] given the prefix, prefilled in chunks of `chunk` tokens (a
  // multiple of the Stem block: the same selection as one step, docs/stem.md "Chunked prefill"),
  // each chunk scored on the device (forward_token_logprobs). chunk 0: one step.
  SequenceScore score(std::span<const int32_t> ids, int64_t chunk);
  // The prefill of ids (one step, the last row's logits), warmed up once and then run `reps`
  // times: the median step and attention times.
  PrefillTiming timed_prefill(std::span<const int32_t> ids, int reps);

 private:
  // Density of a prefill of `tokens` tokens from the skipped triples the backend counted.
  double density(int64_t tokens, int64_t skipped) const;
  // A step of `tokens` of sequence `seq` (its own pages) from position `start`.
  ForwardBatch sequence_step(std::span<const int32_t> tokens, int64_t start, int64_t seq) const;

  std::string device_;
  ModelConfig config_;
  WeightStore weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ModelChatTemplate> template_;
  int64_t max_tokens_ = 0, max_batch_ = 1, pages_per_seq_ = 0;
  int32_t page_size_ = 16;
  std::unique_ptr<ModelBackend> backend_;
  CudaModelBackend* cuda_ = nullptr;  // backend_ when it is the CUDA one (its profile)
  std::optional<Method> method_;
};

// −log p(ids[t + 1] | ids[..t]) for every t < rows − 1 of teacher-forced logits [rows, vocab].
std::vector<double> next_token_nll(const Tensor& logits, const std::vector<int32_t>& ids);

}  // namespace stem::eval
