#include "models/cuda/workspace.h"

#include <algorithm>

namespace stem {

bool CudaWorkspace::grow(const ModelConfig& c, int64_t want_tokens, int64_t want_rows, int64_t want_meta,
                         cudaStream_t stream) {
  if (want_tokens <= tokens && want_rows <= rows && want_meta <= meta_ints) return false;
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t H = c.hidden_size, QKV = c.q_dim() + 2 * c.kv_dim();
  if (want_tokens > tokens) {
    want_tokens = std::max(want_tokens, tokens * 5 / 4);  // step sizes creep up: do not regrow for each
    for (cudabk::DeviceMemory* m : {&residual, &x, &qkv, &attn, &proj, &gate_up, &fp8_codes, &fp8_scales}) m->reset();
    const size_t T = static_cast<size_t>(want_tokens);
    residual = cudabk::DeviceMemory(T * H * 4, "activations (residual stream)");
    x = cudabk::DeviceMemory(T * H * 2, "activations (normed)");
    qkv = cudabk::DeviceMemory(T * QKV * 2, "activations (qkv)");
    attn = cudabk::DeviceMemory(T * c.q_dim() * 2, "activations (attention)");
    proj = cudabk::DeviceMemory(T * H * 2, "activations (projections)");
    gate_up = cudabk::DeviceMemory(T * 2 * c.intermediate_size * 2, "activations (MLP)");
    if (fp8) {
      fp8_codes = cudabk::DeviceMemory(T * static_cast<size_t>(fp8_width(c)), "activations (FP8 codes)");
      fp8_scales = cudabk::DeviceMemory(T * 4, "activations (FP8 scales)");
    }
    tokens = want_tokens;
  }
  if (want_rows > rows) {
    gathered.reset();
    logits.reset();
    gathered = cudabk::DeviceMemory(static_cast<size_t>(want_rows * H) * 2, "logit rows");
    logits = cudabk::DeviceMemory(static_cast<size_t>(want_rows * c.vocab_size) * 4, "logits");
    rows = want_rows;
  }
  if (want_meta > meta_ints) {
    want_meta = std::max(want_meta, meta_ints * 2);
    meta.reset();
    meta = cudabk::DeviceMemory(static_cast<size_t>(want_meta) * 4, "step metadata");
    meta_host = cudabk::PinnedMemory(static_cast<size_t>(want_meta) * 4);
    meta_ints = want_meta;
  }
  return true;
}

void CudaWorkspace::grow_stage(const ModelConfig& c, int64_t pages, int32_t page_size, cudaStream_t stream) {
  if (pages <= stage_pages) return;
  CUDA_CHECK(cudaStreamSynchronize(stream));
  stage_k.reset();
  stage_v.reset();
  const size_t bytes = static_cast<size_t>(pages) * page_size * c.kv_dim() * 2;
  stage_k = cudabk::DeviceMemory(bytes, "the FP8 KV cache's bf16 staging (K)");
  stage_v = cudabk::DeviceMemory(bytes, "the FP8 KV cache's bf16 staging (V)");
  CUDA_CHECK(cudaMemsetAsync(stage_k.get(), 0, bytes, stream));
  CUDA_CHECK(cudaMemsetAsync(stage_v.get(), 0, bytes, stream));
  stage_pages = pages;
}

size_t CudaWorkspace::bytes() const {
  size_t n = 0;
  n += stage_k.bytes() + stage_v.bytes();
  for (const cudabk::DeviceMemory* m :
       {&residual, &x, &qkv, &attn, &proj, &gate_up, &gathered, &logits, &meta, &fp8_codes, &fp8_scales})
    n += m->bytes();
  return n;
}

int64_t CudaWorkspace::fp8_width(const ModelConfig& c) {
  return std::max({c.hidden_size, c.q_dim(), c.intermediate_size});
}

LlamaStep CudaWorkspace::step(const ModelConfig& c, const StepLayout& l) const {
  const int64_t T = l.tokens, S = l.seqs, R = l.rows, H = c.hidden_size;
  auto i32 = [this](int64_t at, std::initializer_list<int64_t> shape) {
    return TensorView(meta.bytes_ptr(static_cast<size_t>(at) * 4), DType::I32, shape);
  };
  LlamaStep s;
  s.tokens = i32(l.tokens_at, {T});
  s.positions = i32(l.positions_at, {T});
  s.slots = i32(l.slots_at, {T});
  s.query_start = i32(l.query_start_at, {S + 1});
  s.kv_lens = i32(l.kv_lens_at, {S});
  s.page_table = i32(l.page_table_at, {S, l.max_pages});
  s.logit_rows = i32(l.logit_rows_at, {R});
  s.residual = TensorView(residual.get(), DType::F32, {T, H});
  s.x = TensorView(x.get(), DType::BF16, {T, H});
  s.qkv = TensorView(qkv.get(), DType::BF16, {T, c.q_dim() + 2 * c.kv_dim()});
  s.attn = TensorView(attn.get(), DType::BF16, {T, c.num_attention_heads, c.head_dim});
  s.proj = TensorView(proj.get(), DType::BF16, {T, H});
  s.gate_up = TensorView(gate_up.get(), DType::BF16, {T, 2 * c.intermediate_size});
  s.gathered = TensorView(gathered.get(), DType::BF16, {R, H});
  s.logits = logit_rows(R, c.vocab_size);
  return s;
}

}  // namespace stem
