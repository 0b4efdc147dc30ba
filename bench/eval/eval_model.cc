#include "bench/eval/eval_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "kernels/check.h"
#ifdef STEM_HAVE_CUDA
#include "models/cuda/backend.h"
#endif

namespace stem::eval {

namespace {

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? std::nan("") : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Routes a backend's ops through a decorator while it lives.
class Decorated {
 public:
  Decorated(ModelBackend& backend, ForwardingOps& ops) : backend_(backend) { backend_.set_op_decorator(&ops); }
  ~Decorated() { backend_.set_op_decorator(nullptr); }
  Decorated(const Decorated&) = delete;
  Decorated& operator=(const Decorated&) = delete;

 private:
  ModelBackend& backend_;
};

}  // namespace

EvalModel::EvalModel(const std::filesystem::path& dir, const std::string& device, int64_t max_tokens,
                     int64_t max_batch, const std::string& quantization, const std::string& kv_cache_dtype)
    : device_(device), config_(load_model_config(dir)), weights_(dir), tokenizer_(load_tokenizer(dir)),
      max_tokens_(max_tokens), max_batch_(max_batch) {
  STEM_CHECK(max_tokens > 0 && max_tokens <= config_.max_position_embeddings, dir.string(), ": the evaluation needs ",
             max_tokens, " positions, the model has ", config_.max_position_embeddings,
             " (max_position_embeddings); use shorter lengths");
  STEM_CHECK(max_batch >= 1, "EvalModel: max_batch must be at least 1");
  template_.emplace(load_chat_template(dir));
  pages_per_seq_ = (max_tokens_ + page_size_ - 1) / page_size_ + 1;
  BackendOptions o;
  o.device = device_;
  o.page_size = page_size_;
  o.num_pages = pages_per_seq_ * max_batch_;
  o.quantization = quantization;
  o.kv_cache_dtype = kv_cache_dtype;
#ifdef STEM_HAVE_CUDA
  if (device_ == "cuda") {
    CudaBackendOptions co;
    co.reserve_step_tokens = std::min<int64_t>(max_tokens_, 8192);
    auto cuda = make_cuda_model_backend(config_, &weights_, o, co);
    cuda_ = cuda.get();
    backend_ = std::move(cuda);
  }
#endif
  if (!backend_) backend_ = make_backend(config_, &weights_, o);
}

EvalModel::~EvalModel() = default;

std::string EvalModel::chat(const std::string& user) const {
  ChatTemplateInputs in;
  in.messages = nlohmann::ordered_json::array({{{"role", "user"}, {"content", user}}});
  in.add_generation_prompt = true;
  return template_->render(in);
}

void EvalModel::use(const Method& m) {
  // Dense methods never mark a sequence as Stem, so the settings are left as they are.
  if (m.sparse) backend_->set_stem_settings(m.settings);
  method_ = m;
}

ForwardBatch EvalModel::sequence_step(std::span<const int32_t> tokens, int64_t start, int64_t seq) const {
  // Sequence `seq` owns pages [seq · pages_per_seq, ...) in order, so position p sits at slot
  // first_page · page_size + p.
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  const int64_t T = static_cast<int64_t>(tokens.size()), base = seq * pages_per_seq_ * page_size_;
  for (int64_t i = 0; i < T; ++i) {
    b.positions.push_back(static_cast<int32_t>(start + i));
    b.slots.push_back(static_cast<int32_t>(base + start + i));
  }
  b.query_start = {0, static_cast<int32_t>(T)};
  b.kv_lens = {static_cast<int32_t>(start + T)};
  b.max_pages = static_cast<int32_t>(pages_per_seq_);
  for (int64_t p = 0; p < pages_per_seq_; ++p) b.page_table.push_back(static_cast<int32_t>(seq * pages_per_seq_ + p));
  return b;
}

double EvalModel::density(int64_t tokens, int64_t skipped) const {
  if (!method_->sparse) return 1.0;
  const StemSettings& st = method_->settings;
  const int64_t layers = std::max<int64_t>(0, config_.num_hidden_layers - st.dense_layers);
  const int64_t nb = (tokens + st.block_size - 1) / st.block_size;
  const double causal = static_cast<double>(nb * (nb + 1) / 2 * config_.num_attention_heads * layers);
  return causal > 0 ? 1.0 - static_cast<double>(skipped) / causal : 1.0;
}

PrefillResult EvalModel::prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& rows,
                                 ForwardingOps* ops) {
  STEM_CHECK(method_.has_value(), "EvalModel: call use(method) first");
  const int64_t T = static_cast<int64_t>(ids.size());
  STEM_CHECK(T > 0 && T <= max_tokens_, "EvalModel: a prompt of ", T, " tokens (at most ", max_tokens_, ")");
  ForwardBatch b = sequence_step(ids, 0, 0);
  b.logit_rows = rows;
  if (method_->sparse) {
    b.prompt_lens = {static_cast<int32_t>(T)};
    b.stem = {1};
  }
  PrefillResult r;
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<Decorated> decorated;
  if (ops) decorated.emplace(*backend_, *ops);
  backend_->forward(b, r.logits);
  r.seconds = since(t0);
  r.density = density(T, backend_->last_stem_stats().skipped_key_blocks);
  return r;
}

