#include "models/llama.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/stem_attention.h"
#include "kernels/cpu/swiglu.h"

namespace stem {

namespace {

Tensor load_opt(const WeightStore& w, bool present, const std::string& name, std::vector<int64_t> shape) {
  return present ? w.load_f32(name, shape) : Tensor();
}

TensorView view_or_empty(const Tensor& t) { return t.empty() ? TensorView() : t.view(); }

// Adds one layer's plan to the step's Stem figures: every listed (query block, head) of a sparse
// block against its causal key blocks.
void count_stem(const cpu::StemPlan& plan, const std::vector<StemQueryBlock>& blocks, StemStepStats& stats) {
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    if (!blocks[b].sparse) continue;
    ++stats.sparse_blocks;
    for (int64_t h = 0; h < plan.q_heads; ++h) {
      const int64_t causal = int64_t{blocks[b].block} + 1;
      stats.causal_key_blocks += causal;
      stats.skipped_key_blocks += causal - static_cast<int64_t>(plan.list(b, h).size());
    }
  }
}

}  // namespace

LlamaModel::LlamaModel(const ModelConfig& c, const WeightStore& w) : config_(c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  embed_ = w.load_f32("model.embed_tokens.weight", {c.vocab_size, H});
  final_norm_ = w.load_f32("model.norm.weight", {H});
  // Some tied checkpoints still store lm_head.weight; then it is used as stored.
  if (!c.tie_word_embeddings || w.has("lm_head.weight")) lm_head_ = w.load_f32("lm_head.weight", {c.vocab_size, H});
  layers_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaLayer& L = layers_[i];
    L.input_norm = w.load_f32(p + "input_layernorm.weight", {H});
    L.post_norm = w.load_f32(p + "post_attention_layernorm.weight", {H});
    L.wq = w.load_f32(p + "self_attn.q_proj.weight", {Q, H});
    L.wk = w.load_f32(p + "self_attn.k_proj.weight", {KV, H});
    L.wv = w.load_f32(p + "self_attn.v_proj.weight", {KV, H});
    L.wo = w.load_f32(p + "self_attn.o_proj.weight", {H, Q});
    L.bq = load_opt(w, c.attention_bias, p + "self_attn.q_proj.bias", {Q});
    L.bk = load_opt(w, c.attention_bias, p + "self_attn.k_proj.bias", {KV});
    L.bv = load_opt(w, c.attention_bias, p + "self_attn.v_proj.bias", {KV});
    L.bo = load_opt(w, c.o_proj_bias, p + "self_attn.o_proj.bias", {H});
    L.w_gate = w.load_f32(p + "mlp.gate_proj.weight", {I, H});
    L.w_up = w.load_f32(p + "mlp.up_proj.weight", {I, H});
    L.w_down = w.load_f32(p + "mlp.down_proj.weight", {H, I});
    L.b_gate = load_opt(w, c.mlp_bias, p + "mlp.gate_proj.bias", {I});
    L.b_up = load_opt(w, c.mlp_bias, p + "mlp.up_proj.bias", {I});
    L.b_down = load_opt(w, c.mlp_bias, p + "mlp.down_proj.bias", {H});
  }
  std::vector<float> inv = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  inv_freq_ = Tensor::f32({static_cast<int64_t>(inv.size())});
  std::copy(inv.begin(), inv.end(), inv_freq_.ptr<float>());
}

