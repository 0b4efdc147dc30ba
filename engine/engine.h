// The engine: a loaded model (config, weights, tokenizer, chat template) with its KV cache, and
// continuous-batched generation: requests are added, and each step() runs one forward pass over
// the decode tokens and prefill chunks the scheduler picks, then streams every sequence's new
// token to its request's sink. Not thread-safe: one thread (EngineLoop's, or the caller of
// generate()) drives it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "engine/page_allocator.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "models/backend.h"

namespace stem {

class Tokenizer;
class ModelChatTemplate;

// Tokens per engine step when the options leave it at 0: 8192 on cuda, where prefill chunks
// smaller than that leave the GEMMs short of the card (128K-token prompt on an H100, 8B shape:
// time to first token 6.75 s in chunks of 512, 5.62 s of 2048, 5.20 s of 8192; bench/RESULTS.md)
// and the CUDA backend reserves its activations for it; 512 on cpu, where a step's latency grows
// with its tokens and nothing is gained past a few hundred.
int64_t default_max_num_batched_tokens(const std::string& device);

struct EngineOptions {
  std::string device = "cpu";            // "cpu" or "cuda"
  bool dummy_weights = false;            // random weights for the config (--load-format dummy)
  double gpu_memory_fraction = 0.9;      // cuda: share of device memory for weights + KV cache
  std::string quantization;              // "fp8" (--quantization): BackendOptions::quantization
  std::string kv_cache_dtype = "auto";   // auto, bf16, fp8 (--kv-cache-dtype): BackendOptions::kv_cache_dtype
  // With fp8: a layer whose key bias reaches this keeps its K/V unquantized (models/backend.h,
  // large_key_biases; BackendOptions::kv_unquantized_layers). Tests lower it.
  float kv_fp8_key_bias_limit = kFp8KvKeyBiasLimit;
  int32_t page_size = 16;
  int64_t max_model_len = 0;             // 0: the model's max_position_embeddings
  int64_t kv_cache_tokens = 0;           // 0: room for one sequence of max_model_len (cpu)
  int64_t max_num_batched_tokens = 0;    // tokens per step: decode rows plus prefill chunks; 0: the
                                         // device's default (default_max_num_batched_tokens)
  int64_t max_num_seqs = 64;             // sequences in the running batch
  bool load_tokenizer = true;
  // Stem sparse prefill (docs/stem.md): the mode of requests that do not choose one, and the
  // method's settings. Prompts shorter than stem.min_prompt_len prefill densely either way.
  SparsePrefill sparse_prefill = SparsePrefill::Stem;
  StemSettings stem;
  // Automatic prefix caching (docs/prefix_caching.md): full KV pages of computed prefixes are kept
  // and shared by later requests with the same prefix (--enable-prefix-caching).
  bool enable_prefix_caching = true;
};

// What one step did, for metrics and logs.
struct StepStats {
  int64_t num_seqs = 0;        // sequences in the forward batch
  int64_t num_tokens = 0;      // rows in the forward batch
  int64_t num_decode = 0;      // of the sequences, those that decoded one token
  int64_t num_sampled = 0;     // tokens generated
  int64_t num_preempted = 0;
  double forward_seconds = 0;  // wall time of the backend's forward pass (host work included)
  double device_ms = -1;       // its time on the device (ModelBackend::last_step_device_ms)
  int64_t stem_seqs = 0;  // of the sequences, those prefilling with Stem
  StemStepStats stem;     // what Stem did in the forward pass (the backend's figures)
};

// Running totals, read by the metrics.
struct EngineCounters {
  int64_t num_running = 0;  // sequences holding KV pages
  int64_t num_waiting = 0;  // sequences queued (new or preempted)
  int64_t used_pages = 0, total_pages = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;      // of every request added
  int64_t generation_tokens = 0;  // sampled
  int64_t stem_sparse_blocks = 0;  // query blocks Stem selected key blocks for, summed over layers
  // Prefix cache: tokens looked up at admissions and of those found cached; pages it holds.
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  int64_t cached_pages = 0;
};

class Engine {
 public:
  explicit Engine(const std::filesystem::path& model_dir, const EngineOptions& options = {});
  ~Engine();

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& model_dir() const { return model_dir_; }
  const EngineOptions& options() const { return options_; }
  int64_t max_model_len() const { return max_model_len_; }
  int64_t kv_capacity_tokens() const { return kv_->num_pages() * kv_->page_size(); }
  const Tokenizer& tokenizer() const;  // throws if the model folder has none
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const ModelChatTemplate* chat_template() const { return chat_template_.get(); }
  const std::vector<int32_t>& eos_token_ids() const { return eos_ids_; }
  // The backend the steps run on, read-only: benchmarks read its own figures (the CUDA backend's
  // device time of the last step, bench/bench_constrained.cc).
  const ModelBackend& backend() const { return *backend_; }

