#include "models/cuda/backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>

#include "kernels/cpu/kv_fp8.h"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/stem.cuh"
#include "kernels/cuda/token_logprob.cuh"
#include "models/cuda/memory.h"
#include "models/cuda/ops.h"
#include "models/cuda/profile.h"
#include "models/cuda/sampling.h"
#include "models/cuda/step.h"
#include "models/cuda/weights.h"
#include "models/cuda/workspace.h"
#include "models/llama.h"
#include "models/stem_policy.h"

namespace stem {

namespace {

using cudabk::DeviceMemory;

// Stem settings the CUDA planner takes (it checks them again per call, but mid-step).
void check_cuda_stem(const ModelConfig& c, const StemSettings& st) {
  check_stem_settings(st);
  if (st.block_size != 128)
    throw Error("CUDA backend: Stem block size " + std::to_string(st.block_size) +
                " is not supported (the block-sparse attention kernel takes 128)");
  const int64_t threads = st.stride * c.head_dim / 8;
  if (threads < 32 || threads > 1024 || st.stride * c.head_dim % 64 != 0)
    throw Error("CUDA backend: Stem stride " + std::to_string(st.stride) + " with head dim " +
                std::to_string(c.head_dim) + " is not supported (the pooling needs stride · head_dim / 8 in [32, 1024])");
}

// What the kernels take, checked before any weight is loaded.
const ModelConfig& supported(const ModelConfig& c, const BackendOptions& o) {
  if (c.head_dim != 64 && c.head_dim != 128)
    throw Error("CUDA backend: head_dim " + std::to_string(c.head_dim) +
                " is not supported (the CUDA attention kernels take 64 or 128); use --device cpu");
  if (!(o.page_size > 0 && 128 % o.page_size == 0 && (o.page_size & (o.page_size - 1)) == 0))
    throw Error("CUDA backend: page size " + std::to_string(o.page_size) + " must be a power of two dividing 128");
  check_cuda_stem(c, o.stem);
  if (wants_fp8(c, o)) {
    int device = 0;
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    check_fp8_gpu(p.major, p.minor, p.name);
    // cuBLASLt's FP8 GEMM takes 16-byte aligned operands: every K and N of the four matrices.
    const int64_t qkv = c.q_dim() + 2 * c.kv_dim();
    for (const int64_t d : {c.hidden_size, c.q_dim(), c.intermediate_size, qkv})
      if (d % 16 != 0)
        throw Error("CUDA backend: FP8 needs the hidden size (" + std::to_string(c.hidden_size) + "), q_dim (" +
                    std::to_string(c.q_dim()) + "), intermediate size (" + std::to_string(c.intermediate_size) +
                    ") and q+k+v rows (" + std::to_string(qkv) +
                    ") to be multiples of 16 (cuBLASLt's FP8 GEMM); run the model in bf16 or use --device cpu");
    spdlog::info("cuda backend: FP8 ({}): E4M3 weights with a scale per output channel, activations quantized per "
                 "token; the LM head and embeddings stay bf16",
                 c.quantization == "fp8" ? "FP8 checkpoint" : "bf16 checkpoint quantized at load");
  }
  return c;
}

class CudaBackend final : public CudaModelBackend {
 public:
  CudaBackend(const ModelConfig& c, const WeightStore* store, const BackendOptions& o, const CudaBackendOptions& co)
      : config_(supported(c, o)),
        options_(co),
        page_size_(o.page_size),
        stem_(o.stem),
        kv_fp8_(kv_cache_fp8(o.kv_cache_dtype)),
        weights_(c, store, co.seed, wants_fp8(c, o)) {
    ws_.fp8 = weights_.fp8();
    ops_.set_fp8_weights(weights_);
    if (kv_fp8_) {
      // The bf16 staging prefill and Stem read, for one sequence of the longest context, taken
      // before the pool is sized (a step that stages more grows it then).
      const int64_t max_len = o.max_model_len > 0 ? o.max_model_len : c.max_position_embeddings;
      ws_.grow_stage(c, std::max<int64_t>(1, (max_len + page_size_ - 1) / page_size_), page_size_, stream_.get());
      max_prefill_context_ = ws_.stage_pages * page_size_;
    }
    std::sort(options_.graph_batch_sizes.begin(), options_.graph_batch_sizes.end());
    const int64_t max_graph = options_.graph_batch_sizes.empty() ? 1 : options_.graph_batch_sizes.back();
    ensure_workspace(std::max(co.reserve_step_tokens, max_graph), max_graph,
                     StepLayout::make(std::max(co.reserve_step_tokens, max_graph), max_graph, 1024, max_graph).total);
    // cuBLASLt takes its workspace at the first GEMM: take it now, so that the pool sizing sees it.
    cuda::matmul(gemm_, ws_.logit_rows(1, c.vocab_size),
                 TensorView(ws_.x.get(), DType::BF16, {1, c.hidden_size}), weights_.lm_head, TensorView(),
                 stream_.get());
    if (weights_.fp8()) check_fp8_gemm();
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));