void LlamaModel::forward(const ForwardBatch& b, const KvLayers& kv, Tensor& logits, const StemSettings& stem,
                         StemStepStats* stats) const {
  const ModelConfig& c = config_;
  STEM_CHECK(static_cast<int64_t>(kv.k.size()) == c.num_hidden_layers, "KV cache has ", kv.k.size(),
             " layers, the model ", c.num_hidden_layers);
  const int64_t T = b.num_tokens(), S = b.num_seqs(), H = c.hidden_size, D = c.head_dim;
  const int64_t Hq = c.num_attention_heads, Hk = c.num_key_value_heads, I = c.intermediate_size;

  auto i32 = [](const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
    return TensorView(const_cast<int32_t*>(v.data()), DType::I32, shape);
  };
  const TensorView tokens = i32(b.tokens, {T}), positions = i32(b.positions, {T}), slots = i32(b.slots, {T});
  const TensorView query_start = i32(b.query_start, {S + 1}), kv_lens = i32(b.kv_lens, {S});
  const TensorView page_table = i32(b.page_table, {S, b.max_pages});

  Tensor h = Tensor::f32({T, H}), x = Tensor::f32({T, H});
  Tensor q = Tensor::f32({T, Hq, D}), k = Tensor::f32({T, Hk, D}), v = Tensor::f32({T, Hk, D});
  Tensor attn = Tensor::f32({T, Hq, D}), proj = Tensor::f32({T, H});
  Tensor gate = Tensor::f32({T, I}), up = Tensor::f32({T, I});
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float eps = static_cast<float>(c.rms_norm_eps);

  // Stem runs only when some query block of the step is sparse; otherwise every layer is dense
  // attention, the same numbers the block lists would give, by the faster path.
  const std::vector<int32_t> stem_lens = b.stem_prompt_lens();
  const TensorView prompt_lens = i32(stem_lens, {S});
  std::vector<StemQueryBlock> stem_blocks;
  if (b.any_stem()) stem_blocks = stem_query_blocks(b.kv_lens, b.query_start, stem_lens, c.sliding_window, stem);
  const bool stem_step = std::any_of(stem_blocks.begin(), stem_blocks.end(), [](const auto& x) { return x.sparse; });
  if (stats) *stats = {};

  cpu::embedding(h.view(), tokens, embed_.view());
  cpu::rmsnorm(x.view(), h.view(), layers_[0].input_norm.view(), eps);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LlamaLayer& L = layers_[l];
    cpu::matmul(q.view().reshape({T, Hq * D}), x.view(), L.wq.view(), view_or_empty(L.bq));
    cpu::matmul(k.view().reshape({T, Hk * D}), x.view(), L.wk.view(), view_or_empty(L.bk));
    cpu::matmul(v.view().reshape({T, Hk * D}), x.view(), L.wv.view(), view_or_empty(L.bv));
    cpu::rope_kv_write(q.view(), k.view(), v.view(), positions, inv_freq_.view(), kv.k[l], kv.v[l], slots);
    if (stem_step && stem_layer_sparse(stem, l)) {
      const cpu::StemPlan plan = cpu::stem_plan(q.view(), kv.k[l], kv.v[l], page_table, kv_lens, query_start,
                                                prompt_lens, scale, c.sliding_window, stem);
      if (stats) count_stem(plan, stem_blocks, *stats);
      cpu::block_sparse_attention(attn.view(), q.view(), kv.k[l], kv.v[l], page_table, kv_lens, query_start, plan,
                                  scale, c.sliding_window);
    } else {
      cpu::paged_attention(attn.view(), q.view(), kv.k[l], kv.v[l], page_table, kv_lens, query_start, scale,
                           c.sliding_window);
    }
    cpu::matmul(proj.view(), attn.view().reshape({T, Hq * D}), L.wo.view(), view_or_empty(L.bo));
    cpu::add_rmsnorm(x.view(), h.view(), proj.view(), L.post_norm.view(), eps);
    cpu::matmul(gate.view(), x.view(), L.w_gate.view(), view_or_empty(L.b_gate));
    cpu::matmul(up.view(), x.view(), L.w_up.view(), view_or_empty(L.b_up));
    cpu::swiglu(gate.view(), gate.view(), up.view());
    cpu::matmul(proj.view(), gate.view(), L.w_down.view(), view_or_empty(L.b_down));
    const Tensor& next_norm = l + 1 < c.num_hidden_layers ? layers_[l + 1].input_norm : final_norm_;
    cpu::add_rmsnorm(x.view(), h.view(), proj.view(), next_norm.view(), eps);
  }

  const int64_t R = static_cast<int64_t>(b.logit_rows.size());
  Tensor rows = Tensor::f32({R, H});
  for (int64_t r = 0; r < R; ++r)
    std::copy_n(x.ptr<float>() + b.logit_rows[r] * H, H, rows.ptr<float>() + r * H);
  if (logits.empty() || logits.shape() != std::vector<int64_t>{R, c.vocab_size}) logits = Tensor::f32({R, c.vocab_size});
  cpu::matmul(logits.view(), rows.view(), (lm_head_.empty() ? embed_ : lm_head_).view(), TensorView());
}

}  // namespace stem
