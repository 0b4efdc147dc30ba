// The op interface (models/ops.h) on the CUDA kernels (kernels/cuda): every op is launched on the
// backend's stream, GEMMs through its cuBLASLt context; the profile marks go to its StepProfile.
// Host code (g++).
#pragma once
#include <cuda_runtime_api.h>

#include <unordered_map>

#include "models/stem_policy.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/stem.cuh"
#include "models/cuda/profile.h"
#include "models/llama.h"
#include "models/llama_weights.h"
#include "models/ops.h"

namespace stem {

class CudaOps final : public ModelOps {
 public:
  CudaOps(cuda::GemmContext& gemm, cudaStream_t stream, StepProfile& profile);

  // The next step's routing. decode_only: every sequence has one row (a graph step), so attention
  // goes straight to the decode kernel (the router would also launch its prefill path, which finds
  // no work but costs two launches per layer once the batch has more rows than decode_max_rows).
  // stem: the step's Stem plan when it has sparse blocks (eager steps only: the planner's host part
  // depends on the values), with the settings and the device counter of skipped blocks.
  void begin_step(bool decode_only, const cuda::StemStep* stem, const StemSettings* settings, long long* skipped) {
    decode_only_ = decode_only;
    stem_ = stem;
    settings_ = settings;
    skipped_ = skipped;
  }

  // FP8 weights: the layers' matrices (E4M3 codes) with their per-channel scales, found by the
  // address of their codes as the CPU backend finds them; their matmuls run cuda::fp8_matmul on
  // the activations quantized per token into `codes` (room for rows × width E4M3 values) and
  // `scales` (rows f32). Every other matmul (the LM head) stays bf16. The RMSNorms and the SwiGLU
  // quantize their output in the same kernel (rmsnorm_fp8, add_rmsnorm_fp8, swiglu_fp8) and note
  // which view the buffers hold; a matmul reading that very view skips cuda::quantize_rows_fp8,
  // any other runs it (STEM_FP8_FUSE=0: always, for A/B timing).
  void set_fp8_weights(const LlamaWeights& w);
  void set_fp8_buffers(void* codes, float* scales, int64_t rows, int64_t width) {
    fp8_codes_ = codes;
    fp8_scales_ = scales;
    fp8_rows_ = rows;
    fp8_width_ = width;
    fp8_holds_ = TensorView();
  }

  // FP8 KV cache (kernels/cuda/kv_fp8.cuh): each layer's scales, found by the address of its codes.
  void set_kv_scales(const KvLayers& kv);
  // The step's staging of an FP8 cache (eager steps with prefill rows; null otherwise): the bf16
  // staging pages, and on the device the plan's page list, staged page table and unstaged flags.
  struct KvStage {
    TensorView k, v;         // bf16 [capacity, page_size, Hkv, D]
    TensorView pages;        // i32 [N]
    TensorView page_table;   // i32 [S, max_pages], staging page numbers
    TensorView unstaged;     // i32 [S]
    bool any_unstaged = false;
  };
  void set_kv_stage(const KvStage* stage) { kv_stage_ = stage; }

  void embedding(const TensorView& out, const TensorView& ids, const TensorView& table) override;
  void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) override;
  void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                   float eps) override;
  void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) override;
  void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                     const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& slots) override;
  void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                 const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                 int64_t sliding_window) override;
  void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                      float scale, int64_t sliding_window) override;
  void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) override;
  void mark(const char* op) override { profile_.mark(op, stream_); }

 private:
  cuda::GemmContext& gemm_;
  cudaStream_t stream_;
  StepProfile& profile_;
  bool decode_only_ = false;
  const cuda::StemStep* stem_ = nullptr;
  const StemSettings* settings_ = nullptr;
  long long* skipped_ = nullptr;
  // Whether the FP8 buffers can take `out`'s rows in place of a separate quantization.
  bool fuse_fp8(const TensorView& out) const;
  // The FP8 buffers as codes [rows, cols] and scales [rows].
  TensorView fp8_codes(int64_t rows, int64_t cols) const;
  TensorView fp8_scales(int64_t rows) const;

  std::unordered_map<const void*, TensorView> fp8_weight_scales_;
  std::unordered_map<const void*, TensorView> kv_scales_;
  const KvStage* kv_stage_ = nullptr;
  TensorView kv_scales_of(const TensorView& cache) const;
  // The layer's staged pages as bf16 caches of the staging's page numbers.
  void stage(const TensorView& k_cache, const TensorView& v_cache, TensorView& k, TensorView& v);
  void* fp8_codes_ = nullptr;
  float* fp8_scales_ = nullptr;
  int64_t fp8_rows_ = 0, fp8_width_ = 0;
  bool fp8_fuse_ = true;
  // What the FP8 buffers hold: the codes of this view's rows (data null: nothing usable).
  TensorView fp8_holds_;
};

}  // namespace stem
