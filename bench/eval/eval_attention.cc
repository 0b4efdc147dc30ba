#include "bench/eval/eval_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "kernels/check.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/kv_write.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/stem_attention.h"
#include "kernels/cpu/swiglu.h"

namespace stem::eval {

namespace {

TensorView f32(std::vector<float>& x, std::initializer_list<int64_t> dims) { return TensorView(x.data(), DType::F32, dims); }
TensorView i32(std::vector<int32_t>& x, std::initializer_list<int64_t> dims) {
  return TensorView(x.data(), DType::I32, dims);
}
TensorView ci32(const std::vector<int32_t>& x, std::initializer_list<int64_t> dims) {
  return TensorView(const_cast<int32_t*>(x.data()), DType::I32, dims);
}
TensorView cf32(const std::vector<float>& x, std::initializer_list<int64_t> dims) {
  return TensorView(const_cast<float*>(x.data()), DType::F32, dims);
}

// The optional bias of a projection, or an empty view.
Tensor bias(const WeightStore& w, bool present, const std::string& name, int64_t n) {
  return present ? w.load_f32(name, {n}) : Tensor();
}
TensorView view_of(const Tensor& t) { return t.empty() ? TensorView() : t.view(); }

}  // namespace

Capture capture_qkv(const EvalModel& model, const std::vector<int32_t>& ids_in, int64_t first_layer) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  const WeightStore& w = model.weights();
  STEM_CHECK(c.sliding_window == 0, "the attention measure needs a model without a sliding window");
  std::vector<int32_t> ids = ids_in;
  const int64_t T = static_cast<int64_t>(ids.size()), H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  const int64_t Hq = c.num_attention_heads, Hk = c.num_key_value_heads;
  Capture cap;
  cap.tokens = T, cap.q_heads = Hq, cap.kv_heads = Hk, cap.dim = D;
  cap.pages = (T + cap.page_size - 1) / cap.page_size;
  cap.scale = 1.0f / std::sqrt(static_cast<float>(D));
  cap.page_table.resize(static_cast<size_t>(cap.pages));
  std::iota(cap.page_table.begin(), cap.page_table.end(), 0);
  cap.kv_lens = {static_cast<int32_t>(T)};
  cap.query_start = {0, static_cast<int32_t>(T)};
  cap.prompt_lens = {static_cast<int32_t>(T)};
  std::vector<int32_t> positions(static_cast<size_t>(T));
  std::iota(positions.begin(), positions.end(), 0);
  const std::vector<int32_t>& slots = positions;  // pages in order: slot = position

  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> inv = cpu::rope_inv_freq(D, c.rope_theta, c.rope_scaling);
  const Tensor embed = w.load_f32("model.embed_tokens.weight", {c.vocab_size, H});
  std::vector<float> h(T * H), x(T * H), q(T * Hq * D), k(T * Hk * D), v(T * Hk * D), attn(T * Hq * D), proj(T * H);
  std::vector<float> gate(T * I), up(T * I);
  const int64_t cache_size = cap.pages * cap.page_size * Hk * D;
  std::vector<float> k_cache(cache_size), v_cache(cache_size);
  cpu::embedding(f32(h, {T, H}), i32(ids, {T}), embed.view());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Tensor in_norm = w.load_f32(p + "input_layernorm.weight", {H});
    const Tensor post_norm = w.load_f32(p + "post_attention_layernorm.weight", {H});
    cpu::rmsnorm(f32(x, {T, H}), f32(h, {T, H}), in_norm.view(), eps);
    const Tensor wq = w.load_f32(p + "self_attn.q_proj.weight", {Hq * D, H});
    const Tensor wk = w.load_f32(p + "self_attn.k_proj.weight", {Hk * D, H});
    const Tensor wv = w.load_f32(p + "self_attn.v_proj.weight", {Hk * D, H});
    const Tensor wo = w.load_f32(p + "self_attn.o_proj.weight", {H, Hq * D});
    const Tensor bq = bias(w, c.attention_bias, p + "self_attn.q_proj.bias", Hq * D);
    const Tensor bk = bias(w, c.attention_bias, p + "self_attn.k_proj.bias", Hk * D);
    const Tensor bv = bias(w, c.attention_bias, p + "self_attn.v_proj.bias", Hk * D);
    const Tensor bo = bias(w, c.o_proj_bias, p + "self_attn.o_proj.bias", H);
    cpu::matmul(f32(q, {T, Hq * D}), f32(x, {T, H}), wq.view(), view_of(bq));
    cpu::matmul(f32(k, {T, Hk * D}), f32(x, {T, H}), wk.view(), view_of(bk));
    cpu::matmul(f32(v, {T, Hk * D}), f32(x, {T, H}), wv.view(), view_of(bv));
    cpu::rope(f32(q, {T, Hq, D}), f32(k, {T, Hk, D}), i32(positions, {T}), f32(inv, {D / 2}));
    const TensorView kc = f32(k_cache, {cap.pages, cap.page_size, Hk, D}), vc = f32(v_cache, {cap.pages, cap.page_size, Hk, D});
    cpu::kv_write(kc, vc, f32(k, {T, Hk, D}), f32(v, {T, Hk, D}), ci32(slots, {T}));
    cpu::paged_attention(f32(attn, {T, Hq, D}), f32(q, {T, Hq, D}), kc, vc, i32(cap.page_table, {1, cap.pages}),
                         i32(cap.kv_lens, {1}), i32(cap.query_start, {2}), cap.scale, 0);
    if (l >= first_layer) cap.layers.push_back({l, q, k_cache, v_cache});
    cpu::matmul(f32(proj, {T, H}), f32(attn, {T, Hq * D}), wo.view(), view_of(bo));
    cpu::add_rmsnorm(f32(x, {T, H}), f32(h, {T, H}), f32(proj, {T, H}), post_norm.view(), eps);
    const Tensor wg = w.load_f32(p + "mlp.gate_proj.weight", {I, H}), wu = w.load_f32(p + "mlp.up_proj.weight", {I, H});
    const Tensor wd = w.load_f32(p + "mlp.down_proj.weight", {H, I});
    const Tensor bg = bias(w, c.mlp_bias, p + "mlp.gate_proj.bias", I), bu = bias(w, c.mlp_bias, p + "mlp.up_proj.bias", I);
    const Tensor bd = bias(w, c.mlp_bias, p + "mlp.down_proj.bias", H);
    cpu::matmul(f32(gate, {T, I}), f32(x, {T, H}), wg.view(), view_of(bg));
    cpu::matmul(f32(up, {T, I}), f32(x, {T, H}), wu.view(), view_of(bu));
    cpu::swiglu(f32(gate, {T, I}), f32(gate, {T, I}), f32(up, {T, I}));
    cpu::matmul(f32(proj, {T, H}), f32(gate, {T, I}), wd.view(), view_of(bd));
    const Tensor next = l + 1 < c.num_hidden_layers ? w.load_f32("model.layers." + std::to_string(l + 1) +
                                                                     ".input_layernorm.weight", {H})
                                                    : w.load_f32("model.norm.weight", {H});
    cpu::add_rmsnorm(f32(x, {T, H}), f32(h, {T, H}), f32(proj, {T, H}), next.view(), eps);
  }
  // The last position's logits (lm_head, or the tied embedding).
  const Tensor head = !c.tie_word_embeddings || w.has("lm_head.weight") ? w.load_f32("lm_head.weight", {c.vocab_size, H})
                                                                        : Tensor();
  cap.last_logits.resize(static_cast<size_t>(c.vocab_size));
  cpu::matmul(f32(cap.last_logits, {1, c.vocab_size}), f32(x, {T, H}).rows(T - 1, T),
              (head.empty() ? embed : head).view(), TensorView());
  cap.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return cap;
}

