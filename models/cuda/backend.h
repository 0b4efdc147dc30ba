// The CUDA backend: a Llama-family model in bf16 on one GPU, its paged bf16 KV cache, and the
// forward pass as a list of kernel launches on one stream. Decode steps (one new token per
// sequence) replay CUDA graphs captured per padded batch size; prefill and mixed steps run eagerly.
//
// Host code (g++): it calls the stem::cuda launchers and the CUDA runtime, never a kernel itself.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/backend.h"

namespace stem {

// Settings beyond BackendOptions that tests and benchmarks turn; the defaults are the server's.
struct CudaBackendOptions {
  // Batch sizes decode graphs are captured for (lazily, on first use); a decode step of S
  // sequences is padded to the next one. Empty: every step runs eagerly.
  std::vector<int32_t> graph_batch_sizes = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  // Tokens per step the activation buffers are sized for before the KV pool takes the rest of
  // the memory. A larger step still runs: the buffers grow (and captured graphs are dropped).
  int64_t reserve_step_tokens = 8192;
  uint64_t seed = 0;  // random (dummy) weights
  // Time every op of the eager steps (models/cuda/profile.h); read the totals with profile().
  bool profile = false;
};

// What the backend holds and has done, for logs, tests and benchmarks.
struct CudaBackendStats {
  size_t weight_bytes = 0, kv_bytes = 0, workspace_bytes = 0;
  size_t weight_step_read_bytes = 0;  // what one decode step reads of the weights
  size_t kv_bytes_per_token = 0;      // all layers, K and V
  int64_t graphs_captured = 0, graph_replays = 0, eager_steps = 0;
  // GEMM shape buckets tuned so far, the load's warm-up included (cuda::GemmContext::tunings).
  int64_t gemm_tunings = 0;
  // FP8 KV cache: the bf16 staging's pages (reserved at load for one max_model_len sequence; more
  // only if a step staged more, which the engine's scheduler avoids).
  int64_t kv_stage_pages = 0;
  // The last step's GPU time: from the metadata upload to the logits (forward; their copy to the
  // host not included) or to the sampled tokens on the host (forward_sample).
  float last_step_device_ms = 0;
};

class CudaModelBackend : public ModelBackend {
 public:
  virtual CudaBackendStats stats() const = 0;
  // Fills the whole KV pool with random values, so that a benchmark can time decode over long
  // contexts without prefilling them first (and without timing reads of zeros).
  virtual void fill_kv_random(uint64_t seed) = 0;
  // With CudaBackendOptions::profile: device milliseconds per op over the eager steps so far.
  virtual const std::vector<std::pair<std::string, double>>& profile() const = 0;
  virtual void set_profiling(bool on) = 0;
  virtual void clear_profile() = 0;
};

std::unique_ptr<CudaModelBackend> make_cuda_model_backend(const ModelConfig& config, const WeightStore* weights,
                                                          const BackendOptions& options,
                                                          const CudaBackendOptions& cuda_options = {});

}  // namespace stem
