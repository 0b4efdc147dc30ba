// A Llama-family model's weights on the device, in bf16, in the layout of models/llama_weights.h
// (q/k/v and gate/up fused); in FP8, the layers' four matrices in E4M3 with an f32 scale per
// output channel (the LM head, embeddings and norms stay bf16).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "base/model_config.h"
#include "kernels/view.h"
#include "models/llama_weights.h"
#include "models/cuda/memory.h"

namespace stem {

class WeightStore;

// The Llama weights in bf16 (inv_freq f32) on the device, placed and filled from the one table
// of models/llama_weights.h.
class CudaWeights : public LlamaWeights {
 public:
  // Every tensor the config implies, converted to bf16 from the checkpoint's f32/bf16/f16 (errors
  // name the file and tensor), or, when `store` is null, random: N(0, 0.02) matrices, embeddings
  // and biases, norms of 1 (what HF's initializer gives; activations stay finite at any depth).
  // fp8: the layers' matrices (qkv, o, gate_up, down) as E4M3 codes with an f32 scale per output
  // channel (LlamaLayerWeights::*_scale): an FP8 checkpoint's as stored, a float checkpoint's
  // quantized at load by the CPU twin's rule (cpu::quantize_rows_fp8); random: codes of N(0, 1)
  // values with scales that make them N(0, 0.02).
  CudaWeights(const ModelConfig& config, const WeightStore* store, uint64_t seed, bool fp8 = false);

  bool fp8() const { return fp8_; }

  size_t bytes() const { return arena_.bytes(); }
  // What one decode step must read of the weights: every layer, the final norm and the LM head
  // (the embedding table only for its few rows, counted as none).
  size_t step_read_bytes() const { return step_read_bytes_; }

 private:
  cudabk::DeviceMemory arena_;  // one allocation for all of it
  size_t step_read_bytes_ = 0;
  bool fp8_ = false;
};

// Fills `count` bf16 values at dst (device memory) with N(0, 0.02) noise, at copy speed (the same
// pool-of-chunks scheme as random weights). Benchmarks use it for KV caches they do not prefill.
void fill_random_bf16(void* dst, size_t count, uint64_t seed);
// The same for `count` E4M3 codes of N(0, 1) values (an FP8 KV cache; its scales are the caller's).
void fill_random_fp8(void* dst, size_t count, uint64_t seed);

}  // namespace stem