    // bf16: 2 bytes an element. FP8: 1 byte an element and an f32 scale per KV head (each layer's
    // scale arrays rounded up to 256 bytes, counted below); an FP8 cache's unquantized layers
    // (BackendOptions::kv_unquantized_layers) bf16.
    std::vector<bool> fp8_layer;
    int64_t fp8_layers = 0;
    kv_bytes_per_token_ = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      fp8_layer.push_back(kv_layer_fp8(o, l));
      fp8_layers += fp8_layer.back();
      kv_bytes_per_token_ += 2 * static_cast<size_t>(fp8_layer.back() ? c.kv_dim() + c.num_key_value_heads * 4 : c.kv_dim() * 2);
    }
    const size_t page_bytes = kv_bytes_per_token_ * static_cast<size_t>(page_size_);
    const size_t layer_slack = static_cast<size_t>(fp8_layers) * 2 * 256;
    num_pages_ = o.num_pages;
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    if (num_pages_ == 0) {
      // The fraction bounds everything this process holds (and whatever else the device already
      // holds): what is left of it after the weights and activations becomes the KV pool.
      const double budget = o.gpu_memory_fraction * static_cast<double>(total) - static_cast<double>(total - free) -
                            static_cast<double>(layer_slack);
      num_pages_ = budget > 0 ? static_cast<int64_t>(budget / static_cast<double>(page_bytes)) : 0;
      STEM_CHECK(num_pages_ > 0, "CUDA backend: no memory left for the KV cache: weights ", weights_.bytes() >> 20,
                 " MiB, in use ", (total - free) >> 20, " MiB of ", total >> 20, " MiB, gpu_memory_fraction ",
                 o.gpu_memory_fraction);
    }
    // Per layer, K then V: bf16 values, or FP8 codes followed by their scales [P, page_size, Hkv].
    // Every part starts 16-byte aligned (kv_dim is a multiple of 16; the scales are rounded up to
    // 256 bytes), as the FP8 kernels need (check_fp8_kv_cache).
    const size_t slots = static_cast<size_t>(num_pages_) * page_size_;
    const size_t bf16_bytes = slots * c.kv_dim() * 2, code_bytes = slots * c.kv_dim();
    const size_t scale_bytes = (slots * c.num_key_value_heads * 4 + 255) / 256 * 256;
    size_t kv_total = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) kv_total += 2 * (fp8_layer[l] ? code_bytes + scale_bytes : bf16_bytes);
    kv_ = DeviceMemory(kv_total, "the KV cache");
    // Zeroed so that pages nothing has written yet (padding rows of a graph read page 0) hold finite
    // values (FP8: codes 0 and scales 0).
    CUDA_CHECK(cudaMemsetAsync(kv_.get(), 0, kv_.bytes(), stream_.get()));
    size_t at = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (int which = 0; which < 2; ++which) {
        const bool fp8 = fp8_layer[l];
        (which ? kv_layers_.v : kv_layers_.k)
            .push_back(TensorView(kv_.bytes_ptr(at), fp8 ? DType::F8E4M3 : DType::BF16,
                                  {num_pages_, page_size_, c.num_key_value_heads, c.head_dim}));
        at += fp8 ? code_bytes : bf16_bytes;
        if (!kv_fp8_) continue;
        (which ? kv_layers_.v_scale : kv_layers_.k_scale)
            .push_back(fp8 ? TensorView(kv_.bytes_ptr(at), DType::F32, {num_pages_, page_size_, c.num_key_value_heads})
                           : TensorView());
        if (fp8) at += scale_bytes;
      }
    STEM_CHECK(at == kv_total, "CUDA backend: the KV cache's layout is ", at, " bytes, allocated ", kv_total);
    ops_.set_kv_scales(kv_layers_);
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    warm_up();
    std::string kv_kind = kv_fp8_ ? "FP8 E4M3 with a scale per token and KV head" : "bf16";
    if (kv_fp8_ && fp8_layers < c.num_hidden_layers)
      kv_kind += ", " + std::to_string(c.num_hidden_layers - fp8_layers) + " layers in bf16";
    spdlog::info("cuda backend: weights {} MiB, activations {} MiB, KV cache {} pages of {} tokens ({} MiB, {}), {} MiB free",
                 weights_.bytes() >> 20, ws_.bytes() >> 20, num_pages_, page_size_, kv_.bytes() >> 20, kv_kind,
                 (free - kv_.bytes()) >> 20);
  }

  ~CudaBackend() override { cudaStreamSynchronize(stream_.get()); }

  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "cuda"; }
  int64_t num_pages() const override { return num_pages_; }
  int32_t page_size() const override { return page_size_; }
  int64_t max_prefill_context() const override { return max_prefill_context_; }

  StemStepStats last_stem_stats() const override { return stem_stats_; }
  double last_step_device_ms() const override { return stats_.last_step_device_ms; }
  void set_stem_settings(const StemSettings& settings) override {
    check_cuda_stem(config_, settings);
    stem_ = settings;
  }

  CudaBackendStats stats() const override {
    CudaBackendStats s = stats_;
    s.weight_bytes = weights_.bytes();
    s.kv_bytes = kv_.bytes();
    s.workspace_bytes = ws_.bytes();
    s.weight_step_read_bytes = weights_.step_read_bytes();
    s.kv_bytes_per_token = kv_bytes_per_token_;
    s.gemm_tunings = static_cast<int64_t>(gemm_.tunings());
    s.kv_stage_pages = ws_.stage_pages;
    return s;
  }

  const std::vector<std::pair<std::string, double>>& profile() const override { return profile_.totals(); }
  void set_profiling(bool on) override { options_.profile = on; }
  void clear_profile() override { profile_.clear(); }

  void fill_kv_random(uint64_t seed) override {
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    if (!kv_fp8_) return fill_random_bf16(kv_.get(), kv_.bytes() / 2, seed);
    // FP8 layers: codes of N(0, 1) values, every scale 0x3C3C3C3C (about 0.0115): N(0, 0.0115) keys
    // and values. Unquantized layers: bf16 as above.
    for (size_t i = 0; i < 2 * kv_layers_.k.size(); ++i) {
      const size_t l = i / 2;
      const TensorView& cache = i % 2 ? kv_layers_.v[l] : kv_layers_.k[l];
      const TensorView& scale = i % 2 ? kv_layers_.v_scale[l] : kv_layers_.k_scale[l];
      const uint64_t s = seed + i;
      if (cache.dtype != DType::F8E4M3) {
        fill_random_bf16(cache.data, static_cast<size_t>(cache.numel()), s);
        continue;
      }
      fill_random_fp8(cache.data, static_cast<size_t>(cache.numel()), s);
      CUDA_CHECK(cudaMemset(scale.data, 0x3C, static_cast<size_t>(scale.numel()) * 4));
    }
  }

  void forward(const ForwardBatch& batch, Tensor& logits) override {
    launch_step(batch);
    cudaStream_t s = stream_.get();
    CUDA_CHECK(cudaEventRecord(stop_.get(), s));
    const int64_t R = static_cast<int64_t>(batch.logit_rows.size()), V = config_.vocab_size;
    if (logits.empty() || logits.dtype() != DType::F32 || logits.shape() != std::vector<int64_t>{R, V})
      logits = Tensor::f32({R, V});
    if (R > 0)
      CUDA_CHECK(cudaMemcpyAsync(logits.data(), ws_.logits.get(), static_cast<size_t>(R * V) * 4,
                                 cudaMemcpyDeviceToHost, s));
    finish_step();
  }

  // Perplexity's path: the logits stay on the device; a logprob and an argmax per row come back.
  void forward_token_logprobs(const ForwardBatch& batch, const std::vector<int32_t>& targets,
                              TokenScores& out) override {
    check_targets(batch, targets);
    const auto R = static_cast<int64_t>(targets.size());
    launch_step(batch);
    cudaStream_t s = stream_.get();
    out.logprob.resize(targets.size());
    out.argmax.resize(targets.size());
    if (R > 0) {
      // The previous step has finished (finish_step waits), so the old buffer is free to go.
      if (scores_.bytes() < static_cast<size_t>(R) * 12) scores_ = DeviceMemory(static_cast<size_t>(R) * 12, "token scores");
      int32_t* d_targets = reinterpret_cast<int32_t*>(scores_.get());
      CUDA_CHECK(cudaMemcpyAsync(d_targets, targets.data(), static_cast<size_t>(R) * 4, cudaMemcpyHostToDevice, s));
      const TensorView logprob(scores_.bytes_ptr(static_cast<size_t>(R) * 4), DType::F32, {R});
      const TensorView argmax(scores_.bytes_ptr(static_cast<size_t>(R) * 8), DType::I32, {R});
      cuda::token_logprob(logprob, argmax, ws_.logit_rows(R, config_.vocab_size),
                          TensorView(d_targets, DType::I32, {R}), s);
      CUDA_CHECK(cudaEventRecord(stop_.get(), s));
      CUDA_CHECK(cudaMemcpyAsync(out.logprob.data(), logprob.data, static_cast<size_t>(R) * 4, cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaMemcpyAsync(out.argmax.data(), argmax.data, static_cast<size_t>(R) * 4, cudaMemcpyDeviceToHost, s));
    } else {
      CUDA_CHECK(cudaEventRecord(stop_.get(), s));
    }
    finish_step();
  }

  // The server's path: the logits stay on the device; only the sampled tokens come back.
  void forward_sample(const ForwardBatch& batch, const SamplingBatch& sampling, SampledTokens& out) override {
    const auto R = static_cast<int64_t>(batch.logit_rows.size());
    sampling.validate(R, config_.vocab_size);
    launch_step(batch);
    sample_step(sampling, out);
  }

  // The step's launches are queued before `prepare` runs, so its host work overlaps the GPU.
  void forward_sample(const ForwardBatch& batch, const std::function<void(SamplingBatch&)>& prepare,
                      SampledTokens& out) override {
    const auto R = static_cast<int64_t>(batch.logit_rows.size());
    launch_step(batch);
    SamplingBatch sampling;
    try {
      prepare(sampling);
      sampling.validate(R, config_.vocab_size);
    } catch (...) {
      CUDA_CHECK(cudaStreamSynchronize(stream_.get()));  // the step's launches end before the error leaves
      throw;
    }
    sample_step(sampling, out);
  }

 private:
  // Runs one FP8 projection (layer 0's qkv on a few rows of whatever the buffers hold) at load,
  // so that a GPU or cuBLAS without the FP8 GEMM this backend needs fails here, clearly, and not
  // at the first request. It also takes the FP8 plan's workspace before the KV pool is sized. More
  // rows than fp8_matmul sends to fp8_gemv, so that cuBLASLt's FP8 GEMM is the one tried.
  void check_fp8_gemm() {
    const int64_t rows = cuda::kFp8GemvRows + 1;
    STEM_CHECK(ws_.tokens >= rows, "CUDA backend: the step buffers hold ", ws_.tokens, " tokens, the FP8 check needs ",
               rows);
    const TensorView x(ws_.x.get(), DType::BF16, {rows, config_.hidden_size});
    CUDA_CHECK(cudaMemsetAsync(ws_.x.get(), 0, static_cast<size_t>(rows * config_.hidden_size) * 2, stream_.get()));
    const LlamaLayerWeights& l0 = weights_.layers.at(0);
    try {
      ops_.set_fp8_buffers(ws_.fp8_codes.get(), static_cast<float*>(ws_.fp8_scales.get()), ws_.tokens,
                           CudaWorkspace::fp8_width(config_));
      ops_.matmul(TensorView(ws_.qkv.get(), DType::BF16, {rows, l0.qkv.shape[0]}), x, l0.qkv, l0.qkv_bias);
      CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    } catch (const Error& e) {
      throw Error(std::string("CUDA backend: the FP8 GEMM does not run here (") + e.what() +
                  "); serve a bf16 checkpoint without --quantization fp8, or use --device cpu");
    }
  }

  // Decode steps of 1, 2, 4 ... kGemmTuneMaxRows sequences at load, so that what the first step of
  // a GEMM shape bucket costs (cuBLASLt's candidates timed and their kernels loaded: 50-90 ms for
  // the 8B shape, bench/RESULTS.md) is paid before the first request, not by the first question on
  // a cached prefix or the first decode step of a larger batch. Every projection and the LM head
  // run at each bucket's rows; a prefill chunk of up to 256 tokens uses the same buckets. The steps
  // write page p for sequence p; the pool is zeroed again after, and the graphs they captured and
  // the counts they made are dropped, so the backend starts as if nothing had run. STEM_WARMUP=0
  // skips it (to measure what it saves).
  void warm_up() {
    if (const char* v = std::getenv("STEM_WARMUP"); v != nullptr && std::string(v) == "0") return;
    const auto start = std::chrono::steady_clock::now();
    const int64_t most = std::min<int64_t>(cuda::kGemmTuneMaxRows, num_pages_);
    for (int64_t B = 1; B <= most; B *= 2) {
      ForwardBatch b;
      for (int32_t s = 0; s < static_cast<int32_t>(B); ++s) {
        b.tokens.push_back(0);
        b.positions.push_back(0);
        b.slots.push_back(s * page_size_);
        b.query_start.push_back(s);
        b.kv_lens.push_back(1);
        b.page_table.push_back(s);
        b.logit_rows.push_back(s);
      }
      b.query_start.push_back(static_cast<int32_t>(B));
      b.max_pages = 1;
      launch_step(b);
      CUDA_CHECK(cudaEventRecord(stop_.get(), stream_.get()));
      finish_step();
    }
    CUDA_CHECK(cudaMemsetAsync(kv_.get(), 0, kv_.bytes(), stream_.get()));
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    graphs_.clear();
    stats_ = {};
    profile_.clear();
    spdlog::info("cuda backend: warm-up steps of 1 to {} sequences (GEMM plans tuned) in {:.0f} ms", most,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }

  // Samples the launched step's logit rows on the device, waits, and copies the tokens back.
  void sample_step(const SamplingBatch& sampling, SampledTokens& out) {
    sampling_.launch(sampling, ws_.logit_rows(sampling.num_rows(), config_.vocab_size), stream_.get());
    CUDA_CHECK(cudaEventRecord(stop_.get(), stream_.get()));
    finish_step();
    sampling_.collect(out);
  }

  // Queues one step's upload and forward pass on the stream (logits left in ws_.logits).
  void launch_step(const ForwardBatch& batch) {
    batch.validate(config_.vocab_size, num_pages_, page_size_);
    stem_stats_ = {};
    // Stem's host part reads the step's host metadata, so a step with Stem blocks runs eagerly
    // (only a one-row last chunk could otherwise look like a decode step).
    // The step's Stem plan is made once here and used by every sparse layer.
    const std::optional<cuda::StemStep> stem = plan_stem(batch);
    const GraphKey key = stem ? GraphKey{} : graph_key_for(batch, options_.graph_batch_sizes);
    StepLayout layout =
        key.batch ? StepLayout::make(key.batch, key.batch, key.pages, key.batch)
                  : StepLayout::make(batch.num_tokens(), batch.num_seqs(), batch.max_pages,
                                     static_cast<int64_t>(batch.logit_rows.size()));
    // FP8 KV cache, eager steps: the pages prefill and Stem read are staged in bf16 at each layer
    // (sequences with more rows than the decode kernel takes, and Stem's sequences); the rest
    // read the codes. The engine's steps fit the staging reserved at load (max_prefill_context);
    // a caller that passes more (a benchmark's batch of long prompts) grows it here, outside the
    // memory the pool was sized around.
    cpu::KvStagePlan stage_plan;
    if (kv_fp8_ && !key.batch) {
      stage_plan = cpu::stage_kv_pages(batch.page_table, batch.max_pages, batch.kv_lens, batch.query_start,
                                       page_size_,
                                       cuda::decode_max_rows(config_.num_attention_heads, config_.num_key_value_heads),
                                       batch.stem);
      layout = layout.with_stage(static_cast<int64_t>(stage_plan.pages.size()));
      ws_.grow_stage(config_, layout.stage_pages, page_size_, stream_.get());
    }
    ensure_workspace(layout.tokens, layout.rows, layout.total);
    fill_step(batch, layout, ws_.meta_host.as<int32_t>());
    if (kv_fp8_ && !key.batch) {
      fill_stage(stage_plan, layout, ws_.meta_host.as<int32_t>());
      auto meta = [this](int64_t at) { return ws_.meta.bytes_ptr(static_cast<size_t>(at) * 4); };
      const int64_t Hk = config_.num_key_value_heads, D = config_.head_dim;
      kv_stage_.k = TensorView(ws_.stage_k.get(), DType::BF16, {ws_.stage_pages, page_size_, Hk, D});
      kv_stage_.v = TensorView(ws_.stage_v.get(), DType::BF16, {ws_.stage_pages, page_size_, Hk, D});
      kv_stage_.pages = TensorView(meta(layout.stage_pages_at), DType::I32, {layout.stage_pages});
      kv_stage_.page_table = TensorView(meta(layout.stage_table_at), DType::I32, {layout.seqs, layout.max_pages});
      kv_stage_.unstaged = TensorView(meta(layout.unstaged_at), DType::I32, {layout.seqs});
      kv_stage_.any_unstaged =
          std::any_of(stage_plan.unstaged.begin(), stage_plan.unstaged.end(), [](int32_t u) { return u != 0; });
    }
    // Rows [0, R) of the final hidden states are the logit rows already when the batch asks for
    // its first R rows in order (every decode step; a prompt scored at every position).
    bool gather = false;
    for (size_t r = 0; r < batch.logit_rows.size(); ++r) gather |= batch.logit_rows[r] != static_cast<int32_t>(r);

    cudaStream_t s = stream_.get();
    CUDA_CHECK(cudaEventRecord(start_.get(), s));
    CUDA_CHECK(cudaMemcpyAsync(ws_.meta.get(), ws_.meta_host.as<int32_t>(), static_cast<size_t>(layout.total) * 4,
                               cudaMemcpyHostToDevice, s));
    profile_.begin(options_.profile && !key.batch, s);  // graph steps are not profiled
    if (key.batch) {
      auto it = graphs_.find(key);
      if (it != graphs_.end()) {
        CUDA_CHECK(cudaGraphLaunch(it->second.get(), s));
        ++stats_.graph_replays;
      } else {
        // First step of this shape: run it eagerly (which also creates the GEMM plans and kernel
        // settings capture must not), then capture the same launches for the steps to come.
        run_step(layout, false, true);
        graphs_.emplace(key, capture(layout));
        ++stats_.graphs_captured;
      }
    } else {
      if (stem) CUDA_CHECK(cudaMemsetAsync(stem_skipped_.get(), 0, sizeof(long long), s));
      run_step(layout, gather, false, stem ? &*stem : nullptr);
      if (stem)
        CUDA_CHECK(cudaMemcpyAsync(stem_skipped_host_.as<long long>(), stem_skipped_.get(), sizeof(long long),
                                   cudaMemcpyDeviceToHost, s));
      count_skipped_ = stem.has_value();
      ++stats_.eager_steps;
    }
  }

  // Waits for the step (and the copies queued after it) and reads its timings (stop_ recorded).
  void finish_step() {
    cudaStream_t s = stream_.get();
    CUDA_CHECK(cudaStreamSynchronize(s));
    CUDA_CHECK(cudaEventElapsedTime(&stats_.last_step_device_ms, start_.get(), stop_.get()));
    profile_.collect();
    if (count_skipped_) stem_stats_.skipped_key_blocks = *stem_skipped_host_.as<long long>();
    count_skipped_ = false;
  }

  // The step's Stem plan when it has a sparse query block (then the layers stem_layer_sparse names
  // go through cuda::stem_prefill with it): the policy classifies the step's query blocks once
  // (models/stem_policy.h), the planner lays them out and uploads them once. Counts its blocks for
  // last_stem_stats.
  std::optional<cuda::StemStep> plan_stem(const ForwardBatch& b) {
    if (!b.any_stem()) return std::nullopt;
    const ModelConfig& c = config_;
    const std::vector<int32_t> stem_lens = b.stem_prompt_lens();
    const std::vector<StemQueryBlock> blocks =
        stem_query_blocks(b.kv_lens, b.query_start, stem_lens, c.sliding_window, stem_);
    cuda::StemStep step = cuda::stem_step({b.kv_lens, b.query_start, blocks}, c.num_attention_heads,
                                          c.num_key_value_heads, c.head_dim, stem_, stream_.get());
    if (step.dense) return std::nullopt;
    int64_t sparse = 0, causal = 0;
    for (const StemQueryBlock& q : step.plan.blocks())
      if (q.sparse) ++sparse, causal += int64_t{q.block} + 1;
    int64_t layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) layers += stem_layer_sparse(stem_, l);
    stem_stats_.sparse_blocks = sparse * layers;
    stem_stats_.causal_key_blocks = causal * c.num_attention_heads * layers;
    return step;
  }

  // Grows the step buffers to a step of this shape. Captured graphs hold the old addresses, so a
  // growth drops them (they are captured again on next use).
  void ensure_workspace(int64_t tokens, int64_t rows, int64_t meta_ints) {
    if (ws_.grow(config_, tokens, rows, meta_ints, stream_.get())) graphs_.clear();
  }

  // The forward pass (models/llama.h) over the metadata already in ws_.meta, as launches on the
  // stream: nothing here reads the device or the batch's values, so it can be captured into a
  // graph. decode_only and stem (the step's Stem plan, made once by plan_stem): the step's routing
  // (CudaOps::begin_step).
  void run_step(const StepLayout& l, bool gather, bool decode_only, const cuda::StemStep* stem = nullptr) {
    LlamaStep step = ws_.step(config_, l);
    step.gather = gather;
    step.stem = stem != nullptr;
    ops_.begin_step(decode_only, stem, &stem_, static_cast<long long*>(stem_skipped_.get()));
    ops_.set_kv_stage(kv_fp8_ && !decode_only ? &kv_stage_ : nullptr);
    ops_.set_fp8_buffers(ws_.fp8_codes.get(), static_cast<float*>(ws_.fp8_scales.get()), ws_.tokens,
                         CudaWorkspace::fp8_width(config_));
    llama_forward(config_, weights_, kv_layers_, stem_, step, ops_);
  }

  cudabk::GraphExec capture(const StepLayout& l) {
    cudaStream_t s = stream_.get();
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      run_step(l, false, true);
    } catch (...) {
      cudaStreamEndCapture(s, &graph);  // leave the stream usable; the launch error is what matters
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(err);
    return cudabk::GraphExec(exec);
  }

  // Declared first so that it goes last: everything below may still have work queued on it.
  cudabk::Stream stream_;
  ModelConfig config_;
  CudaBackendOptions options_;
  int32_t page_size_;
  StemSettings stem_;
  StemStepStats stem_stats_;
  int64_t num_pages_ = 0;
  int64_t max_prefill_context_ = 0;  // FP8 KV cache: the staging reserved at load, in tokens
  size_t kv_bytes_per_token_ = 0;
  bool kv_fp8_ = false;           // --kv-cache-dtype fp8
  CudaOps::KvStage kv_stage_;     // FP8: the eager step's staging (views of ws_)
  CudaWeights weights_;
  cuda::GemmContext gemm_;
  CudaWorkspace ws_;
  DeviceMemory kv_;
  KvLayers kv_layers_;  // views of kv_, per layer
  std::map<GraphKey, cudabk::GraphExec> graphs_;
  cudabk::Event start_, stop_;
  CudaBackendStats stats_;
  StepProfile profile_;
  CudaOps ops_{gemm_, stream_.get(), profile_};
  CudaSampling sampling_;
  DeviceMemory scores_;                // forward_token_logprobs: targets, logprobs, argmax
  // The step's skipped (query block, head, key block) triples, summed on the device by the Stem
  // layers, and its copy back.
  DeviceMemory stem_skipped_{sizeof(long long), "Stem counts"};
  cudabk::PinnedMemory stem_skipped_host_{sizeof(long long)};
  bool count_skipped_ = false;
};

}  // namespace

std::unique_ptr<CudaModelBackend> make_cuda_model_backend(const ModelConfig& config, const WeightStore* weights,
                                                          const BackendOptions& options,
                                                          const CudaBackendOptions& cuda_options) {
  return std::make_unique<CudaBackend>(config, weights, options, cuda_options);
}

std::unique_ptr<ModelBackend> make_cuda_backend(const ModelConfig& config, const WeightStore* weights,
                                                const BackendOptions& options) {
  return make_cuda_model_backend(config, weights, options);
}

}  // namespace stem
