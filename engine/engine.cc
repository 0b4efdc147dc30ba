#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "text/chat_template.h"
#include "engine/engine_sequence.h"
#include "engine/stop_checker.h"
#include "text/tokenizer.h"
#include "base/weights.h"

namespace stem {

namespace {

// --kv-cache-dtype fp8 on a model whose key biases are large (models/backend.h, large_key_biases):
// those layers' K/V stay unquantized, said in the log with the layers and their largest |bias|.
std::vector<int64_t> unquantized_kv_layers(const ModelConfig& config, const WeightStore& weights, float limit) {
  const std::vector<LargeKeyBias> large = large_key_biases(config, weights, limit);
  std::vector<int64_t> layers;
  std::string named;
  for (const LargeKeyBias& b : large) {
    layers.push_back(b.layer);
    named += (named.empty() ? "" : ", ") + fmt::format("{} ({:.3g})", b.layer, b.max_abs);
  }
  if (!layers.empty())
    spdlog::info("--kv-cache-dtype fp8: layers {} keep their K/V unquantized: their key biases (largest |bias| in "
                 "parentheses) are large against the token's own part of a key, which E4M3's 3 significant bits "
                 "would lose (Qwen2.5-Coder-1.5B with every layer in FP8: RULER-style 32K average under 20, against "
                 "58.4 with a bf16 cache)",
                 named);
  return layers;
}

}  // namespace

namespace fs = std::filesystem;

int64_t default_max_num_batched_tokens(const std::string& device) { return device == "cuda" ? 8192 : 512; }

Engine::Engine(const fs::path& model_dir, const EngineOptions& given)
    : model_dir_(model_dir), options_(given), seed_state_(std::random_device{}()) {
  if (options_.max_num_batched_tokens <= 0)
    options_.max_num_batched_tokens = default_max_num_batched_tokens(options_.device);
  const EngineOptions& options = options_;
  if (!fs::is_directory(model_dir)) throw Error(model_dir.string() + ": model folder does not exist");
  check_stem_settings(options.stem);  // before minutes of weight loading
  kv_cache_fp8(options.kv_cache_dtype);  // refuses an unknown dtype, as early
  config_ = load_model_config(model_dir);
  max_model_len_ = options.max_model_len > 0 ? std::min(options.max_model_len, config_.max_position_embeddings)
                                             : config_.max_position_embeddings;
  const int64_t kv_tokens = options.kv_cache_tokens > 0 ? options.kv_cache_tokens : max_model_len_;
  BackendOptions bo;
  bo.device = options.device;
  bo.gpu_memory_fraction = options.gpu_memory_fraction;
  bo.quantization = options.quantization;
  bo.kv_cache_dtype = options.kv_cache_dtype;
  bo.max_model_len = max_model_len_;
  bo.page_size = options.page_size;
  bo.stem = options.stem;
  // On the GPU the pool fills the memory left after the weights unless a size is given.
  const bool sized = options.kv_cache_tokens > 0 || options.device == "cpu";
  bo.num_pages = sized ? (kv_tokens + options.page_size - 1) / options.page_size : 0;
  if (options.dummy_weights) {
    backend_ = make_backend(config_, nullptr, bo);
  } else {
    WeightStore weights(model_dir);
    if (kv_cache_fp8(options.kv_cache_dtype))
      bo.kv_unquantized_layers = unquantized_kv_layers(config_, weights, options.kv_fp8_key_bias_limit);
    backend_ = make_backend(config_, &weights, bo);
  }
  kv_ = std::make_unique<PageAllocator>(backend_->num_pages(), backend_->page_size(), options.enable_prefix_caching);
  // Everything one engine's pages depend on besides their tokens: its model folder and backend.
  model_identity_ = model_identity(model_dir.string(), backend_->name(), options.dummy_weights, options.quantization,
                                   kv_cache_fp8(options.kv_cache_dtype));
  stem_kv_kind_ = stem_kv_kind(options.stem);
  if (kv_capacity_tokens() < max_model_len_) {
    // A sequence that can never fit would stall the scheduler; shorten the context instead.
    spdlog::warn("the KV cache holds {} tokens, less than max_model_len {}: max_model_len is now {}",
                 kv_capacity_tokens(), max_model_len_, kv_capacity_tokens());
    max_model_len_ = kv_capacity_tokens();
  }
  if (options.max_num_batched_tokens < options.max_num_seqs)
    spdlog::warn("max_num_batched_tokens {} < max_num_seqs {}: when every sequence decodes, the newest ones wait",
                 options.max_num_batched_tokens, options.max_num_seqs);
  scheduler_ = std::make_unique<Scheduler>(
      *kv_, SchedulerOptions{options.max_num_batched_tokens, options.max_num_seqs, backend_->max_prefill_context()});

  eos_ids_ = config_.eos_token_ids;
  if (options.load_tokenizer) {
    tokenizer_ = load_tokenizer(model_dir);
    // The tokenizer's EOS ids include generation_config.json's (Llama 3 names several).
    for (int32_t id : tokenizer_->eos_ids())
      if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
    try {
      chat_template_ = std::make_unique<ModelChatTemplate>(load_chat_template(model_dir));
    } catch (const ChatTemplateError&) {
      throw;  // a template that does not parse is a broken model folder
    } catch (const Error& e) {
      spdlog::warn("no chat template: {}", e.what());
    }
  }
  spdlog::info("loaded {} on {} ({}, {} layers, hidden {}, {} q / {} kv heads, vocab {}), KV cache {} pages of {} tokens",
               model_dir.string(), backend_->name(), config_.architecture, config_.num_hidden_layers, config_.hidden_size,
               config_.num_attention_heads, config_.num_key_value_heads, config_.vocab_size, kv_->num_pages(),
               kv_->page_size());
  if (options.sparse_prefill == SparsePrefill::Stem)
    spdlog::info("prefill: Stem sparse attention from {} prompt tokens ({}, lambda {}, {} sink / {} window blocks, "
                 "layers < {} dense); requests may ask for dense",
                 options.stem.min_prompt_len, stem_selection_name(options.stem), options.stem.lambda,
                 options.stem.sink_blocks, options.stem.window_blocks, options.stem.dense_layers);
  else
    spdlog::info("prefill: dense attention; requests may ask for Stem");
  spdlog::info("prefix caching: {}", options.enable_prefix_caching ? "on" : "off");
}

Engine::~Engine() = default;

const Tokenizer& Engine::tokenizer() const {
  if (!tokenizer_) throw Error(model_dir_.string() + ": this model has no tokenizer loaded");
  return *tokenizer_;
}

std::string Engine::apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
  if (!chat_template_) throw Error(model_dir_.string() + ": the model has no chat template");
  ChatTemplateInputs in;
  in.messages = messages;
  in.add_generation_prompt = add_generation_prompt;
  return chat_template_->render(in);
}

