// The Llama family (Llama 2/3/3.x, Mistral, Qwen2, SmolLM): its forward pass, written once as a
// sequence of op calls (models/ops.h) that the CPU and CUDA backends both implement. Differences
// between variants are config: biases, rope scaling, sliding window, tied embeddings; the weights
// and their fusions are described once too (models/llama_weights.h).
#pragma once
#include <vector>

#include "base/model_config.h"
#include "models/stem_policy.h"
#include "kernels/view.h"
#include "models/llama_weights.h"
#include "models/ops.h"

namespace stem {

// The paged KV cache as the model sees it: per layer, K and V pages [P, page_size, Hkv, D]. An
// FP8 cache (kernels/cpu/kv_fp8.h) holds E4M3 codes there (F8E4M3) and its scales [P, page_size,
// Hkv] in k_scale, v_scale (empty otherwise; one per layer, an empty view for a layer the FP8 cache
// keeps unquantized, BackendOptions::kv_unquantized_layers); the ops find a layer's scales by the
// address of its codes, as they find an FP8 weight's, and branch on each layer's cache dtype, so the
// op interface stays the same.
struct KvLayers {
  std::vector<TensorView> k, v;
  std::vector<TensorView> k_scale, v_scale;
};

// One forward step as llama_forward takes it, every view in the backend's memory.
struct LlamaStep {
  // A ForwardBatch's metadata (models/backend.h), i32: tokens, positions, slots [T]; query_start
  // [S+1]; kv_lens [S]; page_table [S, max_pages]; logit_rows [R].
  TensorView tokens, positions, slots, query_start, kv_lens, page_table, logit_rows;
  bool gather = true;  // the logit rows are not rows 0..R-1 in order: gather them first
  // Some query block of the step is sparse: the layers stem_layer_sparse names attend through
  // ops.stem_attention (otherwise every layer is dense: the numbers the lists would give, faster).
  bool stem = false;
  // A step without logit rows needs nothing of its last layer beyond the K/V write, and the CUDA
  // backend stops there. The CPU backend runs that layer whole, so that its Stem figures
  // (StemStepStats) count the last layer's block lists in every chunk of a prompt.
  bool whole_last_layer = false;
  // Activations: residual f32 [T, H]; x [T, H]; qkv [T, Q+2KV]; attn [T, Hq, D]; proj [T, H];
  // gate_up [T, 2I]; gathered [R, H] (when gather); logits f32 [R, V].
  TensorView residual, x, qkv, attn, proj, gate_up, gathered, logits;
};

// Runs one step: writes the new tokens' K/V into their cache slots and the logit rows' logits
// into step.logits. `stem`: the settings whose layers stem_layer_sparse names.
void llama_forward(const ModelConfig& config, const LlamaWeights& weights, const KvLayers& kv,
                   const StemSettings& stem, const LlamaStep& step, ModelOps& ops);

}  // namespace stem
