// The model as the evaluation drives it: one sequence at a time straight through a backend
// (models/backend.h), with each method's StemSettings, so that a whole prompt is prefilled in one
// step (every position through the sparse path) and any rows' logits come back.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/eval/eval_methods.h"
#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/tensor.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "models/backend.h"

namespace stem::eval {

struct PrefillResult {
  Tensor logits;  // f32 [rows asked for, vocab]
  double seconds = 0;
  // Listed / causal (query block, head, key block) triples over the sparse layers and every query
  // block of the prompt; CPU backend only (the CUDA backend does not read its lists back): NaN.
  double density = 0;
};

class EvalModel {
 public:
  // max_tokens: the longest sequence (prompt + generated) any call will run.
  EvalModel(const std::filesystem::path& dir, const std::string& device, int64_t max_tokens);

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const WeightStore& weights() const { return weights_; }
  const std::string& device() const { return device_; }
  int64_t max_tokens() const { return max_tokens_; }
  // The chat template rendered for one user message, with the generation prompt.
  std::string chat(const std::string& user) const;

  // Makes `m` the method of the following calls (a new backend when its settings differ).
  void use(const Method& m);
  // One prefill step of `ids` from position 0; logits of `rows` (indices into ids).
  PrefillResult prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& rows);
  // Prefill, then greedy decoding (dense) of up to `max_new` tokens, stopping at an EOS token.
  std::vector<int32_t> greedy(const std::vector<int32_t>& ids, int max_new, double* density = nullptr);

 private:
  std::string device_;
  ModelConfig config_;
  WeightStore weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ModelChatTemplate> template_;
  int64_t max_tokens_ = 0;
  int32_t page_size_ = 16;
  std::unique_ptr<ModelBackend> backend_;
  std::optional<Method> method_;
  std::string backend_key_;  // the settings the backend was made with
};

// −log p(ids[t + 1] | ids[..t]) for every t < rows − 1 of teacher-forced logits [rows, vocab].
std::vector<double> next_token_nll(const Tensor& logits, const std::vector<int32_t>& ids);

}  // namespace stem::eval
