// Stem sparse prefill on the GPU (DESIGN.md §3, docs/stem.md): plan the step's block lists on the
// device (pooled estimate, value bonus, position-decay top-k, sinks and window), then run the
// block-sparse flash-attention prefill (attention_prefill.cuh) over them. The CPU reference is
// kernels/cpu/stem_plan.h; both classify query blocks with stem_query_blocks (kernels/cpu/stem.h).
// Host declarations only, so plain C++ (the engine, the tests) can include it.
//
// The plan is a host part and a device part, FlashInfer's plan/run split. The host part is pure
// bookkeeping on host copies of the step's metadata, which the engine has before it uploads them
// (which query blocks are sparse, their budgets, list capacities, the GEMM's tiles): no device
// value is read, so nothing waits for the GPU. The device part is eight small launches on the
// stream, then the attention:
//   1. pool queries   Qp_t[i] = Σ_r q[iB + rS + S−1−t], summed in f32, stored as bf16 hi + lo
//                     ([sparse rows, Hq, S·D] each)
//   2. pool keys      Kp_t[j] = Σ_r k[jB + rS + t] likewise ([key blocks, Hkv, S·D]), and per
//                     group n of S keys the value-norm log u[n] = log(max ‖v‖₂ + 1e-6)
//   3. value stats    prefix sums of u and u² per sequence and KV head (f64), so any query block's
//                     mean and std over the groups it sees are two lookups (two launches: each
//                     chunk of 256 groups scanned, then the chunks before it added on)
//   4. estimate GEMM  M[i,j] = scale/(S·R²)·Σ_t Qp_t[i]·Kp_t[j], causal 128×128 tiles only, on the
//                     tensor cores (hi·hi + hi·lo + lo·hi: within ~1e-5 of an f32 GEMM)
//   5. select         per (query block, KV head): vb[j] from the block's statistics, then per
//                     query head the top-k(i) of M + vb (radix select of the k-th largest
//                     score, ties to the lower j), ∪ sinks ∪ window, compacted in ascending j
//   6. offsets        a scan over the list sizes (dense lists' sizes are known)
//   7. lists          the CSR block_indices, sparse lists copied, dense ones written
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/stem.h"
#include "kernels/view.h"

namespace stem::cuda {

// Host copies of a step's metadata: kv_lens [S], query_start [S+1] (the values of the device views
// passed beside them) and each sequence's whole prompt length [S], which fixes nb however the
// prompt is chunked.
struct StemBatch {
  std::span<const int32_t> kv_lens, query_start, prompt_lens;
};

// One step's plan on the device, in the layout block_sparse_prefill takes. Its memory (one
// stream-ordered allocation) is freed stream-ordered when the plan is destroyed, so the plan may
// go out of scope as soon as the attention that reads it has been launched on the same stream.
class StemPlan {
 public:
  StemPlan() = default;
  ~StemPlan();
  StemPlan(StemPlan&& other) noexcept;
  StemPlan& operator=(StemPlan&& other) noexcept;
  StemPlan(const StemPlan&) = delete;
  StemPlan& operator=(const StemPlan&) = delete;

  int64_t n_qblocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t q_heads() const { return q_heads_; }
  TensorView qblocks() const;        // i32 [n_qblocks, 2]: (sequence, query block), longest lists first
  TensorView block_offsets() const;  // i32 [n_qblocks·Hq + 1]
  TensorView block_indices() const;  // i32 [capacity]: the first block_offsets[n_qblocks·Hq] are used
  // The query blocks in qblocks' order, as stem_query_blocks classified them.
  const std::vector<StemQueryBlock>& blocks() const { return blocks_; }
  // For tests: the sparse query blocks (each sequence's, ascending i) and their pooled estimate M
  // without the value bonus, f32 [sparse blocks, Hq, estimate_cols()] (entries j ≤ i are M[i,j]).
  const std::vector<StemQueryBlock>& sparse_blocks() const { return sparse_; }
  TensorView estimate() const;
  int64_t estimate_cols() const { return cols_; }
  // The most block_indices entries the lists can take (the host bound).
  int64_t capacity() const { return capacity_; }

 private:
  friend struct StemPlanner;
  void* memory_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::vector<StemQueryBlock> blocks_, sparse_;
  int64_t q_heads_ = 0, cols_ = 0, capacity_ = 0;
  size_t qblocks_at_ = 0, offsets_at_ = 0, indices_at_ = 0, estimate_at_ = 0;  // byte offsets into memory_
};

// q: bf16 [T,Hq,D] (D = 64 or 128); k_cache, v_cache: bf16 [P,page_size,Hkv,D]; page_table,
// kv_lens, query_start: i32 on the device, as paged_attention takes them (kernels/cuda/attention.cuh).
// host: their host copies and the prompt lengths. scale: the attention's (1/√D). settings:
// block_size must be 128 (the attention kernel's block) and S·D/8 ≥ 32. Plans every query block of
// every sequence with rows this step. When `estimated` is given it is recorded on the stream after
// the estimate (launches 1–4), for timing. Errors (shapes, settings) are stem::Error, before any launch.
StemPlan stem_plan(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   const StemBatch& host, float scale, int64_t sliding_window, const StemSettings& settings,
                   cudaStream_t stream, cudaEvent_t estimated = nullptr);

// One layer's prefill attention with Stem: arguments as paged_attention plus the host copies, the
// settings and the stream. Steps with no sparse query block (short prompts, decode rows, sliding
// windows) go to paged_attention unchanged; otherwise sequences with few rows and no sparse block
// go to the decode kernel and the rest through stem_plan + block_sparse_prefill. The caller keeps
// layers below settings.dense_layers on paged_attention (stem_layer_sparse).
// skipped (optional, device memory): the causal (query block, head, key block) triples the lists
// leave out are added to *skipped, stream-ordered, so that a caller can count the step's block
// density without reading the lists back (the CPU backend's StemStepStats::skipped_key_blocks).
void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  const StemBatch& host, float scale, int64_t sliding_window, const StemSettings& settings,
                  cudaStream_t stream, long long* skipped = nullptr);

}  // namespace stem::cuda
