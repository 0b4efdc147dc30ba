// The engine: a loaded model (config, weights, tokenizer, chat template) with its KV cache,
// and generation from token ids to streamed text.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/page_allocator.h"
#include "engine/sampler.h"
#include "models/backend.h"

namespace stem {

class Tokenizer;
class ModelChatTemplate;

struct EngineOptions {
  std::string device = "cpu";            // "cpu" or "cuda"
  bool dummy_weights = false;            // random weights for the config (--load-format dummy)
  double gpu_memory_fraction = 0.9;      // cuda: share of device memory for weights + KV cache
  int32_t page_size = 16;
  int64_t max_model_len = 0;          // 0: the model's max_position_embeddings
  int64_t kv_cache_tokens = 0;        // 0: room for one sequence of max_model_len
  int64_t max_num_batched_tokens = 512;  // prefill chunk size
  bool load_tokenizer = true;
};

struct StopConditions {
  int32_t max_tokens = 256;
  std::vector<std::string> stop;        // stop strings (never part of the output)
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS
  bool ignore_eos = false;
  bool include_stop_str = false;
};

struct GenerateRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopConditions stop;
  const std::atomic<bool>* cancelled = nullptr;  // set by the caller to stop early
};

enum class FinishReason { Length, Stop, Cancelled };
const char* finish_reason_name(FinishReason r);

// One generated token, as streamed: `text` is the new complete text (may be empty while a
// UTF-8 character or a possible stop string is still incomplete).
struct TokenEvent {
  int32_t token;
  std::string text;
  SampleResult sample;
};
using StreamSink = std::function<void(const TokenEvent&)>;

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::vector<SampleResult> samples;
  std::string text;
  FinishReason finish = FinishReason::Length;
  std::string stop_reason;  // the stop string or token that ended it
  int64_t prompt_tokens = 0;
};

class Engine {
 public:
  explicit Engine(const std::filesystem::path& model_dir, const EngineOptions& options = {});
  ~Engine();

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& model_dir() const { return model_dir_; }
  int64_t max_model_len() const { return max_model_len_; }
  const Tokenizer& tokenizer() const;  // throws if the model folder has none
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const ModelChatTemplate* chat_template() const { return chat_template_.get(); }
  const std::vector<int32_t>& eos_token_ids() const { return eos_ids_; }

  // Renders messages (a JSON array of {role, content}) with the model's chat template.
  std::string apply_chat_template(const std::string& messages_json, bool add_generation_prompt) const;

  GenerateResult generate(const GenerateRequest& request, const StreamSink& sink = {});
  // Teacher-forced logits at every position of `ids`: f32 [ids.size(), vocab].
  Tensor score(const std::vector<int32_t>& ids);

 private:
  // Runs the prompt through the model in chunks; returns the last position's logits.
  void prefill(const std::vector<int32_t>& ids, std::vector<int32_t>& pages, Tensor& logits, bool all_logits);
  void step(const std::vector<int32_t>& tokens, int64_t start_pos, std::vector<int32_t>& pages, Tensor& logits,
            bool all_logits);

  std::filesystem::path model_dir_;
  EngineOptions options_;
  ModelConfig config_;
  int64_t max_model_len_ = 0;
  std::unique_ptr<ModelBackend> backend_;
  std::unique_ptr<PageAllocator> kv_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelChatTemplate> chat_template_;
  std::vector<int32_t> eos_ids_;
  uint64_t seed_state_;
};

}  // namespace stem
