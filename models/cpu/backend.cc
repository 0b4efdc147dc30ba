// The CPU backend: the model's weights (models/llama_weights.h) in f32 host memory, an f32 paged
// KV cache, and the forward pass of models/llama.h on the CPU kernels (kernels/cpu: OpenBLAS,
// OpenMP). The engine's reference backend, and the one CI runs. In FP8 (wants_fp8) the layers'
// matrices hold E4M3 codes (widened to f32, exactly) with a scale per output channel, and their
// GEMMs are the FP8 twin: activations quantized per token, exact products summed in f32, the
// scales applied after (kernels/cpu/fp8.h), as the GPU is to compute them.
#include <algorithm>
#include <unordered_map>

#include "base/weights.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/kv_fp8.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/stem_attention.h"
#include "kernels/cpu/swiglu.h"
#include "models/backend.h"
#include "models/llama.h"
#include "models/stem_policy.h"

namespace stem {

namespace {

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

// The op interface on the CPU kernels. Stem's plan needs the step's query blocks (classified once
// by the backend, models/stem_policy.h), and counts into the step's figures: begin_step hands
// them over.
class CpuOps final : public ModelOps {
 public:
  void begin_step(const StemSettings& settings, const std::vector<StemQueryBlock>& blocks, StemStepStats& stats) {
    settings_ = &settings;
    blocks_ = &blocks;
    stats_ = &stats;
  }

  void embedding(const TensorView& out, const TensorView& ids, const TensorView& table) override {
    cpu::embedding(out, ids, table);
  }
  void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) override {
    cpu::rmsnorm(out, x, weight, eps);
  }
  void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                   float eps) override {
    cpu::add_rmsnorm(out, residual, x, weight, eps);
  }
  // FP8 weights: each matrix's codes (by address) and its per-row scales.
  void set_fp8_scales(const LlamaWeights& w) {
    for (const LlamaLayerWeights& l : w.layers)
      for (auto [m, s] : {std::pair{&l.qkv, &l.qkv_scale}, {&l.o, &l.o_scale}, {&l.gate_up, &l.gate_up_scale},
                          {&l.down, &l.down_scale}})
        if (!s->empty()) fp8_scales_[m->data] = *s;
  }