std::vector<int32_t> EvalModel::greedy(const std::vector<int32_t>& ids, int max_new, double* density) {
  const std::vector<Generation> g = greedy_batch({std::span<const int32_t>(ids)}, {max_new}, StopRule::Eos);
  if (density) *density = g[0].density;
  return g[0].tokens;
}

std::vector<Generation> EvalModel::greedy_batch(const std::vector<std::span<const int32_t>>& prompts,
                                                const std::vector<int>& max_new, StopRule stop) {
  STEM_CHECK(method_.has_value(), "EvalModel: call use(method) first");
  const int64_t S = static_cast<int64_t>(prompts.size());
  STEM_CHECK(S <= max_batch_ && max_new.size() == prompts.size(), "EvalModel: ", S, " prompts, at most ", max_batch_,
             " at once, each with its max_new");
  std::vector<Generation> out(static_cast<size_t>(S));
  std::vector<int64_t> lens(static_cast<size_t>(S));
  TokenScores scores;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t T = static_cast<int64_t>(prompts[s].size());
    STEM_CHECK(T > 0 && T + max_new[s] <= max_tokens_, "EvalModel: ", T, " + ", max_new[s], " tokens exceed ",
               max_tokens_);
    ForwardBatch b = sequence_step(prompts[s], 0, s);
    b.logit_rows = {static_cast<int32_t>(T - 1)};
    if (method_->sparse) {
      b.prompt_lens = {static_cast<int32_t>(T)};
      b.stem = {1};
    }
    const auto t0 = std::chrono::steady_clock::now();
    backend_->forward_token_logprobs(b, {-1}, scores);
    out[s].prefill_seconds = since(t0);
    out[s].density = density(T, backend_->last_stem_stats().skipped_key_blocks);
    out[s].tokens.push_back(scores.argmax[0]);
    lens[s] = T;
  }
  auto done = [&](int64_t s) {
    const Generation& g = out[s];
    if (static_cast<int>(g.tokens.size()) >= max_new[s] || tokenizer_->is_eos(g.tokens.back())) return true;
    if (stop == StopRule::Line) {
      // A line with something on it, then its newline.
      const std::string text = tokenizer_->decode(g.tokens, true);
      const size_t first = text.find_first_not_of(" \t\r\n");
      return first != std::string::npos && text.find('\n', first) != std::string::npos;
    }
    return false;
  };
  for (;;) {
    std::vector<int64_t> live;
    for (int64_t s = 0; s < S; ++s)
      if (!done(s)) live.push_back(s);
    if (live.empty()) break;
    // One decode row per live sequence (dense: decode never goes through Stem).
    ForwardBatch b;
    b.max_pages = static_cast<int32_t>(pages_per_seq_);
    b.query_start = {0};
    for (int64_t s : live) {
      const int64_t pos = lens[s] + static_cast<int64_t>(out[s].tokens.size()) - 1;
      b.tokens.push_back(out[s].tokens.back());
      b.positions.push_back(static_cast<int32_t>(pos));
      b.slots.push_back(static_cast<int32_t>(s * pages_per_seq_ * page_size_ + pos));
      b.query_start.push_back(static_cast<int32_t>(b.tokens.size()));
      b.kv_lens.push_back(static_cast<int32_t>(pos + 1));
      for (int64_t p = 0; p < pages_per_seq_; ++p) b.page_table.push_back(static_cast<int32_t>(s * pages_per_seq_ + p));
      b.logit_rows.push_back(static_cast<int32_t>(b.logit_rows.size()));
    }
    backend_->forward_token_logprobs(b, std::vector<int32_t>(live.size(), -1), scores);
    for (size_t r = 0; r < live.size(); ++r) out[live[r]].tokens.push_back(scores.argmax[r]);
  }
  for (Generation& g : out) g.text = tokenizer_->decode(g.tokens, true);
  return out;
}

