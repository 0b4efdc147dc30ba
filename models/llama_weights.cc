#include "models/llama_weights.h"

#include <algorithm>
#include <cstring>

#include "base/weights.h"
#include "kernels/cpu/rope.h"

namespace stem {

bool lm_head_tied(const ModelConfig& c, const WeightStore* store) {
  return c.tie_word_embeddings && !(store && store->has("lm_head.weight"));
}

std::vector<WeightSpec> llama_weight_table(const ModelConfig& c, bool tied, LlamaWeights& w) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
  std::vector<WeightSpec> t;
  auto add = [&t](TensorView& dst, std::vector<int64_t> shape, std::vector<WeightPart> parts,
                  WeightInit init = WeightInit::Normal) { t.push_back({&dst, std::move(shape), std::move(parts), init}); };
  add(w.embed, {V, H}, {{"model.embed_tokens.weight", V}});
  t.back().per_step = false;  // a decode step reads only its tokens' rows
  add(w.final_norm, {H}, {{"model.norm.weight", H}}, WeightInit::Ones);
  if (!tied) add(w.lm_head, {V, H}, {{"lm_head.weight", V}});
  w.layers.assign(static_cast<size_t>(c.num_hidden_layers), {});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".", a = p + "self_attn.", m = p + "mlp.";
    LlamaLayerWeights& L = w.layers[static_cast<size_t>(i)];
    add(L.input_norm, {H}, {{p + "input_layernorm.weight", H}}, WeightInit::Ones);
    add(L.post_norm, {H}, {{p + "post_attention_layernorm.weight", H}}, WeightInit::Ones);
    add(L.qkv, {Q + 2 * KV, H}, {{a + "q_proj.weight", Q}, {a + "k_proj.weight", KV}, {a + "v_proj.weight", KV}});
    if (c.attention_bias)
      add(L.qkv_bias, {Q + 2 * KV}, {{a + "q_proj.bias", Q}, {a + "k_proj.bias", KV}, {a + "v_proj.bias", KV}});
    add(L.o, {H, Q}, {{a + "o_proj.weight", H}});
    if (c.o_proj_bias) add(L.o_bias, {H}, {{a + "o_proj.bias", H}});
    add(L.gate_up, {2 * I, H}, {{m + "gate_proj.weight", I}, {m + "up_proj.weight", I}});
    if (c.mlp_bias) add(L.gate_up_bias, {2 * I}, {{m + "gate_proj.bias", I}, {m + "up_proj.bias", I}});
    add(L.down, {H, I}, {{m + "down_proj.weight", H}});
    if (c.mlp_bias) add(L.down_bias, {H}, {{m + "down_proj.bias", H}});
  }
  return t;
}

namespace {

constexpr size_t kAlign = 256;

// Hands out views into one buffer (base null: addresses stay null, only the size counts).
struct Arena {
  char* base = nullptr;
  size_t used = 0;

  TensorView take(DType dtype, const std::vector<int64_t>& shape) {
    TensorView v(nullptr, dtype, {});
    v.ndim = static_cast<int>(shape.size());
    int64_t n = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.shape[d] = shape[static_cast<size_t>(d)];
      v.stride[d] = n;
      n *= v.shape[d];
    }
    v.data = base ? base + used : nullptr;
    used += (static_cast<size_t>(n) * dtype_size(dtype) + kAlign - 1) / kAlign * kAlign;
    return v;
  }
};

}  // namespace

size_t place_weights(const ModelConfig& c, const std::vector<WeightSpec>& table, LlamaWeights& w, DType dtype,
                     char* base) {
  Arena a{base, 0};
  bool has_head = false;
  for (const WeightSpec& s : table) {
    *s.dst = a.take(dtype, s.shape);
    has_head |= s.dst == &w.lm_head;
  }
  if (!has_head) w.lm_head = w.embed;
  w.inv_freq = a.take(DType::F32, {c.head_dim / 2});
  return a.used;
}

std::vector<float> rope_frequencies(const ModelConfig& c) {
  STEM_CHECK(c.head_dim % 2 == 0 && c.head_dim > 0, "head dim ", c.head_dim, " must be even");
  std::vector<float> inv = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  STEM_CHECK(static_cast<int64_t>(inv.size()) == c.head_dim / 2, "rope frequencies: ", inv.size(), " for head dim ",
             c.head_dim);
  return inv;
}

size_t view_bytes(const TensorView& v) { return v.empty() ? 0 : static_cast<size_t>(v.numel()) * dtype_size(v.dtype); }

namespace {

void put(WeightCopy copy, void* dst, const void* src, size_t bytes) {
  if (copy)
    copy(dst, src, bytes);
  else
    std::memcpy(dst, src, bytes);
}

// Copies checkpoint tensor `part` into `rows` rows of dst starting at row0, in dst's dtype.
void load_part(const WeightStore& store, const WeightPart& part, const TensorView& dst, int64_t row0,
               WeightCopy copy) {
  std::vector<int64_t> shape = {part.rows};
  if (dst.ndim == 2) shape.push_back(dst.shape[1]);
  const TensorInfo& t = store.get(part.name, shape);
  const size_t n = static_cast<size_t>(t.numel()), row = dst.ndim == 2 ? static_cast<size_t>(dst.shape[1]) : 1;
  char* at = static_cast<char*>(dst.data) + static_cast<size_t>(row0) * row * dtype_size(dst.dtype);
  STEM_CHECK(dst.dtype == DType::F32 || dst.dtype == DType::BF16, "weights in ", dtype_name(dst.dtype));
  if (dst.dtype == DType::BF16 && t.dtype == DType::BF16) {
    put(copy, at, t.data, n * 2);
    return;
  }
  if (dst.dtype == DType::F32 && !copy) {
    convert_to_f32(t, reinterpret_cast<float*>(at));
    return;
  }
  std::vector<float> f32(n);
  convert_to_f32(t, f32.data());
  if (dst.dtype == DType::F32) {
    put(copy, at, f32.data(), n * 4);
    return;
  }
  std::vector<uint16_t> bf16(n);
  for (size_t i = 0; i < n; ++i) bf16[i] = f32_to_bf16(f32[i]);
  put(copy, at, bf16.data(), n * 2);
}

}  // namespace

void load_weights(const std::vector<WeightSpec>& table, const LlamaWeights& w, const ModelConfig& c,
                  const WeightStore& store, WeightCopy copy) {
  for (const WeightSpec& s : table) {
    int64_t row = 0;
    for (const WeightPart& p : s.parts) {
      load_part(store, p, *s.dst, row, copy);
      row += p.rows;
    }
    STEM_CHECK(row == s.shape[0], "weight table: parts of ", row, " rows for ", s.shape[0]);
  }
  const std::vector<float> inv = rope_frequencies(c);
  put(copy, w.inv_freq.data, inv.data(), inv.size() * 4);
}

}  // namespace stem
