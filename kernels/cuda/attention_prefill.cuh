// Block-sparse flash-attention prefill over the paged bf16 KV cache: the one kernel behind dense
// causal prefill and Stem's sparse prefill (DESIGN.md §3, §4). Host declarations only, so plain C++
// (the tests, the engine) can include it.
//
// Work is cut into query blocks of 128 absolute positions: query block i of sequence s holds the
// rows of s whose positions lie in [128·i, 128·i + 128). With chunked prefill a chunk's first
// block may be partial (its rows start at kv_len − n, not at a multiple of 128); blocks stay
// aligned to absolute positions so that key block j means the same 128 cache positions to every
// chunk, and a plan built for the whole prompt serves each chunk.
//
// Block lists (CSR):
//   qblocks        i32 [n_qblocks, 2]: (sequence s, query block i) of each query block this step
//                  computes. The kernel runs them in this order, heads fastest, so put the longest
//                  lists first (the helpers below do).
//   block_offsets  i32 [n_qblocks·Hq + 1]: the key blocks of query block b, query head h, are
//                  block_indices[block_offsets[b·Hq + h] .. block_offsets[b·Hq + h + 1]).
//   block_indices  i32 [block_offsets[n_qblocks·Hq]]: key block numbers j of sequence s (cache
//                  positions [128·j, 128·j + 128)), each j ≤ i, no repeats, any order.
// Block j < i is attended in full; the diagonal block j == i is causal inside (key ≤ query
// position); positions at or past kv_len never count. A list may be empty (its rows come out 0).
// Passing an empty block_offsets view selects dense causal lists, computed in the kernel: every j
// from the first block the sliding window reaches up to i, the lists dense_causal_plan() builds.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/view.h"

namespace stem::cuda {

// Query and key block size of the lists (Stem's B).
constexpr int64_t kAttentionBlock = 128;

// A step's block lists in host memory, laid out as above (copy each vector to the device as is).
struct BlockSparsePlan {
  std::vector<int32_t> qblocks;        // [n_qblocks·2]
  std::vector<int32_t> block_offsets;  // [n_qblocks·q_heads + 1]
  std::vector<int32_t> block_indices;
  int64_t n_qblocks() const { return static_cast<int64_t>(qblocks.size() / 2); }
};

// The query blocks of a step, as (sequence, block) pairs, latest blocks (the longest causal lists)
// first. kv_lens and query_start are host copies of the launcher's arguments.
std::vector<int32_t> prefill_query_blocks(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start);

// The first key block a query block reaches: 0, or with a sliding window, the block holding
// position first_query − window + 1.
int64_t first_key_block(int64_t first_query_pos, int64_t sliding_window);

// Dense causal lists for every query block of the step (the lists the kernel computes itself when
// block_offsets is empty): query block i of a sequence attends to key blocks first..i.
BlockSparsePlan dense_causal_plan(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start,
                                  int64_t q_heads, int64_t sliding_window = 0);

// out, q: bf16 [T,Hq,D] on the device, D = 64 or 128, rows may be strided (a multiple of 8
//   elements) and out may alias q. Rows of sequences no query block covers are left untouched.
// k_cache, v_cache: bf16 [P,page_size,Hkv,D], contiguous; page_size a power of two dividing 128.
// page_table i32 [S,max_pages], kv_lens i32 [S], query_start i32 [S+1]: as in
//   kernels/cpu/attention.h (the launcher cannot read them; the engine checks them before).
// qblocks, block_offsets, block_indices: the lists above, on the device; block_offsets and
//   block_indices may be empty views (dense causal); lists longer than the page table's blocks
//   (ceil(max_pages·page_size / 128)) are cut there.
// scale multiplies q·k (> 0); sliding_window > 0 also hides keys with query − key ≥ window.
// The kernel runs on a persistent grid whose CTAs take (query block, head) items from a counter
// the launcher allocates stream-ordered (cudaMallocAsync, 4 bytes), which graph capture allows.
// On a compute capability 9.0 device with D = 128 and pages of at least 8 tokens it is the
// wgmma/TMA kernel (kernels/cuda/attention_prefill_sm90.cuh), elsewhere the mma.sync one; the
// environment variable STEM_PREFILL_SM90=0 forces the mma.sync kernel.
void block_sparse_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                          const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                          const TensorView& query_start, const TensorView& qblocks, const TensorView& block_offsets,
                          const TensorView& block_indices, float scale, int64_t sliding_window, cudaStream_t stream);

namespace detail {
// The router's prefill path (kernels/cuda/attention.cu): query blocks of the sequences with more
// than min_rows rows, listed on the device into qblocks (capacity entries) with their count in
// count[0] (count[1] is the kernel's work counter), then the kernel over a persistent grid with
// dense causal lists.
void dense_prefill_on_device(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                             const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                             const TensorView& query_start, int32_t* qblocks, int32_t* count, int64_t capacity,
                             int64_t min_rows, float scale, int64_t sliding_window, cudaStream_t stream);
}  // namespace detail

}  // namespace stem::cuda