cpu::StemPlan plan_layer(const Capture& c, const CapturedLayer& layer, const StemSettings& settings) {
  return cpu::stem_plan(cf32(layer.q, {c.tokens, c.q_heads, c.dim}), cf32(layer.k, {c.pages, c.page_size, c.kv_heads, c.dim}),
                        cf32(layer.v, {c.pages, c.page_size, c.kv_heads, c.dim}), ci32(c.page_table, {1, c.pages}),
                        ci32(c.kv_lens, {1}), ci32(c.query_start, {2}), ci32(c.prompt_lens, {1}), c.scale, 0, settings);
}

Density measure_density(const Capture& c, const Method& m, size_t stride) {
  Density d;
  double listed = 0, causal = 0;
  const int64_t bs = m.settings.block_size, nb = (c.tokens + bs - 1) / bs;
  const double per_layer = static_cast<double>(nb * (nb + 1) / 2 * c.q_heads);
  for (size_t li = 0; li < c.layers.size(); li += stride) {
    const CapturedLayer& layer = c.layers[li];
    const double n = m.sparse && layer.layer >= m.settings.dense_layers
                         ? static_cast<double>(plan_layer(c, layer, m.settings).block_indices.size())
                         : per_layer;
    d.by_layer.push_back(n / per_layer);
    listed += n;
    causal += per_layer;
  }
  d.total = causal > 0 ? listed / causal : 1.0;
  return d;
}

