#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/chat_template.h"
#include "engine/stop_checker.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

namespace stem {

namespace fs = std::filesystem;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Stop: return "stop";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

namespace {
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

Engine::Engine(const fs::path& model_dir, const EngineOptions& options)
    : model_dir_(model_dir), options_(options), seed_state_(std::random_device{}()) {
  if (!fs::is_directory(model_dir)) throw Error(model_dir.string() + ": model folder does not exist");
  config_ = load_model_config(model_dir);
  max_model_len_ = options.max_model_len > 0 ? std::min(options.max_model_len, config_.max_position_embeddings)
                                             : config_.max_position_embeddings;
  const int64_t kv_tokens = options.kv_cache_tokens > 0 ? options.kv_cache_tokens : max_model_len_;
  BackendOptions bo;
  bo.device = options.device;
  bo.gpu_memory_fraction = options.gpu_memory_fraction;
  bo.page_size = options.page_size;
  // On the GPU the pool fills the memory left after the weights unless a size is given.
  const bool sized = options.kv_cache_tokens > 0 || options.device == "cpu";
  bo.num_pages = sized ? (kv_tokens + options.page_size - 1) / options.page_size : 0;
  if (options.dummy_weights) {
    backend_ = make_backend(config_, nullptr, bo);
  } else {
    WeightStore weights(model_dir);
    backend_ = make_backend(config_, &weights, bo);
  }
  kv_ = std::make_unique<PageAllocator>(backend_->num_pages(), backend_->page_size());

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
}

Engine::~Engine() = default;

const Tokenizer& Engine::tokenizer() const {
  if (!tokenizer_) throw Error(model_dir_.string() + ": this model has no tokenizer loaded");
  return *tokenizer_;
}

std::string Engine::apply_chat_template(const std::string& messages_json, bool add_generation_prompt) const {
  if (!chat_template_) throw Error(model_dir_.string() + ": the model has no chat template");
  nlohmann::ordered_json messages;
  try {
    messages = nlohmann::ordered_json::parse(messages_json);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(std::string("messages are not valid JSON: ") + e.what());
  }
  ChatTemplateInputs in;
  in.messages = std::move(messages);
  in.add_generation_prompt = add_generation_prompt;
  return chat_template_->render(in);
}

void Engine::step(const std::vector<int32_t>& tokens, int64_t start_pos, std::vector<int32_t>& pages, Tensor& logits,
                  bool all_logits) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  STEM_CHECK(kv_->reserve(pages, start_pos + T), "KV cache out of pages");
  ForwardBatch b;
  b.tokens = tokens;
  for (int64_t i = 0; i < T; ++i) {
    b.positions.push_back(static_cast<int32_t>(start_pos + i));
    b.slots.push_back(kv_->slot(pages, start_pos + i));
  }
  b.query_start = {0, static_cast<int32_t>(T)};
  b.kv_lens = {static_cast<int32_t>(start_pos + T)};
  b.page_table = pages;
  b.max_pages = static_cast<int32_t>(pages.size());
  if (all_logits)
    for (int64_t i = 0; i < T; ++i) b.logit_rows.push_back(static_cast<int32_t>(i));
  else
    b.logit_rows = {static_cast<int32_t>(T - 1)};
  backend_->forward(b, logits);
}

void Engine::prefill(const std::vector<int32_t>& ids, std::vector<int32_t>& pages, Tensor& logits, bool all_logits) {
  const int64_t n = static_cast<int64_t>(ids.size()), chunk = std::max<int64_t>(1, options_.max_num_batched_tokens);
  Tensor all, part;
  if (all_logits) all = Tensor::f32({n, config_.vocab_size});
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    std::vector<int32_t> piece(ids.begin() + begin, ids.begin() + end);
    step(piece, begin, pages, part, all_logits);
    if (all_logits) std::copy_n(part.ptr<float>(), part.numel(), all.ptr<float>() + begin * config_.vocab_size);
  }
  logits = all_logits ? all : part;
}