  void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) override {
    const auto it = fp8_scales_.find(w.data);
    if (it == fp8_scales_.end()) return cpu::matmul(out, a, w, bias);
    const int64_t M = a.size(0), K = a.size(1);
    codes_.resize(static_cast<size_t>(M * K));
    widened_.resize(static_cast<size_t>(M * K));
    a_scale_.resize(static_cast<size_t>(M));
    const TensorView q(codes_.data(), DType::F8E4M3, {M, K}), sa(a_scale_.data(), DType::F32, {M});
    const TensorView aw(widened_.data(), DType::F32, {M, K});
    cpu::quantize_rows_fp8(q, sa, a);
    cpu::dequantize_rows_fp8(aw, q, TensorView());
    cpu::scaled_matmul(out, aw, sa, w, it->second, bias);
  }
  // FP8 KV cache: each layer's scales, found by the address of its codes.
  void set_kv_scales(const KvLayers& kv) {
    for (size_t l = 0; l < kv.k_scale.size(); ++l) {
      if (kv.k_scale[l].empty()) continue;  // an unquantized layer of an FP8 cache
      kv_scales_[kv.k[l].data] = kv.k_scale[l];
      kv_scales_[kv.v[l].data] = kv.v_scale[l];
    }
  }
  // The step's staging plan for an FP8 cache (every sequence's pages: the CPU reads no code directly).
  void set_stage_plan(const cpu::KvStagePlan* plan) { stage_ = plan; }

  void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                     const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& slots) override {
    if (k_cache.dtype != DType::F8E4M3) return cpu::rope_kv_write(q, k, v, positions, inv_freq, k_cache, v_cache, slots);
    cpu::rope_kv_write_fp8(q, k, v, positions, inv_freq, k_cache, v_cache, scales_of(k_cache), scales_of(v_cache),
                           slots);
  }
  void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                 const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                 int64_t sliding_window) override {
    if (k_cache.dtype != DType::F8E4M3)
      return cpu::paged_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
    stage(k_cache, v_cache);
    cpu::paged_attention(out, q, staged_k_.view(), staged_v_.view(), staged_table(page_table), kv_lens, query_start,
                         scale, sliding_window);
  }
  void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                      float scale, int64_t sliding_window) override {
    TensorView k = k_cache, v = v_cache, table = page_table;
    if (k_cache.dtype == DType::F8E4M3) {
      stage(k_cache, v_cache);
      k = staged_k_.view();
      v = staged_v_.view();
      table = staged_table(page_table);
    }
    const cpu::StemPlan plan = cpu::stem_plan(q, k, v, table, kv_lens, query_start, *blocks_, scale, *settings_);
    count_stem(plan, *blocks_, *stats_);
    cpu::block_sparse_attention(out, q, k, v, table, kv_lens, query_start, plan, scale, sliding_window);
  }
  void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) override {
    cpu::swiglu(out, gate, up);
  }

 private:
  const StemSettings* settings_ = nullptr;
  const std::vector<StemQueryBlock>* blocks_ = nullptr;
  StemStepStats* stats_ = nullptr;
  std::unordered_map<const void*, TensorView> fp8_scales_;
  std::vector<uint8_t> codes_;  // the FP8 GEMM's activations: codes, widened, scales
  std::vector<float> widened_, a_scale_;

  TensorView scales_of(const TensorView& cache) const {
    const auto it = kv_scales_.find(cache.data);
    STEM_CHECK(it != kv_scales_.end(), "CPU backend: an FP8 KV cache without its scales");
    return it->second;
  }
  // "FP8 at rest": the layer's pages of the step dequantized into f32 staging pages (the same
  // values the decode path's code · scale gives), which the f32 kernels then read.
  void stage(const TensorView& k_cache, const TensorView& v_cache) {
    STEM_CHECK(stage_, "CPU backend: an FP8 KV cache in a step without a staging plan");
    const auto n = static_cast<int64_t>(stage_->pages.size());
    const std::vector<int64_t> shape{std::max<int64_t>(n, 1), k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]};
    if (staged_k_.empty() || staged_k_.shape() != shape) {
      staged_k_ = Tensor(DType::F32, shape);
      staged_v_ = Tensor(DType::F32, shape);
    }
    cpu::dequantize_kv_pages(staged_k_.view(), staged_v_.view(), k_cache, v_cache, scales_of(k_cache),
                             scales_of(v_cache),
                             TensorView(const_cast<int32_t*>(stage_->pages.data()), DType::I32, {n}));
  }
  TensorView staged_table(const TensorView& page_table) const {
    return TensorView(const_cast<int32_t*>(stage_->page_table.data()), DType::I32,
                      {page_table.shape[0], page_table.shape[1]});
  }
  std::unordered_map<const void*, TensorView> kv_scales_;
  const cpu::KvStagePlan* stage_ = nullptr;
  Tensor staged_k_, staged_v_;
};

TensorView i32(const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  return TensorView(const_cast<int32_t*>(v.data()), DType::I32, shape);
}

