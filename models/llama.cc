#include "models/llama.h"

#include <cmath>

namespace stem {

namespace {

// Columns [col0, col0 + cols) of every row of a row-major [T, width] buffer, as `shape` (rows first).
TensorView columns(const TensorView& m, int64_t col0, std::initializer_list<int64_t> shape) {
  TensorView v(static_cast<char*>(m.data) + col0 * static_cast<int64_t>(dtype_size(m.dtype)), m.dtype, shape);
  v.stride[0] = m.shape[1];
  return v;
}

}  // namespace

void llama_forward(const ModelConfig& c, const LlamaWeights& w, const KvLayers& kv, const StemSettings& stem,
                   const LlamaStep& s, ModelOps& ops) {
  const int64_t L = c.num_hidden_layers;
  STEM_CHECK(static_cast<int64_t>(kv.k.size()) == L && static_cast<int64_t>(w.layers.size()) == L,
             "KV cache has ", kv.k.size(), " layers, the weights ", w.layers.size(), ", the model ", L);
  const int64_t T = s.tokens.shape[0], R = s.logit_rows.shape[0], D = c.head_dim, I = c.intermediate_size;
  const int64_t Hq = c.num_attention_heads, Hk = c.num_key_value_heads, Q = c.q_dim(), KV = c.kv_dim();
  const float eps = static_cast<float>(c.rms_norm_eps), scale = 1.0f / std::sqrt(static_cast<float>(D));
  // The fused projections' outputs, split without copies (every op takes row-strided views).
  const TensorView q = columns(s.qkv, 0, {T, Hq, D}), k = columns(s.qkv, Q, {T, Hk, D});
  const TensorView v = columns(s.qkv, Q + KV, {T, Hk, D});
  const TensorView gate = columns(s.gate_up, 0, {T, I}), up = columns(s.gate_up, I, {T, I});

  ops.embedding(s.residual, s.tokens, w.embed);
  ops.rmsnorm(s.x, s.residual, w.layers[0].input_norm, eps);
  ops.mark("embedding + norm");
  for (int64_t l = 0; l < L; ++l) {
    const LlamaLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    ops.matmul(s.qkv, s.x, lw.qkv, lw.qkv_bias);
    ops.mark("gemm qkv");
    ops.rope_kv_write(q, k, v, s.positions, w.inv_freq, kv.k[l], kv.v[l], s.slots);
    ops.mark("rope + kv_write");
    if (R == 0 && l + 1 == L && !s.whole_last_layer) return;
    if (s.stem && stem_layer_sparse(stem, l)) {
      ops.stem_attention(s.attn, q, kv.k[l], kv.v[l], s.page_table, s.kv_lens, s.query_start, scale,
                         c.sliding_window);
      ops.mark("attention (stem)");
    } else {
      ops.attention(s.attn, q, kv.k[l], kv.v[l], s.page_table, s.kv_lens, s.query_start, scale, c.sliding_window);
      ops.mark("attention (dense)");
    }
    ops.matmul(s.proj, s.attn.reshape({T, Q}), lw.o, lw.o_bias);
    ops.mark("gemm o");
    ops.add_rmsnorm(s.x, s.residual, s.proj, lw.post_norm, eps);
    ops.mark("add + rmsnorm");
    ops.matmul(s.gate_up, s.x, lw.gate_up, lw.gate_up_bias);
    ops.mark("gemm gate_up");
    ops.swiglu(gate, gate, up);
    ops.mark("swiglu");
    ops.matmul(s.proj, gate, lw.down, lw.down_bias);
    ops.mark("gemm down");
    const TensorView& next_norm = l + 1 < L ? w.layers[static_cast<size_t>(l) + 1].input_norm : w.final_norm;
    ops.add_rmsnorm(s.x, s.residual, s.proj, next_norm, eps);
    ops.mark("add + rmsnorm");
  }
  if (R == 0) return;
  TensorView rows = s.x.rows(0, R);
  if (s.gather) {
    rows = s.gathered;
    ops.embedding(rows, s.logit_rows, s.x);  // a row gather: x is the "table"
  }
  ops.matmul(s.logits, rows, w.lm_head, TensorView());
  ops.mark("lm_head");
}

}  // namespace stem
