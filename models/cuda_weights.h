// A Llama-family model's weights on the device, in bf16, laid out for the CUDA forward pass:
// q/k/v stacked into one [Q+2KV, H] matrix and gate/up into one [2I, H] matrix, so that each is a
// single GEMM (one read of the activations, one launch instead of three or two).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "base/model_config.h"
#include "kernels/view.h"
#include "models/cuda_memory.h"

namespace stem {

class WeightStore;

struct CudaLayerWeights {
  TensorView input_norm, post_norm;  // bf16 [H]
  TensorView qkv, qkv_bias;          // bf16 [Q+2KV, H], [Q+2KV] (bias empty when the model has none)
  TensorView o, o_bias;              // bf16 [H, Q], [H]
  TensorView gate_up, gate_up_bias;  // bf16 [2I, H], [2I]
  TensorView down, down_bias;        // bf16 [H, I], [H]
};

class CudaWeights {
 public:
  // Every tensor the config implies, converted to bf16 from the checkpoint's f32/bf16/f16 (errors
  // name the file and tensor), or, when `store` is null, random: N(0, 0.02) matrices, embeddings
  // and biases, norms of 1 (what HF's initializer gives; activations stay finite at any depth).
  CudaWeights(const ModelConfig& config, const WeightStore* store, uint64_t seed);

  size_t bytes() const { return arena_.bytes(); }
  // What one decode step must read of the weights: every layer, the final norm and the LM head
  // (the embedding table only for its few rows, counted as none).
  size_t step_read_bytes() const { return step_read_bytes_; }

  TensorView embed;       // bf16 [V, H]
  TensorView final_norm;  // bf16 [H]
  TensorView lm_head;     // bf16 [V, H]: the embedding table itself when the model ties them
  TensorView inv_freq;    // f32 [D/2], rope frequencies with the config's scaling
  std::vector<CudaLayerWeights> layers;

 private:
  cudabk::DeviceMemory arena_;  // one allocation for all of it
  size_t step_read_bytes_ = 0;
};

// Fills `count` bf16 values at dst (device memory) with N(0, 0.02) noise, at copy speed (the same
// pool-of-chunks scheme as random weights). Benchmarks use it for KV caches they do not prefill.
void fill_random_bf16(void* dst, size_t count, uint64_t seed);

}  // namespace stem
