// The seam between the engine and a device: a backend holds a model's weights and its paged
// KV cache on one device and runs forward steps. The engine only does bookkeeping (which
// pages belong to which sequence) and never sees device memory.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "base/tensor.h"
#include "kernels/cpu/sampling.h"
#include "models/stem_policy.h"

namespace stem {

class WeightStore;
class ForwardingOps;

// One forward step over S sequences: each contributes a run of consecutive new tokens
// (a prompt chunk, or one decode token). Host-side metadata, built by the engine.
struct ForwardBatch {
  std::vector<int32_t> tokens;       // [T]
  std::vector<int32_t> positions;    // [T]
  std::vector<int32_t> slots;        // [T] page * page_size + offset, where each token's K/V goes
  std::vector<int32_t> query_start;  // [S+1] seq s owns rows [query_start[s], query_start[s+1])
  std::vector<int32_t> kv_lens;      // [S] cached tokens of seq s after this step
  std::vector<int32_t> page_table;   // [S * max_pages]
  int32_t max_pages = 0;
  std::vector<int32_t> logit_rows;   // rows whose logits are wanted (e.g. the last of each seq)
  // Stem sparse prefill (docs/stem.md). Both empty, or [S] each. prompt_lens[s]: the whole length
  // of the prefill seq s is in (its prompt, or prompt + generated tokens when recomputed after a
  // preemption), so that Stem's schedule counts the whole prompt in every chunk. stem[s] != 0: seq
  // s prefills with Stem in the layers stem_layer_sparse names (still dense below the settings'
  // min_prompt_len); 0: dense. Decode rows carry 0.
  std::vector<int32_t> prompt_lens;
  std::vector<uint8_t> stem;

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(kv_lens.size()); }
  bool any_stem() const;
  // The prompt lengths the Stem kernels take: prompt_lens[s] where stem[s], else 0 (a prompt of no
  // blocks is all dense), so one call serves a batch that mixes Stem and dense sequences.
  std::vector<int32_t> stem_prompt_lens() const;
  // Checks shapes, token ids, slots and pages against the model and the KV pool, on the host,
  // before anything reaches a device kernel.
  void validate(int64_t vocab_size, int64_t num_pages, int32_t page_size) const;
};

// How to sample each logit row of a ForwardBatch (row i of logit_rows uses rows[i]): the
// parameters the sampling op takes as is, and each row's penalty tokens (kernels/cpu/sampling.h).
struct SamplingBatch {
  std::vector<SamplingRow> rows;          // [R]
  std::vector<int32_t> penalty_offsets;   // [R+1]: row r's tokens are penalties[offsets[r] .. offsets[r+1])
  std::vector<PenaltyToken> penalties;
  // Structured outputs (kernels/cpu/token_mask.h): the token masks of the constrained rows, one
  // after another, mask_words_per_row words each; mask_of_row[r] is row r's mask, or −1.
  std::vector<uint32_t> mask_words;
  std::vector<int32_t> mask_of_row;  // [R]
  int64_t mask_words_per_row = 0;

  int64_t num_rows() const { return static_cast<int64_t>(rows.size()); }
  // Starts the next row; its penalty tokens follow with add_penalties, its mask with add_mask.
  void add_row(const SamplingRow& row);
  void add_penalties(const PenaltyToken* tokens, size_t count);
  // The last row's token mask (`words` words: ceil(vocabulary / 32)); the op samples that row
  // from the ids whose bit is set, and its logprobs are those of the masked distribution.
  void add_mask(const uint32_t* mask, size_t words);
  int64_t num_masks() const { return mask_words_per_row ? static_cast<int64_t>(mask_words.size()) / mask_words_per_row : 0; }
  // Views for the mask op (host memory): masks i32 [M, words], mask_of_row i32 [R].
  TensorView masks_view() const;
  TensorView mask_of_row_view() const;
  // Checks the row count against the batch's logit rows and the token ids against the vocabulary.
  void validate(int64_t logit_rows, int64_t vocab_size) const;
  // The op's view of these vectors (host memory).
  SamplingInputs inputs() const;
};

