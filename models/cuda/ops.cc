#include "models/cuda/ops.h"

#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/kv_fp8.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"

namespace stem {

namespace {

bool same_view(const TensorView& a, const TensorView& b) {
  if (a.data != b.data || a.dtype != b.dtype || a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d] || (a.shape[d] > 1 && a.stride[d] != b.stride[d])) return false;
  return true;
}

}  // namespace

CudaOps::CudaOps(cuda::GemmContext& gemm, cudaStream_t stream, StepProfile& profile)
    : gemm_(gemm), stream_(stream), profile_(profile) {
  const char* fuse = std::getenv("STEM_FP8_FUSE");
  fp8_fuse_ = !(fuse && std::strcmp(fuse, "0") == 0);
}

bool CudaOps::fuse_fp8(const TensorView& out) const {
  return fp8_fuse_ && !fp8_weight_scales_.empty() && fp8_codes_ && out.ndim == 2 && out.shape[0] <= fp8_rows_ &&
         out.shape[1] <= fp8_width_ && out.shape[1] % 16 == 0;
}

TensorView CudaOps::fp8_codes(int64_t rows, int64_t cols) const {
  return TensorView(fp8_codes_, DType::F8E4M3, {rows, cols});
}

TensorView CudaOps::fp8_scales(int64_t rows) const { return TensorView(fp8_scales_, DType::F32, {rows}); }

void CudaOps::embedding(const TensorView& out, const TensorView& ids, const TensorView& table) {
  fp8_holds_ = TensorView();
  cuda::embedding(out, ids, table, stream_);
}

void CudaOps::rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) {
  fp8_holds_ = TensorView();
  if (!fuse_fp8(out)) return cuda::rmsnorm(out, x, weight, eps, stream_);
  const int64_t T = out.shape[0], H = out.shape[1];
  cuda::rmsnorm_fp8(out, fp8_codes(T, H), fp8_scales(T), x, weight, eps, stream_);
  fp8_holds_ = out;
}

void CudaOps::add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x,
                          const TensorView& weight, float eps) {
  fp8_holds_ = TensorView();
  if (!fuse_fp8(out)) return cuda::add_rmsnorm(out, residual, x, weight, eps, stream_);
  const int64_t T = out.shape[0], H = out.shape[1];
  cuda::add_rmsnorm_fp8(out, fp8_codes(T, H), fp8_scales(T), residual, x, weight, eps, stream_);
  fp8_holds_ = out;
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
  const TensorView codes = fp8_codes(M, K), scales = fp8_scales(M);
  // The norm or SwiGLU that wrote `a` quantized it already (fuse_fp8), unless something came between.
  if (!same_view(a, fp8_holds_)) cuda::quantize_rows_fp8(codes, scales, a, stream_);
  fp8_holds_ = TensorView();
  cuda::fp8_matmul(gemm_, out, codes, scales, w, it->second, bias, stream_);
}

void CudaOps::set_kv_scales(const KvLayers& kv) {
  kv_scales_.clear();
  for (size_t l = 0; l < kv.k_scale.size(); ++l) {
    if (kv.k_scale[l].empty()) continue;  // an unquantized layer of an FP8 cache
    kv_scales_[kv.k[l].data] = kv.k_scale[l];
    kv_scales_[kv.v[l].data] = kv.v_scale[l];
  }
}

TensorView CudaOps::kv_scales_of(const TensorView& cache) const {
  const auto it = kv_scales_.find(cache.data);
  STEM_CHECK(it != kv_scales_.end(), "CUDA backend: an FP8 KV cache without its scales");
  return it->second;
}

void CudaOps::stage(const TensorView& k_cache, const TensorView& v_cache, TensorView& k, TensorView& v) {
  STEM_CHECK(kv_stage_, "CUDA backend: an FP8 KV cache's prefill in a step without staging");
  const KvStage& st = *kv_stage_;
  cuda::dequantize_kv_pages(st.k, st.v, k_cache, v_cache, kv_scales_of(k_cache), kv_scales_of(v_cache), st.pages,
                            stream_);
  k = st.k;
  v = st.v;
}

void CudaOps::rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                            const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                            const TensorView& slots) {
  fp8_holds_ = TensorView();
  if (k_cache.dtype == DType::F8E4M3)
    return cuda::rope_kv_write_fp8(q, k, v, positions, inv_freq, k_cache, v_cache, kv_scales_of(k_cache),
                                   kv_scales_of(v_cache), slots, stream_);
  cuda::rope_kv_write(q, k, v, positions, inv_freq, k_cache, v_cache, slots, stream_);
}

void CudaOps::attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                        const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                        const TensorView& query_start, float scale, int64_t sliding_window) {
  fp8_holds_ = TensorView();
  if (k_cache.dtype == DType::F8E4M3) {
    // Decode rows read the codes directly; prefill rows (sequences with more than decode_max_rows
    // rows, all staged) read the bf16 staging through the router's prefill half.
    if (!decode_only_) {
      TensorView k, v;
      stage(k_cache, v_cache, k, v);
      cuda::paged_prefill(out, q, k, v, kv_stage_->page_table, kv_lens, query_start, scale, sliding_window, stream_);
    }
    cuda::paged_decode_fp8(out, q, k_cache, v_cache, kv_scales_of(k_cache), kv_scales_of(v_cache), page_table,
                           kv_lens, query_start, scale, sliding_window, stream_);
    return;
  }
  if (decode_only_)
    cuda::paged_decode(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream_);
  else
    cuda::paged_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream_);
}

void CudaOps::stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                             const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                             const TensorView& query_start, float scale, int64_t sliding_window) {
  fp8_holds_ = TensorView();
  STEM_CHECK(stem_ && settings_, "CUDA backend: a Stem layer in a step without Stem metadata");
  if (k_cache.dtype == DType::F8E4M3) {
    // The staging holds every sequence Stem plans or routes (its prefill rows and its Stem
    // sequences' few rows); the decode rows of the others, which Stem's router computes over
    // staging pages that are not theirs, are computed again from the codes over those rows.
    TensorView k, v;
    stage(k_cache, v_cache, k, v);
    cuda::stem_prefill(out, q, k, v, kv_stage_->page_table, kv_lens, query_start, *stem_, scale, sliding_window,
                       *settings_, stream_, skipped_);
    if (kv_stage_->any_unstaged)
      cuda::paged_decode_fp8(out, q, k_cache, v_cache, kv_scales_of(k_cache), kv_scales_of(v_cache), page_table,
                             kv_lens, query_start, scale, sliding_window, stream_, kv_stage_->unstaged);
    return;
  }
  cuda::stem_prefill(out, q, k_cache, v_cache, page_table, kv_lens, query_start, *stem_, scale, sliding_window,
                     *settings_, stream_, skipped_);
}

void CudaOps::swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) {
  fp8_holds_ = TensorView();
  if (!fuse_fp8(out)) return cuda::swiglu(out, gate, up, stream_);
  const int64_t T = out.shape[0], I = out.shape[1];
  cuda::swiglu_fp8(out, fp8_codes(T, I), fp8_scales(T), gate, up, stream_);
  fp8_holds_ = out;
}

}  // namespace stem
