#include "models/llama_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/weights.h"
#include "kernels/cpu/fp8.h"
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
    t.back().scale = &L.qkv_scale;
    if (c.attention_bias)
      add(L.qkv_bias, {Q + 2 * KV}, {{a + "q_proj.bias", Q}, {a + "k_proj.bias", KV}, {a + "v_proj.bias", KV}});
    add(L.o, {H, Q}, {{a + "o_proj.weight", H}});
    t.back().scale = &L.o_scale;
    if (c.o_proj_bias) add(L.o_bias, {H}, {{a + "o_proj.bias", H}});
    add(L.gate_up, {2 * I, H}, {{m + "gate_proj.weight", I}, {m + "up_proj.weight", I}});
    t.back().scale = &L.gate_up_scale;
    if (c.mlp_bias) add(L.gate_up_bias, {2 * I}, {{m + "gate_proj.bias", I}, {m + "up_proj.bias", I}});
    add(L.down, {H, I}, {{m + "down_proj.weight", H}});
    t.back().scale = &L.down_scale;
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
                     char* base, std::optional<DType> fp8_codes) {
  STEM_CHECK(!fp8_codes || *fp8_codes == DType::F8E4M3 || *fp8_codes == DType::F32, "FP8 codes in ",
             dtype_name(*fp8_codes));
  Arena a{base, 0};
  bool has_head = false;
  for (const WeightSpec& s : table) {
    const bool fp8 = fp8_codes && s.scale;
    *s.dst = a.take(fp8 ? *fp8_codes : dtype, s.shape);
    if (s.scale) *s.scale = fp8 ? a.take(DType::F32, {s.shape[0]}) : TensorView();
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

// The per-row scales of checkpoint tensor t (E4M3, `rows` rows): `<name>_scale`, checked.
std::vector<float> fp8_scales(const WeightStore& store, const TensorInfo& t, int64_t rows) {
  const std::string name = t.name + "_scale";
  const std::string where = store.file_of(t.name).string() + ": tensor '" + t.name + "' is F8_E4M3";
  const TensorInfo* s = store.find(name);
  if (!s) throw Error(where + " but '" + name + "' is missing: an FP8 weight needs its scales");
  const int64_t n = s->numel();
  const bool per_row =
      n == rows && (s->shape == std::vector<int64_t>{rows, 1} || s->shape == std::vector<int64_t>{rows});
  if (!per_row && !(n == 1 && s->shape.size() <= 1))
    throw Error(where + " of " + std::to_string(rows) + " rows, but '" + name + "' has shape " + s->shape_str() +
                ": it must be [" + std::to_string(rows) + ",1] (a scale per output channel) or [1] (per tensor)");
  if (s->dtype != DType::F32 && s->dtype != DType::BF16 && s->dtype != DType::F16)
    throw Error(where + ", and its scale '" + name + "' is " + dtype_name(s->dtype) +
                ": scales must be f32, bf16 or f16");
  std::vector<float> one(static_cast<size_t>(n)), out(static_cast<size_t>(rows));
  convert_to_f32(*s, one.data());
  for (int64_t r = 0; r < rows; ++r) {
    out[r] = one[per_row ? r : 0];
    if (!(out[r] > 0 && std::isfinite(out[r])))
      throw Error(where + ", and its scale '" + name + "' holds " + std::to_string(out[r]) + " at row " +
                  std::to_string(per_row ? r : 0) + ": scales must be positive and finite");
  }
  return out;
}

// Copies checkpoint tensor `part` into `rows` rows of dst starting at row0, in dst's dtype; for
// FP8 weights (scale not empty) its codes into dst's rows and its scales into scale's.
void load_part(const WeightStore& store, const WeightPart& part, const TensorView& dst, const TensorView& scale,
               int64_t row0, WeightCopy copy) {
  std::vector<int64_t> shape = {part.rows};
  if (dst.ndim == 2) shape.push_back(dst.shape[1]);
  const TensorInfo& t = store.get(part.name, shape);
  const int64_t rows = part.rows, cols = dst.ndim == 2 ? dst.shape[1] : 1;
  const size_t n = static_cast<size_t>(t.numel());
  char* at = static_cast<char*>(dst.data) + static_cast<size_t>(row0 * cols) * dtype_size(dst.dtype);
  const bool fp8_in = t.dtype == DType::F8E4M3, fp8_out = !scale.empty();
  if (fp8_out)
    STEM_CHECK(dst.ndim == 2 && (dst.dtype == DType::F32 || dst.dtype == DType::F8E4M3), "FP8 weights in ", dst.str());
  else
    STEM_CHECK(dst.dtype == DType::F32 || dst.dtype == DType::BF16, "weights in ", dtype_name(dst.dtype));
  if (fp8_in && dst.ndim != 2)
    throw Error(store.file_of(t.name).string() + ": tensor '" + t.name + "' is F8_E4M3: only matrices may be");
  if (!fp8_in && !fp8_out) {
    if (dst.dtype == t.dtype) return put(copy, at, t.data, n * dtype_size(t.dtype));
    if (dst.dtype == DType::F32 && !copy) return convert_to_f32(t, reinterpret_cast<float*>(at));
  }
  std::vector<float> f32(n), scales = fp8_in ? fp8_scales(store, t, rows) : std::vector<float>(rows);
  std::vector<uint8_t> codes(fp8_in ? 0 : n);
  const TensorView values(f32.data(), DType::F32, {rows, cols}), row_scales(scales.data(), DType::F32, {rows});
  const TensorView q(fp8_in ? const_cast<void*>(t.data) : codes.data(), DType::F8E4M3, {rows, cols});
  if (!fp8_in) {
    convert_to_f32(t, f32.data());
    if (fp8_out) cpu::quantize_rows_fp8(q, row_scales, values);
  }
  if (fp8_out) {
    put(copy, scale.rows(row0, row0 + rows).data, scales.data(), scales.size() * 4);
    if (dst.dtype == DType::F8E4M3) return put(copy, at, q.data, n);
    cpu::dequantize_rows_fp8(values, q, TensorView());  // the codes, widened to f32 (exact)
  } else if (fp8_in) {
    cpu::dequantize_rows_fp8(values, q, row_scales);
  }
  if (dst.dtype == DType::F32) return put(copy, at, f32.data(), n * 4);
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
      load_part(store, p, *s.dst, s.scale ? *s.scale : TensorView(), row, copy);
      row += p.rows;
    }
    STEM_CHECK(row == s.shape[0], "weight table: parts of ", row, " rows for ", s.shape[0]);
  }
  const std::vector<float> inv = rope_frequencies(c);
  put(copy, w.inv_freq.data, inv.data(), inv.size() * 4);
}

}  // namespace stem