// The sampling op's results on the host, one entry (or kMaxTopLogprobs) per logit row.
struct SampledTokens {
  std::vector<int32_t> tokens;       // [R]
  std::vector<float> logprobs;       // [R]: of the token under the model's raw distribution (0 unless asked)
  std::vector<int32_t> top_ids;      // [R, kMaxTopLogprobs], best first, −1 past the row's top_logprobs
  std::vector<float> top_logprobs;   // [R, kMaxTopLogprobs]

  void resize(int64_t rows);
  // Host views of the vectors (after resize) for the op to write.
  SamplingOutputs outputs();
};

// What Stem did in the last forward step (zeros when it did nothing).
struct StemStepStats {
  int64_t sparse_blocks = 0;  // query blocks scored and selected, summed over the sparse layers
  // Summed over the sparse layers, the sparse query blocks' heads: causal key blocks, and those
  // left out of the lists (the CUDA backend counts them on the device, 8 bytes back per step).
  int64_t causal_key_blocks = 0, skipped_key_blocks = 0;
};

// Teacher-forced scores of a step's logit rows (forward_token_logprobs): per row, log p(target)
// and the greedy token (kernels/cpu/token_logprob.h).
struct TokenScores {
  std::vector<float> logprob;   // [R]; 0 where the target is −1
  std::vector<int32_t> argmax;  // [R]
};

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  virtual int64_t num_pages() const = 0;
  virtual int32_t page_size() const = 0;
  // The most context tokens (each sequence's in whole pages) that the sequences prefilling in one
  // step may hold together without the backend taking memory beyond what it reserved at load; the
  // engine's scheduler keeps to it (SchedulerOptions::max_prefill_context). 0: no limit. The CUDA
  // backend with an FP8 KV cache stages those contexts in bf16 for prefill and Stem, in room
  // reserved for one max_model_len sequence.
  virtual int64_t max_prefill_context() const { return 0; }
  // Runs one step: writes the new tokens' K/V into the pages `batch.slots` names, and the
  // logits of `batch.logit_rows` as f32 [rows, vocab] on the host (resized as needed).
  virtual void forward(const ForwardBatch& batch, Tensor& logits) = 0;
  // Runs one step and samples one token per logit row with `sampling` (the engine's path for
  // every step). The default runs forward() and the CPU sampling op on the host logits; a backend
  // that overrides it (CUDA) samples on the device and copies back only `out`.
  virtual void forward_sample(const ForwardBatch& batch, const SamplingBatch& sampling, SampledTokens& out);
  // The same, with the SamplingBatch built by `prepare` while the step runs: the CUDA backend calls
  // it after queuing the forward pass, so the host's share of sampling (structured outputs' masks
  // above all: a batch of 64 constrained rows copies 1.2 MB of masks for a 152K vocabulary, and a
  // state new to its grammar walks the vocabulary) overlaps the GPU. The default calls it first.
  virtual void forward_sample(const ForwardBatch& batch, const std::function<void(SamplingBatch&)>& prepare,
                              SampledTokens& out);
  // Runs one step and scores each logit row r against targets[r] (−1: none) without handing the
  // logits back: what perplexity over long prompts needs (bench/eval/). The default runs forward()
  // and the CPU op on the host logits; the CUDA backend scores on the device and copies back 8 bytes
  // a row.
  virtual void forward_token_logprobs(const ForwardBatch& batch, const std::vector<int32_t>& targets, TokenScores& out);
  virtual StemStepStats last_stem_stats() const { return {}; }
  // The last step's time on the device in milliseconds (the CUDA backend's events: from the
  // metadata upload to the logits or the sampled tokens); −1 where the backend does not measure it.
  virtual double last_step_device_ms() const { return -1; }
  // The Stem settings of the following steps (bench/eval/ switches methods without reloading the
  // weights). Checked as at construction; the default refuses.
  virtual void set_stem_settings(const StemSettings& settings);
  // Routes the following steps' ops through `ops`, which the backend wraps around its own
  // (models/ops.h ForwardingOps); null: its own ops again. bench/eval/ keeps each layer's attention
  // inputs of the CPU backend's forward so. The default refuses (the CUDA backend: its decode steps
  // replay captured graphs, which no decorator would see).
  virtual void set_op_decorator(ForwardingOps* ops);

 protected:
  // The checks every forward_token_logprobs makes on its targets.
  void check_targets(const ForwardBatch& batch, const std::vector<int32_t>& targets) const;

 private:
  Tensor sample_logits_;  // forward_sample's default: the step's host logits, reused
};

