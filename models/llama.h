// The Llama family (Llama 2/3/3.x, Mistral, Qwen2, SmolLM) as one sequence of ops.
// Differences between variants are config: biases, rope scaling, sliding window, tied embeddings.
#pragma once
#include <vector>

#include "base/model_config.h"
#include "base/tensor.h"
#include "base/weights.h"
#include "models/backend.h"
#include "models/llama_weights.h"

namespace stem {

// The paged KV cache as the model sees it: per layer, K and V pages f32 [P, page_size, Hkv, D].
struct KvLayers {
  std::vector<TensorView> k, v;
};

class LlamaModel {
 public:
  // Loads and checks every tensor the config implies; the error names the file and tensor.
  LlamaModel(const ModelConfig& config, const WeightStore& weights);

  const ModelConfig& config() const { return config_; }
  // logits: f32 [batch.logit_rows.size(), vocab], resized as needed. The sequences the batch marks
  // as Stem prefill with Stem (`stem`) in the layers stem_layer_sparse names; `stats` (optional)
  // gets what Stem did.
  void forward(const ForwardBatch& batch, const KvLayers& kv, Tensor& logits, const StemSettings& stem = {},
               StemStepStats* stats = nullptr) const;

 private:
  ModelConfig config_;
  Tensor arena_;     // f32, every weight (models/llama_weights.h)
  LlamaWeights w_;   // views into arena_
};

}  // namespace stem