class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(const ModelConfig& c, const WeightStore& w, const BackendOptions& o)
      : config_(c), num_pages_(o.num_pages), page_size_(o.page_size), stem_(o.stem) {
    check_stem_settings(stem_);
    STEM_CHECK(o.page_size > 0 && 128 % o.page_size == 0, "page size ", o.page_size, " must divide 128");
    STEM_CHECK(o.num_pages > 0, "the KV cache needs at least one page");
    const std::vector<WeightSpec> table = llama_weight_table(c, lm_head_tied(c, &w), weights_);
    const std::optional<DType> fp8 = wants_fp8(c, o) ? std::optional(DType::F32) : std::nullopt;
    const size_t bytes = place_weights(c, table, weights_, DType::F32, nullptr, fp8);
    arena_ = Tensor(DType::F32, {static_cast<int64_t>(bytes / 4)});
    place_weights(c, table, weights_, DType::F32, static_cast<char*>(arena_.data()), fp8);
    load_weights(table, weights_, c, w, nullptr);
    ops_.set_fp8_scales(weights_);
    kv_fp8_ = kv_cache_fp8(o.kv_cache_dtype);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (auto* pool : {&k_, &v_}) {
        // An FP8 cache's unquantized layers (kv_unquantized_layers) stay f32, with an empty scale view.
        const bool fp8 = kv_layer_fp8(o, l);
        pool->emplace_back(fp8 ? DType::F8E4M3 : DType::F32,
                           std::vector<int64_t>{o.num_pages, o.page_size, c.num_key_value_heads, c.head_dim});
        (pool == &k_ ? kv_.k : kv_.v).push_back(pool->back().view());
        if (kv_fp8_ && !fp8) (pool == &k_ ? kv_.k_scale : kv_.v_scale).push_back(TensorView());
        if (!fp8) continue;
        // Scales of 1 and codes of 0: pages nothing wrote yet hold zeros, as the f32 pool's.
        Tensor scale(DType::F32, {o.num_pages, o.page_size, c.num_key_value_heads});
        std::fill_n(scale.view().ptr<float>(), scale.numel(), 1.f);
        (pool == &k_ ? kv_.k_scale : kv_.v_scale).push_back(scale.view());
        scales_.push_back(std::move(scale));
      }
    ops_.set_kv_scales(kv_);
  }
  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "cpu"; }
  int64_t num_pages() const override { return num_pages_; }
  int32_t page_size() const override { return page_size_; }
  StemStepStats last_stem_stats() const override { return stem_stats_; }
  void set_stem_settings(const StemSettings& settings) override {
    check_stem_settings(settings);
    stem_ = settings;
  }
  void set_op_decorator(ForwardingOps* ops) override {
    if (ops) ops->wrap(ops_);
    decorator_ = ops;
  }

  void forward(const ForwardBatch& b, Tensor& logits) override {
    const ModelConfig& c = config_;
    b.validate(c.vocab_size, num_pages_, page_size_);
    const int64_t T = b.num_tokens(), S = b.num_seqs(), R = static_cast<int64_t>(b.logit_rows.size());
    const int64_t H = c.hidden_size;
    LlamaStep s;
    s.tokens = i32(b.tokens, {T});
    s.positions = i32(b.positions, {T});
    s.slots = i32(b.slots, {T});
    s.query_start = i32(b.query_start, {S + 1});
    s.kv_lens = i32(b.kv_lens, {S});
    s.page_table = i32(b.page_table, {S, b.max_pages});
    s.logit_rows = i32(b.logit_rows, {R});
    s.gather = false;
    for (int64_t r = 0; r < R; ++r) s.gather |= b.logit_rows[r] != r;
    s.whole_last_layer = true;

    const std::vector<int32_t> stem_lens = b.stem_prompt_lens();
    std::vector<StemQueryBlock> blocks;
    if (b.any_stem()) blocks = stem_query_blocks(b.kv_lens, b.query_start, stem_lens, c.sliding_window, stem_);
    s.stem = std::any_of(blocks.begin(), blocks.end(), [](const StemQueryBlock& q) { return q.sparse; });
    stem_stats_ = {};
    ops_.begin_step(stem_, blocks, stem_stats_);
    if (kv_fp8_) stage_ = cpu::stage_kv_pages(b.page_table, b.max_pages, b.kv_lens, b.query_start, page_size_, 0);
    ops_.set_stage_plan(kv_fp8_ ? &stage_ : nullptr);

    const Tensor residual = Tensor::f32({T, H}), x = Tensor::f32({T, H});
    const Tensor qkv = Tensor::f32({T, c.q_dim() + 2 * c.kv_dim()}), proj = Tensor::f32({T, H});
    const Tensor attn = Tensor::f32({T, c.num_attention_heads, c.head_dim});
    const Tensor gate_up = Tensor::f32({T, 2 * c.intermediate_size});
    const Tensor gathered = s.gather ? Tensor::f32({R, H}) : Tensor();
    if (logits.empty() || logits.shape() != std::vector<int64_t>{R, c.vocab_size}) logits = Tensor::f32({R, c.vocab_size});
    s.residual = residual.view();
    s.x = x.view();
    s.qkv = qkv.view();
    s.attn = attn.view();
    s.proj = proj.view();
    s.gate_up = gate_up.view();
    s.gathered = gathered.empty() ? TensorView() : gathered.view();
    s.logits = logits.view();
    llama_forward(c, weights_, kv_, stem_, s, decorator_ ? static_cast<ModelOps&>(*decorator_) : ops_);
  }

 private:
  ModelConfig config_;
  int64_t num_pages_;
  int32_t page_size_;
  StemSettings stem_;
  StemStepStats stem_stats_;
  Tensor arena_;          // f32, every weight (and FP8 scales)
  LlamaWeights weights_;  // views into arena_
  std::vector<Tensor> k_, v_;
  bool kv_fp8_ = false;
  cpu::KvStagePlan stage_;      // FP8 KV cache: the step's pages to stage
  std::vector<Tensor> scales_;  // FP8 KV cache: each layer's K and V scales
  KvLayers kv_;
  CpuOps ops_;
  ForwardingOps* decorator_ = nullptr;
};

}  // namespace

std::unique_ptr<ModelBackend> make_cpu_backend(const ModelConfig& config, const WeightStore& weights,
                                               const BackendOptions& options) {
  return std::make_unique<CpuBackend>(config, weights, options);
}

}  // namespace stem
