#include "bench/eval/eval_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "kernels/check.h"
#include "kernels/cpu/stem_attention.h"
#include "models/ops.h"

namespace stem::eval {

namespace {

TensorView f32(std::vector<float>& x, std::initializer_list<int64_t> dims) { return TensorView(x.data(), DType::F32, dims); }
TensorView ci32(const std::vector<int32_t>& x, std::initializer_list<int64_t> dims) {
  return TensorView(const_cast<int32_t*>(x.data()), DType::I32, dims);
}
TensorView cf32(const std::vector<float>& x, std::initializer_list<int64_t> dims) {
  return TensorView(const_cast<float*>(x.data()), DType::F32, dims);
}

// The backend's ops, keeping at each dense attention from layer `first_layer` on its Q (after
// RoPE) and the sequence's K/V pages, laid out as Capture says (its pages in order, zeros past
// the last token).
class CaptureOps final : public ForwardingOps {
 public:
  CaptureOps(Capture& cap, int64_t first_layer) : cap_(cap), first_layer_(first_layer) {}
  int64_t layers_seen() const { return layer_; }

  void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                 const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                 int64_t sliding_window) override {
    if (layer_ >= first_layer_) cap_.layers.push_back({layer_, rows(q), pages(k_cache, page_table), pages(v_cache, page_table)});
    ++layer_;
    ForwardingOps::attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
  void stem_attention(const TensorView&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                      const TensorView&, const TensorView&, float, int64_t) override {
    throw Error("the capture forward is dense, yet a layer went through Stem");
  }

 private:
  // q [T, Hq, D] (row-strided: a column range of the fused qkv buffer), contiguous.
  std::vector<float> rows(const TensorView& q) const {
    STEM_CHECK(q.dtype == DType::F32 && q.shape[0] == cap_.tokens && q.stride[2] == 1 && q.stride[1] == cap_.dim,
               "capture: q is ", q.str());
    const int64_t row = cap_.q_heads * cap_.dim;
    std::vector<float> out(static_cast<size_t>(cap_.tokens * row));
    for (int64_t t = 0; t < cap_.tokens; ++t)
      std::copy_n(q.ptr<float>() + t * q.stride[0], row, out.data() + t * row);
    return out;
  }
  // The sequence's pages of a cache [P, page_size, Hkv, D], in its page table's order.
  std::vector<float> pages(const TensorView& cache, const TensorView& page_table) const {
    STEM_CHECK(cache.dtype == DType::F32 && cache.contiguous() && cache.shape[1] == cap_.page_size,
               "capture: the cache is ", cache.str());
    const int64_t page = cap_.page_size * cap_.kv_heads * cap_.dim, slot = cap_.kv_heads * cap_.dim;
    std::vector<float> out(static_cast<size_t>(cap_.pages * page), 0.f);
    for (int64_t p = 0; p < cap_.pages; ++p)
      std::copy_n(cache.ptr<float>() + int64_t{page_table.ptr<int32_t>()[p]} * page, page, out.data() + p * page);
    std::fill(out.begin() + cap_.tokens * slot, out.end(), 0.f);  // the pool's earlier contents
    return out;
  }

  Capture& cap_;
  int64_t first_layer_, layer_ = 0;
};

}  // namespace

Capture capture_qkv(EvalModel& model, const std::vector<int32_t>& ids, int64_t first_layer) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  STEM_CHECK(model.device() == "cpu", "the attention stage captures on the CPU backend (fp32), not ", model.device());
  STEM_CHECK(c.sliding_window == 0, "the attention measure needs a model without a sliding window");
  const int64_t T = static_cast<int64_t>(ids.size());
  Capture cap;
  cap.tokens = T, cap.q_heads = c.num_attention_heads, cap.kv_heads = c.num_key_value_heads, cap.dim = c.head_dim;
  cap.pages = (T + cap.page_size - 1) / cap.page_size;
  cap.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  cap.page_table.resize(static_cast<size_t>(cap.pages));
  std::iota(cap.page_table.begin(), cap.page_table.end(), 0);
  cap.kv_lens = {static_cast<int32_t>(T)};
  cap.query_start = {0, static_cast<int32_t>(T)};
  cap.prompt_lens = {static_cast<int32_t>(T)};
  // One dense prefill of the model (models/llama.cc on the CPU backend), its attention observed.
  CaptureOps ops(cap, first_layer);
  model.use(make_method("dense", 0, 0, 0));
  model.prefill(ids, {static_cast<int32_t>(T - 1)}, &ops);
  STEM_CHECK(ops.layers_seen() == c.num_hidden_layers, "capture: ", ops.layers_seen(), " attention calls for ",
             c.num_hidden_layers, " layers");
  cap.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return cap;
}

cpu::StemPlan plan_layer(const Capture& c, const CapturedLayer& layer, const StemSettings& settings) {
  const std::vector<StemQueryBlock> blocks = stem_query_blocks(c.kv_lens, c.query_start, c.prompt_lens, 0, settings);
  return cpu::stem_plan(cf32(layer.q, {c.tokens, c.q_heads, c.dim}), cf32(layer.k, {c.pages, c.page_size, c.kv_heads, c.dim}),
                        cf32(layer.v, {c.pages, c.page_size, c.kv_heads, c.dim}), ci32(c.page_table, {1, c.pages}),
                        ci32(c.kv_lens, {1}), ci32(c.query_start, {2}), blocks, c.scale, settings);
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