SequenceScore EvalModel::score(std::span<const int32_t> ids, int64_t chunk) {
  STEM_CHECK(method_.has_value(), "EvalModel: call use(method) first");
  const int64_t T = static_cast<int64_t>(ids.size());
  STEM_CHECK(T > 1 && T <= max_tokens_, "EvalModel: a document of ", T, " tokens (at most ", max_tokens_, ")");
  STEM_CHECK(chunk >= 0 && chunk % method_->settings.block_size == 0, "EvalModel: chunks of ", chunk,
             " tokens; they must be a multiple of the Stem block (", method_->settings.block_size, ")");
  if (chunk == 0) chunk = T;
  SequenceScore r;
  int64_t skipped = 0;
  TokenScores scores;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < T; begin += chunk) {
    const int64_t end = std::min(T, begin + chunk);
    ForwardBatch b = sequence_step(ids.subspan(begin, end - begin), begin, 0);
    std::vector<int32_t> targets;
    for (int64_t t = begin; t < end; ++t) {
      b.logit_rows.push_back(static_cast<int32_t>(t - begin));
      targets.push_back(t + 1 < T ? ids[t + 1] : -1);
    }
    if (method_->sparse) {
      b.prompt_lens = {static_cast<int32_t>(T)};
      b.stem = {1};
    }
    backend_->forward_token_logprobs(b, targets, scores);
    skipped += backend_->last_stem_stats().skipped_key_blocks;
    for (int64_t t = begin; t < end && t + 1 < T; ++t) {
      r.nll_sum -= scores.logprob[t - begin];
      r.correct += scores.argmax[t - begin] == ids[t + 1];
      ++r.count;
    }
  }
  r.seconds = since(t0);
  r.density = density(T, skipped);
  return r;
}

PrefillTiming EvalModel::timed_prefill(std::span<const int32_t> ids, int reps) {
  STEM_CHECK(method_.has_value(), "EvalModel: call use(method) first");
  const std::vector<int32_t> v(ids.begin(), ids.end());
  const std::vector<int32_t> last = {static_cast<int32_t>(v.size() - 1)};
  PrefillTiming t;
  t.density = prefill(v, last).density;  // warm-up: workspace growth, GEMM plans
  std::vector<double> step, attention;
  for (int r = 0; r < reps; ++r) {
#ifdef STEM_HAVE_CUDA
    if (cuda_) {
      cuda_->clear_profile();
      cuda_->set_profiling(true);
      prefill(v, last);
      cuda_->set_profiling(false);
      double ms = 0;
      for (const auto& [op, total] : cuda_->profile())
        if (op.rfind("attention", 0) == 0) ms += total;
      attention.push_back(ms);
      step.push_back(cuda_->stats().last_step_device_ms);
      continue;
    }
#endif
    step.push_back(prefill(v, last).seconds * 1e3);
  }
  t.step_ms = median(step);
  t.attention_ms = median(attention);
  return t;
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