Tensor Engine::score(const std::vector<int32_t>& ids) {
  STEM_CHECK(!ids.empty() && static_cast<int64_t>(ids.size()) <= max_model_len_, "score needs 1..max_model_len ids");
  std::vector<int32_t> pages;
  Tensor logits;
  try {
    prefill(ids, pages, logits, true);
  } catch (...) {
    kv_->release(pages);
    throw;
  }
  kv_->release(pages);
  return logits;
}

GenerateResult Engine::generate(const GenerateRequest& req, const StreamSink& sink) {
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  if (n == 0) throw Error("the prompt is empty");
  if (n >= max_model_len_)
    throw Error("the prompt has " + std::to_string(n) + " tokens; the model's context is " +
                std::to_string(max_model_len_) + " tokens");
  for (int32_t t : req.prompt)
    if (t < 0 || t >= config_.vocab_size) throw Error("prompt token id " + std::to_string(t) + " is outside the vocabulary");
  req.sampling.validate();
  if (req.stop.max_tokens < 0) throw Error("max_tokens must be >= 0");
  if (!req.stop.stop.empty() && !tokenizer_) throw Error("stop strings need a tokenizer");
  const int64_t max_new = std::min<int64_t>(req.stop.max_tokens, max_model_len_ - n);

  GenerateResult r;
  r.prompt_tokens = n;
  std::vector<int32_t> pages;
  if (!kv_->reserve(pages, n + max_new))
    throw Error("the KV cache holds " + std::to_string(kv_->free_pages() * kv_->page_size()) +
                " free tokens; this request needs " + std::to_string(n + max_new));
  struct Release {
    PageAllocator& kv;
    std::vector<int32_t>& pages;
    ~Release() { kv.release(pages); }
  } release{*kv_, pages};

  Tensor logits;
  if (max_new > 0) prefill(req.prompt, pages, logits, false);
  Sampler sampler(req.sampling, splitmix64(seed_state_));
  std::unique_ptr<IncrementalDetokenizer> detok;
  if (tokenizer_) detok = std::make_unique<IncrementalDetokenizer>(*tokenizer_);
  StopChecker stopper(req.stop.stop);

  auto emit = [&](int32_t token, std::string text, const SampleResult& s) {
    r.text += text;
    if (sink) sink(TokenEvent{token, std::move(text), s});
  };
  for (int64_t i = 0; i < max_new; ++i) {
    if (req.cancelled && req.cancelled->load()) {
      r.finish = FinishReason::Cancelled;
      break;
    }
    const std::span<const float> row(logits.ptr<float>(), config_.vocab_size);
    SampleResult s = sampler.sample(row, req.prompt, r.tokens);
    r.tokens.push_back(s.token);
    r.samples.push_back(s);
    const bool eos = !req.stop.ignore_eos && std::count(eos_ids_.begin(), eos_ids_.end(), s.token);
    const bool stop_token = std::count(req.stop.stop_token_ids.begin(), req.stop.stop_token_ids.end(), s.token);
    const bool last = i + 1 == max_new;
    if (eos || stop_token) {
      // The stop token's own text is not output; what was held back is.
      std::string tail = detok ? stopper.push(detok->flush()) + stopper.flush() : std::string();
      emit(s.token, std::move(tail), s);
      r.finish = FinishReason::Stop;
      r.stop_reason = std::to_string(s.token);
      break;
    }
    std::string text;
    if (detok) {
      std::string piece = detok->push(s.token);
      if (last) piece += detok->flush();
      text = stopper.push(piece);
      if (stopper.stopped()) {
        if (req.stop.include_stop_str) text += stopper.matched();
        emit(s.token, std::move(text), s);
        r.finish = FinishReason::Stop;
        r.stop_reason = stopper.matched();
        break;
      }
      if (last) text += stopper.flush();
    }
    emit(s.token, std::move(text), s);
    if (last) break;
    step({s.token}, n + i, pages, logits, false);
  }
  return r;
}

}  // namespace stem
