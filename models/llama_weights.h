// The Llama family's weights, described once for every backend: which checkpoint tensors (Hugging
// Face names) fill which tensor of the forward pass, and the two fusions: q, k and v stacked into
// one [Q+2KV, H] matrix and gate and up into one [2I, H], so that each is a single GEMM (one read
// of the activations, one launch instead of three or two). A backend places the table in its own
// memory and dtype (the CPU: f32 host memory; CUDA: bf16 device memory) and fills it from the
// checkpoint with load_weights.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "kernels/view.h"

namespace stem {

class WeightStore;

struct LlamaLayerWeights {
  TensorView input_norm, post_norm;  // [H]
  TensorView qkv, qkv_bias;          // [Q+2KV, H], [Q+2KV] (bias empty when the model has none)
  TensorView o, o_bias;              // [H, Q], [H]
  TensorView gate_up, gate_up_bias;  // [2I, H], [2I]
  TensorView down, down_bias;        // [H, I], [H]
  // FP8 weights (place_weights' fp8_codes): the four matrices above hold E4M3 codes, and these
  // f32 [rows] their scales, one per output channel (row). Empty otherwise.
  TensorView qkv_scale, o_scale, gate_up_scale, down_scale;
};

struct LlamaWeights {
  TensorView embed;       // [V, H]
  TensorView final_norm;  // [H]
  TensorView lm_head;     // [V, H]: the embedding table itself when the model ties them
  TensorView inv_freq;    // f32 [D/2], rope frequencies with the config's scaling (computed, not loaded)
  std::vector<LlamaLayerWeights> layers;
};

// A checkpoint tensor and the rows (first dimension; a vector's elements) it fills.
struct WeightPart {
  std::string name;
  int64_t rows = 0;
};

// What random (dummy) weights put in a tensor: N(0, 0.02) noise (matrices, embeddings, biases:
// what HF's initializer gives) or ones (norms).
enum class WeightInit { Normal, Ones };

// One tensor of LlamaWeights: its place, its shape, and the checkpoint tensors stacked along its
// first dimension, in order, to fill it.
struct WeightSpec {
  TensorView* dst = nullptr;
  std::vector<int64_t> shape;
  std::vector<WeightPart> parts;
  WeightInit init = WeightInit::Normal;
  bool per_step = true;  // read whole by every decode step (all but the embedding table)
  TensorView* scale = nullptr;  // the layers' matrices: where their FP8 scales go (placed only in FP8)
};

// Whether the LM head is the embedding table: tie_word_embeddings, unless the checkpoint stores
// lm_head.weight anyway (some tied checkpoints do; then it is used as stored). No store: tied.
bool lm_head_tied(const ModelConfig& config, const WeightStore* store);

// Every tensor the config implies (inv_freq aside). Sizes w.layers; the specs point into w, so w
// must not be resized while they are used. Tied: no entry for the LM head.
std::vector<WeightSpec> llama_weight_table(const ModelConfig& config, bool tied, LlamaWeights& w);

// Places every tensor of the table, in `dtype`, and inv_freq (f32) in one buffer at `base`, each
// on a 256-byte boundary (cuBLASLt's fastest kernels want it), and points lm_head at embed when
// the table has no LM head. base null: only measures. Returns the bytes the buffer needs.
// fp8_codes set: FP8 weights. The layers' matrices (specs with a scale) hold E4M3 codes in that
// dtype (F8E4M3, or F32 for the codes widened, exactly, to f32) with an f32 scale per row.
size_t place_weights(const ModelConfig& config, const std::vector<WeightSpec>& table, LlamaWeights& w, DType dtype,
                     char* base, std::optional<DType> fp8_codes = std::nullopt);

// Copies host bytes to where a weight lives (cudaMemcpy for device memory).
using WeightCopy = void (*)(void* dst, const void* src, size_t bytes);

// Fills every tensor of the table (placed, f32 or bf16) from the checkpoint, converting from its
// f32/bf16/f16 (errors name the file and tensor), and inv_freq from rope_frequencies. copy null:
// the weights are in host memory and are written in place. A checkpoint's E4M3 tensor (a
// compressed-tensors FP8 checkpoint) comes with `<name>_scale`, f32/bf16/f16 of [rows, 1] or
// [rows] (per output channel) or [1] or [] (per tensor): into FP8 weights as its codes and scales,
// into other weights dequantized (code · scale). A float tensor into FP8 weights is quantized per
// row (kernels/cpu/fp8.h).
void load_weights(const std::vector<WeightSpec>& table, const LlamaWeights& w, const ModelConfig& config,
                  const WeightStore& store, WeightCopy copy);

// The D/2 rope inverse frequencies with the config's scaling (kernels/cpu/rope.h), checked.
std::vector<float> rope_frequencies(const ModelConfig& config);

// Bytes of a view's elements (0 when empty).
size_t view_bytes(const TensorView& v);

}  // namespace stem