  // Renders messages (a JSON array of {role, content}) with the model's chat template; the
  // front ends hand over the parsed messages themselves, not a string to parse again.
  std::string apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;

  // A request that validate() accepted. Only validate() makes one, so what takes it checks nothing
  // again: EngineLoop validates on the caller's thread (the error goes back to the client) and
  // queues the ValidatedRequest for the engine's thread.
  class ValidatedRequest {
   public:
    const GenerateRequest& get() const { return request_; }

   private:
    friend class Engine;
    explicit ValidatedRequest(GenerateRequest r) : request_(std::move(r)) {}
    GenerateRequest request_;
  };
  // Throws stem::Error naming what is wrong: empty or too long prompt, token ids outside the
  // vocabulary, sampling values out of range, n < 1, a request the KV cache can never hold.
  ValidatedRequest validate(GenerateRequest request) const;
  // Queues a request; its sequences' events go to `sink` from the thread that calls step(). A
  // request with no room to generate (max_tokens 0) finishes here.
  void add_request(ValidatedRequest request, StreamSink sink);
  void add_request(GenerateRequest request, StreamSink sink) { add_request(validate(std::move(request)), std::move(sink)); }
  bool has_work() const { return !active_.empty(); }
  // One scheduling step: drops cancelled requests (freeing their pages), runs one forward pass
  // over the scheduled decode tokens and prefill chunks, samples and streams. No-op when idle.
  StepStats step();
  // Ends every request with FinishReason::Abort and `why` (shutdown).
  void abort_all(const std::string& why);
  EngineCounters counters() const;

  // Adds one request (n = 1) and steps until it finishes: the one-shot path (CLI, tests).
  // Other requests added before run along with it.
  GenerateResult generate(const GenerateRequest& request, const StreamSink& sink = {});
  // Teacher-forced logits at every position of `ids`: f32 [ids.size(), vocab].
  Tensor score(const std::vector<int32_t>& ids);

 private:
  struct Active;
  struct Sequence;
  void finish(Sequence& seq, TokenEvent event);
  // Before seq's next prefill (its admission, or its recompute after a preemption): how it chunks
  // (chunk_align) and how it uses the prefix cache: the kind of K/V its pages hold (cache_seed),
  // its hit alignment and cacheable tokens (docs/prefix_caching.md).
  void prepare_prefill(Sequence& seq) const;
  // The leading tokens of seq whose K/V its next prefill may take from the prefix cache and
  // publish to it: all, except for a Stem prefill that selects blocks: a causal selection's whole
  // blocks, the paper schedule's leading dense blocks.
  int64_t cacheable_tokens(const Sequence& seq) const;
  void run_prefill_chunk(const std::vector<int32_t>& tokens, int64_t start_pos, std::vector<int32_t>& pages,
                         Tensor& logits);

  std::filesystem::path model_dir_;
  EngineOptions options_;
  ModelConfig config_;
  int64_t max_model_len_ = 0;
  std::unique_ptr<ModelBackend> backend_;
  std::unique_ptr<PageAllocator> kv_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelChatTemplate> chat_template_;
  std::vector<int32_t> eos_ids_;
  std::string model_identity_;  // what the prefix cache's hashes start from, with a request's salt
  std::string stem_kv_kind_;    // the seed's KV kind of causal Stem prefills (stem_kv_kind)
  uint64_t seed_state_;
  int64_t next_seq_id_ = 0;
  std::list<std::unique_ptr<Active>> active_;
  int64_t prompt_tokens_total_ = 0, generation_tokens_total_ = 0, stem_sparse_blocks_total_ = 0;
};

}  // namespace stem