struct BackendOptions {
  std::string device = "cpu";  // "cpu" or "cuda"
  int64_t num_pages = 0;       // KV pages to allocate; 0: as many as memory allows (cuda)
  int32_t page_size = 16;
  double gpu_memory_fraction = 0.9;  // cuda: share of the device memory for weights + KV cache
  StemSettings stem;                 // for the sequences a ForwardBatch marks as Stem
  // "fp8": FP8 (E4M3) weights and activations, a float checkpoint quantized at load; an FP8
  // checkpoint (ModelConfig::quantization) runs in FP8 either way. "": as the checkpoint is.
  std::string quantization;
  // The KV cache's dtype (--kv-cache-dtype, vLLM's name): "auto" or "bf16" as the backend keeps it
  // (CUDA: bf16; CPU: f32), "fp8": E4M3 codes with an f32 scale per (token, KV head) for K and for
  // V (kernels/cpu/kv_fp8.h), about half the bytes a token, so the pool holds about twice the tokens.
  std::string kv_cache_dtype = "auto";
  // With kv_cache_dtype fp8: layers whose K and V stay unquantized (bf16 on the GPU, f32 on the
  // CPU), for keys that E4M3 cannot hold (the engine fills it from large_key_biases).
  std::vector<int64_t> kv_unquantized_layers;
  // The longest sequence the engine serves (0: the model's max_position_embeddings): the CUDA
  // backend reserves the FP8 cache's bf16 staging for one sequence of it before sizing the pool.
  int64_t max_model_len = 0;
};

// Whether the KV cache is FP8 (kv_cache_dtype "fp8"); refuses any value but auto, bf16 and fp8.
bool kv_cache_fp8(const std::string& kv_cache_dtype);
// Whether layer `layer`'s K/V are FP8: an FP8 cache and not one of kv_unquantized_layers.
bool kv_layer_fp8(const BackendOptions& options, int64_t layer);

// The FP8 KV cache keeps each value to 3 significant bits of its own size (a scale per token and
// KV head, E4M3 codes), so a key channel whose bias is large against the token's own part of it
// loses that part: Qwen2.5's first layers carry key biases up to 354 against a token-dependent
// part of about 1 (E4M3's steps there are 32), and Qwen2.5-Coder-1.5B's long-context accuracy
// fell from 58.4 to under 20 with every layer in FP8 (bench/RESULTS.md). Returns (layer, largest
// |k_proj bias|) for each layer whose key bias reaches `limit` (none for models without biases);
// the engine keeps those layers' K/V unquantized (BackendOptions::kv_unquantized_layers).
struct LargeKeyBias {
  int64_t layer;
  float max_abs;
};
std::vector<LargeKeyBias> large_key_biases(const ModelConfig& config, const WeightStore& weights, float limit);
// The engine's limit: from 16 on, E4M3's steps are 2 or more, larger than the token-dependent
// part of a key channel in the models measured (about 1).
constexpr float kFp8KvKeyBiasLimit = 16.f;

// Whether the model runs in FP8: asked for, or an FP8 checkpoint. Refuses any other quantization.
bool wants_fp8(const ModelConfig& config, const BackendOptions& options);
// Refuses FP8 on a GPU of compute capability below 8.9 (FP8 tensor cores came with Ada and
// Hopper), naming the GPU and its capability.
void check_fp8_gpu(int major, int minor, const std::string& gpu_name);

// The backend for options.device. `weights` null means random weights (--load-format dummy).
std::unique_ptr<ModelBackend> make_backend(const ModelConfig& config, const WeightStore* weights,
                                           const BackendOptions& options);

// The CPU backend (models/cpu/backend.cc): fp32 weights and KV cache in host memory.
std::unique_ptr<ModelBackend> make_cpu_backend(const ModelConfig& config, const WeightStore& weights,
                                               const BackendOptions& options);
// The CUDA backend (models/cuda/backend.cc), in builds with CUDA.
std::unique_ptr<ModelBackend> make_cuda_backend(const ModelConfig& config, const WeightStore* weights,
                                                const BackendOptions& options);

}  // namespace stem
