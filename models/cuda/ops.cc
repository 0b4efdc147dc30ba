#include "models/cuda/ops.h"

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"

namespace stem {

void CudaOps::embedding(const TensorView& out, const TensorView& ids, const TensorView& table) {
  cuda::embedding(out, ids, table, stream_);
}

void CudaOps::rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) {
  cuda::rmsnorm(out, x, weight, eps, stream_);
}

void CudaOps::add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x,
                          const TensorView& weight, float eps) {
  cuda::add_rmsnorm(out, residual, x, weight, eps, stream_);
}

void CudaOps::set_fp8_weights(const LlamaWeights& w) {
  fp8_weight_scales_.clear();
  for (const LlamaLayerWeights& l : w.layers)
    for (auto [m, s] : {std::pair{&l.qkv, &l.qkv_scale}, {&l.o, &l.o_scale}, {&l.gate_up, &l.gate_up_scale},
                        {&l.down, &l.down_scale}})
      if (!s->empty()) fp8_weight_scales_[m->data] = *s;
}

void CudaOps::matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) {
  const auto it = fp8_weight_scales_.find(w.data);
  if (it == fp8_weight_scales_.end()) return cuda::matmul(gemm_, out, a, w, bias, stream_);
  const int64_t M = a.shape[0], K = a.shape[1];
  STEM_CHECK(a.ndim == 2 && fp8_codes_ && M <= fp8_rows_ && K <= fp8_width_, "CUDA backend: FP8 activations ",
             a.str(), " do not fit the step's FP8 buffers (", fp8_rows_, " rows of ", fp8_width_, ")");
  const TensorView codes(fp8_codes_, DType::F8E4M3, {M, K}), scales(fp8_scales_, DType::F32, {M});
  cuda::quantize_rows_fp8(codes, scales, a, stream_);
  cuda::fp8_matmul(gemm_, out, codes, scales, w, it->second, bias, stream_);
}

void CudaOps::rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                            const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                            const TensorView& slots) {
  cuda::rope_kv_write(q, k, v, positions, inv_freq, k_cache, v_cache, slots, stream_);
}

void CudaOps::attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                        const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                        const TensorView& query_start, float scale, int64_t sliding_window) {
  if (decode_only_)
    cuda::paged_decode(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream_);
  else
    cuda::paged_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream_);
}

void CudaOps::stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                             const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                             const TensorView& query_start, float scale, int64_t sliding_window) {
  STEM_CHECK(stem_ && settings_, "CUDA backend: a Stem layer in a step without Stem metadata");
  cuda::stem_prefill(out, q, k_cache, v_cache, page_table, kv_lens, query_start, *stem_, scale, sliding_window,
                     *settings_, stream_, skipped_);
}

void CudaOps::swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) {
  cuda::swiglu(out, gate, up, stream_);
}

}  // namespace stem
