// The paged-attention router: decode rows to the decode kernel, prefill chunks to the block-sparse
// prefill kernel with dense causal lists.
#include "kernels/cuda/attention.cuh"

#include <algorithm>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_prefill.cuh"

namespace stem::cuda {

void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                     float scale, int64_t sliding_window, cudaStream_t stream) {
  const attn::AttentionShape s = attn::check_attention("paged_attention", out, q, k_cache, v_cache, page_table,
                                                       kv_lens, query_start, scale, sliding_window);
  if (s.tokens == 0 || s.seqs == 0) return;
  const int64_t max_rows = decode_max_rows(s.q_heads, s.kv_heads);
  // A lone sequence with more rows than the decode kernel takes has no decode rows.
  if (!(s.seqs == 1 && s.tokens > max_rows))
    paged_decode(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream);
  paged_prefill(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream);
}

void paged_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                   int64_t sliding_window, cudaStream_t stream) {
  const attn::AttentionShape s = attn::check_attention("paged_prefill", out, q, k_cache, v_cache, page_table, kv_lens,
                                                       query_start, scale, sliding_window);
  if (s.tokens == 0 || s.seqs == 0) return;
  const int64_t max_rows = decode_max_rows(s.q_heads, s.kv_heads);
  if (s.tokens <= max_rows) return;  // no sequence can have more rows than the step

  // Query blocks of prefill sequences: a sequence of n > max_rows rows spans at most n/128 + 2
  // blocks, and at most T/(max_rows+1) sequences are that long.
  const int64_t long_seqs = std::min(s.seqs, s.tokens / (max_rows + 1));
  const int64_t capacity = s.tokens / kAttentionBlock + 2 * long_seqs;
  int32_t* plan = nullptr;
  // [count, work counter, pad, pad, qblocks...]
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&plan), (2 * capacity + 4) * sizeof(int32_t), stream));
  try {
    detail::dense_prefill_on_device(out, q, k_cache, v_cache, page_table, kv_lens, query_start, plan + 4, plan,
                                    capacity, max_rows, scale, sliding_window, stream);
  } catch (...) {
    cudaFreeAsync(plan, stream);
    throw;
  }
  CUDA_CHECK(cudaFreeAsync(plan, stream));
}

}  // namespace stem::cuda
