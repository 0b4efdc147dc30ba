// Paged decode attention (flash-decoding): a few query rows per sequence against its whole cached
// context, bf16 in, fp32 math. Host declarations only, so plain C++ can include it.
//
// One CTA reads one KV head's slice of the context once for all the query heads of its group (and
// all of the sequence's rows: up to 16 query vectors, rows × Hq/Hkv, share each K/V tile). Long
// contexts are split over several CTAs that each keep a partial softmax state (output, log-sum-exp),
// merged by a second small kernel.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/view.h"

namespace stem::cuda {

// The most query rows a sequence may own for the decode kernel: max(1, 16 / (Hq/Hkv)).
int64_t decode_max_rows(int64_t q_heads, int64_t kv_heads);

// Arguments as kernels/cpu/attention.h's paged_attention (q, out, caches bf16; see
// attention_prefill.cuh for the layout rules), on the device. Computes the rows of every sequence
// that owns between 1 and decode_max_rows() rows this step (row r at position kv_len − n + r, causal
// among them, with the optional sliding window); rows of sequences with more rows are left untouched
// (the router hands those to the prefill kernel). Long contexts split into chunks sized from the
// page table's width, so pass a page-table view no wider than the step needs. Allocates its split
// workspace stream-ordered (cudaMallocAsync), which graph capture allows.
void paged_decode(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                  int64_t sliding_window, cudaStream_t stream);

}  // namespace stem::cuda
