// Batched paged attention on the GPU with the CPU twin's signature (kernels/cpu/attention.h), bf16
// activations and cache, plus the stream. Host declarations only, so plain C++ can include it.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/view.h"

namespace stem::cuda {

// out, q: bf16 [T,Hq,D] (D = 64 or 128; row-strided allowed, a multiple of 8 elements; out may
//   alias q). k_cache, v_cache: bf16 [P,page_size,Hkv,D], page_size a power of two dividing 128.
// page_table i32 [S,max_pages], kv_lens i32 [S], query_start i32 [S+1]: as in the CPU version,
//   all on the device (they are not read on the host, so they are not checked here either).
// Routes by rows per sequence, decided on the device so that nothing waits for the GPU: sequences
// with at most decode_max_rows(Hq, Hkv) rows go to the paged decode kernel, longer ones to the
// block-sparse prefill kernel with dense causal lists. Sliding windows are masks in both.
// Workspace is allocated stream-ordered (cudaMallocAsync).
void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                     float scale, int64_t sliding_window, cudaStream_t stream);

// The router's prefill half alone: the rows of the sequences with more than decode_max_rows(Hq, Hkv)
// rows (the others are left untouched, and their page-table entries are not read). The FP8 cache's
// prefill rows go here over the staged bf16 pages, its decode rows to paged_decode_fp8.
void paged_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   float scale, int64_t sliding_window, cudaStream_t stream);

}  // namespace stem::cuda
