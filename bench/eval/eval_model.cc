#include "bench/eval/eval_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "kernels/check.h"

namespace stem::eval {

EvalModel::EvalModel(const std::filesystem::path& dir, const std::string& device, int64_t max_tokens)
    : device_(device), config_(load_model_config(dir)), weights_(dir), tokenizer_(load_tokenizer(dir)),
      max_tokens_(max_tokens) {
  STEM_CHECK(max_tokens > 0 && max_tokens <= config_.max_position_embeddings, dir.string(), ": the evaluation needs ",
             max_tokens, " positions, the model has ", config_.max_position_embeddings,
             " (max_position_embeddings); use shorter lengths");
  template_.emplace(load_chat_template(dir));
}

std::string EvalModel::chat(const std::string& user) const {
  ChatTemplateInputs in;
  in.messages = nlohmann::ordered_json::array({{{"role", "user"}, {"content", user}}});
  in.add_generation_prompt = true;
  return template_->render(in);
}

void EvalModel::use(const Method& m) {
  // Dense methods never mark a sequence as Stem, so any backend serves them.
  const std::string key = m.sparse ? to_json(m)["settings"].dump() : std::string();
  method_ = m;
  if (backend_ && (key.empty() || key == backend_key_)) return;
  backend_.reset();  // free the old KV cache first
  BackendOptions o;
  o.device = device_;
  o.page_size = page_size_;
  o.num_pages = (max_tokens_ + page_size_ - 1) / page_size_ + 1;
  o.stem = m.sparse ? m.settings : StemSettings{};
  backend_ = make_backend(config_, &weights_, o);
  backend_key_ = key;
}

namespace {

// One sequence on pages 0, 1, ... in order, so that a position's slot is the position.
ForwardBatch one_sequence(const std::vector<int32_t>& tokens, int64_t start, int64_t num_pages) {
  ForwardBatch b;
  b.tokens = tokens;
  const int64_t T = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < T; ++i) {
    b.positions.push_back(static_cast<int32_t>(start + i));
    b.slots.push_back(static_cast<int32_t>(start + i));
  }
  b.query_start = {0, static_cast<int32_t>(T)};
  b.kv_lens = {static_cast<int32_t>(start + T)};
  b.max_pages = static_cast<int32_t>(num_pages);
  for (int32_t p = 0; p < b.max_pages; ++p) b.page_table.push_back(p);
  return b;
}

}  // namespace

PrefillResult EvalModel::prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& rows) {
  STEM_CHECK(method_.has_value(), "EvalModel: call use(method) first");
  const int64_t T = static_cast<int64_t>(ids.size());
  STEM_CHECK(T > 0 && T <= max_tokens_, "EvalModel: a prompt of ", T, " tokens (at most ", max_tokens_, ")");
  ForwardBatch b = one_sequence(ids, 0, backend_->num_pages());
  b.logit_rows = rows;
  if (method_->sparse) {
    b.prompt_lens = {static_cast<int32_t>(T)};
    b.stem = {1};
  }
  PrefillResult r;
  const auto t0 = std::chrono::steady_clock::now();
  backend_->forward(b, r.logits);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Density over the sparse layers: the causal triples of every query block, less those skipped.
  const StemSettings& st = method_->settings;
  const int64_t layers = std::max<int64_t>(0, config_.num_hidden_layers - st.dense_layers);
  const int64_t nb = (T + st.block_size - 1) / st.block_size;
  const double causal = static_cast<double>(nb * (nb + 1) / 2 * config_.num_attention_heads * layers);
  const StemStepStats stats = backend_->last_stem_stats();
  if (!method_->sparse)
    r.density = 1.0;
  else if (device_ == "cpu" || stats.sparse_blocks == 0)
    r.density = causal > 0 ? 1.0 - static_cast<double>(stats.skipped_key_blocks) / causal : 1.0;
  else
    r.density = std::numeric_limits<double>::quiet_NaN();
  return r;
}

std::vector<int32_t> EvalModel::greedy(const std::vector<int32_t>& ids, int max_new, double* density) {
  const int64_t T = static_cast<int64_t>(ids.size());
  STEM_CHECK(T + max_new <= max_tokens_, "EvalModel: ", T, " + ", max_new, " tokens exceed ", max_tokens_);
  PrefillResult r = prefill(ids, {static_cast<int32_t>(T - 1)});
  if (density) *density = r.density;
  auto argmax = [&](const Tensor& logits) {
    const float* x = logits.ptr<float>();
    return static_cast<int32_t>(std::max_element(x, x + config_.vocab_size) - x);
  };
  std::vector<int32_t> out = {argmax(r.logits)};
  Tensor logits;
  while (static_cast<int>(out.size()) < max_new && !tokenizer_->is_eos(out.back())) {
    ForwardBatch b = one_sequence({out.back()}, T + static_cast<int64_t>(out.size()) - 1, backend_->num_pages());
    b.logit_rows = {0};
    backend_->forward(b, logits);
    out.push_back(argmax(logits));
  }
  return out;
}

std::vector<double> next_token_nll(const Tensor& logits, const std::vector<int32_t>& ids) {
  const int64_t rows = logits.shape()[0], vocab = logits.shape()[1];
  STEM_CHECK(rows <= static_cast<int64_t>(ids.size()), "next_token_nll: ", rows, " rows for ", ids.size(), " ids");
  std::vector<double> nll(static_cast<size_t>(std::max<int64_t>(0, rows - 1)));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows - 1; ++t) {
    const float* x = logits.ptr<float>() + t * vocab;
    const double top = *std::max_element(x, x + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double{x[v]} - top);
    nll[t] = top + std::log(sum) - double{x[ids[t + 1]]};
  }
  return nll;
}

}  // namespace stem::eval
