// The CUDA backend's step buffers: the activations for a step of `tokens` rows, the logits of
// `rows` rows, and the step's metadata (models/cuda/step.h) on the device and in pinned host
// memory. They only grow, and every step reuses them: a step allocates nothing. Host code (g++).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/model_config.h"
#include "models/cuda/memory.h"
#include "models/cuda/step.h"
#include "models/llama.h"

namespace stem {

struct CudaWorkspace {
  int64_t tokens = 0, rows = 0, meta_ints = 0;
  // FP8 weights (set before the first grow): the FP8 GEMMs' activations, quantized per token,
  // in fp8_codes (E4M3 [tokens, the widest K of the four GEMMs]) and fp8_scales (f32 [tokens]).
  bool fp8 = false;
  cudabk::DeviceMemory residual, x, qkv, attn, proj, gate_up, gathered, logits, meta, fp8_codes, fp8_scales;
  cudabk::PinnedMemory meta_host;
  // FP8 KV cache: the bf16 staging pages prefill and Stem read ("FP8 at rest, bf16 in flight"),
  // K and V [stage_pages, page_size, Hkv, D], one layer's at a time (every layer reuses them).
  int64_t stage_pages = 0;
  cudabk::DeviceMemory stage_k, stage_v;

  // Grows the buffers a step of this shape needs (waiting for `stream` first, whose work may still
  // read them). Returns whether any buffer moved: captured graphs hold the old addresses then.
  // Growth is rare: the first step larger than any before.
  bool grow(const ModelConfig& config, int64_t tokens, int64_t rows, int64_t meta_ints, cudaStream_t stream);
  // Grows the staging to `pages` pages (waiting for the stream first); zeroed, so that a page the
  // kernels read but no step staged (an unstaged sequence's table entries) holds finite values.
  void grow_stage(const ModelConfig& config, int64_t pages, int32_t page_size, cudaStream_t stream);
  size_t bytes() const;
  // The views llama_forward takes for a step of layout `l`, whose metadata is in `meta` already.
  LlamaStep step(const ModelConfig& config, const StepLayout& l) const;
  // The step's logits, f32 [rows, vocab].
  TensorView logit_rows(int64_t rows, int64_t vocab) const { return TensorView(logits.get(), DType::F32, {rows, vocab}); }
  // The widest K of the model's FP8 GEMMs (hidden, q_dim, intermediate): fp8_codes' row size.
  static int64_t fp8_width(const ModelConfig& config);
};

}  // namespace stem