void Engine::run_prefill_chunk(const std::vector<int32_t>& tokens, int64_t start_pos, std::vector<int32_t>& pages,
                               Tensor& logits) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  STEM_CHECK(kv_->reserve(pages, start_pos + T), "KV cache out of pages");
  ForwardBatch b;
  b.tokens = tokens;
  for (int64_t i = 0; i < T; ++i) {
    b.positions.push_back(static_cast<int32_t>(start_pos + i));
    b.slots.push_back(kv_->slot(pages, start_pos + i));
    b.logit_rows.push_back(static_cast<int32_t>(i));
  }
  b.query_start = {0, static_cast<int32_t>(T)};
  b.kv_lens = {static_cast<int32_t>(start_pos + T)};
  b.page_table = pages;
  b.max_pages = static_cast<int32_t>(pages.size());
  backend_->forward(b, logits);
}

// Scoring runs outside the scheduler: it needs every position's logits, generation only the last.
Tensor Engine::score(const std::vector<int32_t>& ids) {
  STEM_CHECK(!ids.empty() && static_cast<int64_t>(ids.size()) <= max_model_len_, "score needs 1..max_model_len ids");
  const int64_t n = static_cast<int64_t>(ids.size()), chunk = std::max<int64_t>(1, options_.max_num_batched_tokens);
  std::vector<int32_t> pages;
  struct Release {
    PageAllocator& kv;
    std::vector<int32_t>& pages;
    ~Release() { kv.release(pages); }
  } release{*kv_, pages};
  Tensor all = Tensor::f32({n, config_.vocab_size}), part;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    run_prefill_chunk(std::vector<int32_t>(ids.begin() + begin, ids.begin() + end), begin, pages, part);
    std::copy_n(part.ptr<float>(), part.numel(), all.ptr<float>() + begin * config_.vocab_size);
  }
  return all;
}

}  // namespace stem