void calibrate_method(const Capture& c, Method& m, double tolerance) {
  if (m.knob == Knob::None || m.target <= 0) return;
  auto at = [&](double value) {
    m.set_knob(value);
    return measure_density(c, m, 2).total;
  };
  if (m.knob == Knob::Window) {
    // Whole blocks: the window whose density is nearest the target (density rises with it).
    const int64_t nb = (c.tokens + m.settings.block_size - 1) / m.settings.block_size;
    int64_t best = 1;
    double best_gap = 2;
    for (int64_t wnd = 1; wnd <= nb; ++wnd) {
      const double gap = at(static_cast<double>(wnd)) - m.target;
      if (std::abs(gap) < best_gap) best = wnd, best_gap = std::abs(gap);
      if (gap > 0) break;
    }
    m.set_knob(static_cast<double>(best));
    return;
  }
  // Budget rate (log scale) or threshold: density rises with the knob.
  const bool log_scale = m.knob == Knob::BudgetRate;
  double lo = log_scale ? std::log(1e-3) : 1e-6, hi = log_scale ? std::log(4.0) : 1.0;
  double value = m.knob_value(), best = value, best_gap = 2;
  double x = log_scale ? std::log(std::max(value, 1e-3)) : std::clamp(value, lo, hi);
  for (int step = 0; step < 24; ++step) {
    const double v = log_scale ? std::exp(x) : x;
    const double gap = at(v) - m.target;
    if (std::abs(gap) < best_gap) best = v, best_gap = std::abs(gap);
    if (std::abs(gap) <= tolerance) break;
    (gap < 0 ? lo : hi) = x;
    if (hi - lo < (log_scale ? 1e-3 : 1e-5)) break;  // a step of the budget (k_s is whole blocks)
    x = 0.5 * (lo + hi);
  }
  m.set_knob(best);
}

namespace {

// The entries of `plan` for the query blocks in `keep` (by i).
cpu::StemPlan sub_plan(const cpu::StemPlan& plan, const std::vector<char>& keep) {
  cpu::StemPlan out;
  out.q_heads = plan.q_heads;
  out.block_size = plan.block_size;
  out.block_offsets.push_back(0);
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int32_t i = plan.qblocks[2 * b + 1];
    if (!keep[i]) continue;
    out.qblocks.push_back(plan.qblocks[2 * b]);
    out.qblocks.push_back(i);
    for (int64_t h = 0; h < plan.q_heads; ++h) {
      const auto list = plan.list(b, h);
      out.block_indices.insert(out.block_indices.end(), list.begin(), list.end());
      out.block_offsets.push_back(static_cast<int32_t>(out.block_indices.size()));
    }
  }
  return out;
}

std::vector<float> attend(const Capture& c, const CapturedLayer& layer, const cpu::StemPlan& plan) {
  std::vector<float> out(static_cast<size_t>(c.tokens * c.q_heads * c.dim), 0.f);
  cpu::block_sparse_attention(f32(out, {c.tokens, c.q_heads, c.dim}), cf32(layer.q, {c.tokens, c.q_heads, c.dim}),
                              cf32(layer.k, {c.pages, c.page_size, c.kv_heads, c.dim}),
                              cf32(layer.v, {c.pages, c.page_size, c.kv_heads, c.dim}), ci32(c.page_table, {1, c.pages}),
                              ci32(c.kv_lens, {1}), ci32(c.query_start, {2}), plan, c.scale, 0);
  return out;
}

}  // namespace

ErrorSample make_error_sample(const Capture& c, std::vector<size_t> layers, int64_t every, int64_t block_size) {
  ErrorSample s;
  s.layers = std::move(layers);
  s.every = every;
  const int64_t nb = (c.tokens + block_size - 1) / block_size;
  s.keep.assign(static_cast<size_t>(nb), 0);
  for (int64_t i = 0; i < nb; ++i) s.keep[i] = i % every == every - 1 || i == nb - 1;
  // Every causal block listed: exact dense attention (block_sparse_attention is paged_attention then).
  cpu::StemPlan dense;
  dense.q_heads = c.q_heads;
  dense.block_size = block_size;
  dense.block_offsets.push_back(0);
  for (int32_t i = 0; i < nb; ++i) {
    if (!s.keep[i]) continue;
    dense.qblocks.insert(dense.qblocks.end(), {0, i});
    for (int64_t h = 0; h < c.q_heads; ++h) {
      for (int32_t j = 0; j <= i; ++j) dense.block_indices.push_back(j);
      dense.block_offsets.push_back(static_cast<int32_t>(dense.block_indices.size()));
    }
  }
  for (size_t li : s.layers) s.dense.push_back(attend(c, c.layers.at(li), dense));
  return s;
}

std::vector<double> attention_error(const Capture& c, const Method& m, const ErrorSample& sample) {
  std::vector<double> errors;
  for (size_t x = 0; x < sample.layers.size(); ++x) {
    const CapturedLayer& layer = c.layers.at(sample.layers[x]);
    if (!m.sparse || layer.layer < m.settings.dense_layers) {
      errors.push_back(0.0);
      continue;
    }
    const std::vector<float> got = attend(c, layer, sub_plan(plan_layer(c, layer, m.settings), sample.keep));
    const std::vector<float>& ref = sample.dense[x];
    double num = 0, den = 0;
    for (size_t e = 0; e < ref.size(); ++e) {
      num += (double{got[e]} - ref[e]) * (double{got[e]} - ref[e]);
      den += double{ref[e]} * ref[e];
    }
    errors.push_back(den > 0 ? std::sqrt(num / den) : 0.0);
  }
  return errors;
}

}  // namespace stem::eval
