// Stem sparse prefill on the GPU (DESIGN.md §3, docs/stem.md): plan the step's block lists on the
// device (pooled estimate, value bonus, position-decay top-k, sinks and window), then run the
// block-sparse flash-attention prefill (attention_prefill.cuh) over them. The CPU reference is
// kernels/cpu/stem_plan.h; both take the step's query blocks as the policy classified them
// (models/stem_policy.h) and the kernels' parameters (kernels/cpu/stem.h).
// Host declarations only, so plain C++ (the model runner, the tests) can include it.
//
// The plan is a host part and a device part, FlashInfer's plan/run split. The host part is pure
// bookkeeping on host copies of the step's metadata, which the engine has before it uploads them
// (which query blocks are sparse, their budgets, list capacities, the GEMM's tiles): no device
// value is read, so nothing waits for the GPU; it is the same for every layer of a step, so it is
// made once per step (stem_step) and uploaded once. The device part is each layer's: eight small
// launches on the stream, then the attention:
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
// passed beside them), and the step's query blocks as the policy classified them (models/
// stem_policy.h; checked by check_stem_query_blocks): which are sparse, their
// budgets and list bounds.
struct StemBatch {
  std::span<const int32_t> kv_lens, query_start;
  std::span<const StemQueryBlock> blocks;
};

// One step's plan on the device, in the layout block_sparse_prefill takes: the step's host part
// (which query blocks are sparse, their budgets, the records the kernels read, uploaded once) and
// its device memory (those records, the estimate's scratch and the lists). Made once per step
// (stem_step or stem_plan) and filled by each layer's launches in turn: every layer of a step has
// the same query blocks, so only the lists differ, and they are rewritten stream-ordered. Its
// memory (one stream-ordered allocation) is freed stream-ordered when the plan is destroyed, so
// the plan may go out of scope as soon as the last attention that reads it has been launched.
class StemPlan {
 public:
  StemPlan() = default;
  ~StemPlan();
  StemPlan(StemPlan&& other) noexcept;
  StemPlan& operator=(StemPlan&& other) noexcept;
  StemPlan(const StemPlan&) = delete;
  StemPlan& operator=(const StemPlan&) = delete;

  int64_t n_qblocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t q_heads() const { return at_.q_heads; }
  TensorView qblocks() const;        // i32 [n_qblocks, 2]: (sequence, query block), longest lists first
  TensorView block_offsets() const;  // i32 [n_qblocks·Hq + 1]
  TensorView block_indices() const;  // i32 [capacity]: the first block_offsets[n_qblocks·Hq] are used
  // The query blocks in qblocks' order, as the policy classified them.
  const std::vector<StemQueryBlock>& blocks() const { return blocks_; }
  // For tests: the sparse query blocks (each sequence's, ascending i) and their pooled estimate M
  // without the value bonus, f32 [sparse blocks, Hq, estimate_cols()] (entries j ≤ i are M[i,j]).
  const std::vector<StemQueryBlock>& sparse_blocks() const { return sparse_; }
  TensorView estimate() const;
  int64_t estimate_cols() const { return at_.cols; }
  // The most block_indices entries the lists can take (the host bound).
  int64_t capacity() const { return at_.capacity; }

 private:
  friend struct StemPlanner;
  // The shapes, the launches' sizes and where each buffer sits in memory_ (bytes): the step's host
  // records (uploaded once), then the scratch and lists that each layer's launches write.
  struct Sections {
    int64_t q_heads = 0, kv_heads = 0, head_dim = 0, cols = 0, capacity = 0, u_stride = 0, p_stride = 0;
    int32_t n_rows = 0, n_key_jobs = 0, n_stats = 0, stat_chunks = 0, max_stat_chunks = 0, n_tiles = 0;
    size_t qblocks = 0, qrow = 0, qfirst = 0, rows = 0, jobs = 0, stats = 0, tiles = 0, offsets = 0, indices = 0,
           sizes = 0, slots = 0, qp = 0, qp_lo = 0, kp = 0, kp_lo = 0, u = 0, p1 = 0, p2 = 0, chunk_sums = 0,
           estimate = 0;
  };
  void* memory_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::vector<StemQueryBlock> blocks_, sparse_;
  Sections at_;
};

// What stem_prefill does with a step, decided once for all its layers: the plan of the query
// blocks that go through the lists, and where the others go.
struct StemStep {
  int64_t seqs = 0;
  bool dense = true;    // no sparse query block: every layer goes to paged_attention
  bool decode = false;  // sequences with few rows and no sparse block go to the decode kernel first
  StemPlan plan;        // the rest: through the lists
  long long causal = 0;  // the (query block, head, key block) triples the plan's lists would hold if dense
};

// q: bf16 [T,Hq,D] (D = 64 or 128); k_cache, v_cache: bf16 [P,page_size,Hkv,D]; page_table,
// kv_lens, query_start: i32 on the device, as paged_attention takes them (kernels/cuda/attention.cuh).
// host: their host copies and the step's classified query blocks. scale: the attention's (1/√D).
// params: block_size must be 128 (the attention kernel's block) and S·D/8 ≥ 32. Plans every query
// block of host.blocks. When `estimated` is given it is recorded on the stream after the estimate
// (launches 1–4), for timing. Errors (shapes, parameters, blocks) are stem::Error, before any launch.
StemPlan stem_plan(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   const StemBatch& host, float scale, int64_t sliding_window, const StemKernelParams& params,
                   cudaStream_t stream, cudaEvent_t estimated = nullptr);

// The step's part of stem_prefill, once per step: over its classified query blocks (host.blocks),
// lays out and uploads the plan's records and routes the sequences (no device value is read). host
// and the heads as stem_prefill's arguments describe them.
StemStep stem_step(const StemBatch& host, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                   const StemKernelParams& params, cudaStream_t stream);

// One layer's prefill attention with Stem: arguments as paged_attention plus the step (stem_step,
// made with the same host metadata and heads), the kernel parameters and the stream. Steps with no
// sparse query block (short prompts, decode rows, sliding windows) go to paged_attention unchanged;
// otherwise sequences with few rows and no sparse block go to the decode kernel and the rest
// through the plan's launches + block_sparse_prefill. Which layers call it is the model's policy
// (models/stem_policy.h).
// skipped (optional, device memory): the causal (query block, head, key block) triples the lists
// leave out are added to *skipped, stream-ordered, so that a caller can count the step's block
// density without reading the lists back (the CPU backend's StemStepStats::skipped_key_blocks).
void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  const StemStep& step, float scale, int64_t sliding_window, const StemKernelParams& params,
                  cudaStream_t stream, long long* skipped = nullptr);

// The same for one layer alone: stem_step, then stem_prefill over it.
void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  const StemBatch& host, float scale, int64_t sliding_window, const StemKernelParams& params,
                  cudaStream_t stream, long long* skipped = nullptr);

}  // namespace stem::cuda
