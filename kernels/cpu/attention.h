// Batched paged attention: prefill chunks and decode rows of many sequences in one call, with
// grouped-query heads, causal masking and an optional sliding window.
#pragma once
#include <cstdint>

#include "kernels/view.h"

namespace stem::cpu {

// out, q: f32 [T,Hq,D] (row-strided allowed; out may alias q).
// k_cache, v_cache: f32 [P,page_size,Hkv,D], contiguous; Hq must be a multiple of Hkv, and query
//   head h reads KV head h / (Hq/Hkv).
// page_table: i32 [S,max_pages]: cache position p of sequence s lives in page
//   page_table[s][p / page_size] at offset p % page_size. Entries past the pages a sequence
//   uses are not read (padding such as -1 is fine); those it uses are checked against [0,P).
// kv_lens: i32 [S]: tokens in the cache for sequence s, this step's new ones included.
// query_start: i32 [S+1]: sequence s owns query rows [query_start[s], query_start[s+1]), and
//   they are its newest tokens: with n_s rows, row r sits at position
//   kv_lens[s] - n_s + (r - query_start[s]). A sequence may own no rows this step.
// Row r at position pos attends to cache positions p <= pos and, when sliding_window > 0, only
// to those with pos - p < sliding_window (HF Mistral). scale multiplies q·k (usually 1/sqrt(D)).
// The softmax is fp32 with max subtraction.
void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                     float scale, int64_t sliding_window);

}  // namespace stem::cpu
