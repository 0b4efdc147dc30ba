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

// Rows [begin, end) of a weight or bias (empty stays empty).
TensorView part(const TensorView& t, int64_t begin, int64_t end) { return t.empty() ? TensorView() : t.rows(begin, end); }

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
  const std::vector<WeightSpec> table = llama_weight_table(c, lm_head_tied(c, &w), w_);
  arena_ = Tensor(DType::F32, {static_cast<int64_t>(place_weights(c, table, w_, DType::F32, nullptr) / 4)});
  place_weights(c, table, w_, DType::F32, static_cast<char*>(arena_.data()));
  load_weights(table, w_, c, w, nullptr);
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

  const int64_t Q = c.q_dim(), KV = c.kv_dim();
  cpu::embedding(h.view(), tokens, w_.embed);
  cpu::rmsnorm(x.view(), h.view(), w_.layers[0].input_norm, eps);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LlamaLayerWeights& L = w_.layers[l];
    cpu::matmul(q.view().reshape({T, Hq * D}), x.view(), L.qkv.rows(0, Q), part(L.qkv_bias, 0, Q));
    cpu::matmul(k.view().reshape({T, Hk * D}), x.view(), L.qkv.rows(Q, Q + KV), part(L.qkv_bias, Q, Q + KV));
    cpu::matmul(v.view().reshape({T, Hk * D}), x.view(), L.qkv.rows(Q + KV, Q + 2 * KV),
                part(L.qkv_bias, Q + KV, Q + 2 * KV));
    cpu::rope_kv_write(q.view(), k.view(), v.view(), positions, w_.inv_freq, kv.k[l], kv.v[l], slots);
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
    cpu::matmul(proj.view(), attn.view().reshape({T, Hq * D}), L.o, L.o_bias);
    cpu::add_rmsnorm(x.view(), h.view(), proj.view(), L.post_norm, eps);
    cpu::matmul(gate.view(), x.view(), L.gate_up.rows(0, I), part(L.gate_up_bias, 0, I));
    cpu::matmul(up.view(), x.view(), L.gate_up.rows(I, 2 * I), part(L.gate_up_bias, I, 2 * I));
    cpu::swiglu(gate.view(), gate.view(), up.view());
    cpu::matmul(proj.view(), gate.view(), L.down, L.down_bias);
    const TensorView& next_norm = l + 1 < c.num_hidden_layers ? w_.layers[l + 1].input_norm : w_.final_norm;
    cpu::add_rmsnorm(x.view(), h.view(), proj.view(), next_norm, eps);
  }

  const int64_t R = static_cast<int64_t>(b.logit_rows.size());
  Tensor rows = Tensor::f32({R, H});
  for (int64_t r = 0; r < R; ++r)
    std::copy_n(x.ptr<float>() + b.logit_rows[r] * H, H, rows.ptr<float>() + r * H);
  if (logits.empty() || logits.shape() != std::vector<int64_t>{R, c.vocab_size}) logits = Tensor::f32({R, c.vocab_size});
  cpu::matmul(logits.view(), rows.view(), w_.lm_head, TensorView());
}

}  // namespace stem
