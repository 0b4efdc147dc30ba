#include "models/backend.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/weights.h"
#include "kernels/cpu/token_logprob.h"
#include "kernels/cpu/token_mask.h"

namespace stem {

void ForwardBatch::validate(int64_t vocab_size, int64_t num_pages, int32_t page_size) const {
  const int64_t T = num_tokens(), S = num_seqs();
  STEM_CHECK(T > 0 && S > 0, "empty batch");
  STEM_CHECK(static_cast<int64_t>(positions.size()) == T && static_cast<int64_t>(slots.size()) == T,
             "positions/slots must have one entry per token");
  STEM_CHECK(static_cast<int64_t>(query_start.size()) == S + 1 && query_start[0] == 0 && query_start[S] == T,
             "query_start must run from 0 to the token count");
  STEM_CHECK(max_pages >= 0 && static_cast<int64_t>(page_table.size()) == S * max_pages,
             "page_table must be [S, max_pages]");
  for (int32_t t : tokens) STEM_CHECK(t >= 0 && t < vocab_size, "token id ", t, " is outside the vocabulary");
  for (int32_t s : slots) STEM_CHECK(s >= 0 && s < num_pages * page_size, "KV slot ", s, " is outside the pool");
  for (int64_t s = 0; s < S; ++s) {
    STEM_CHECK(query_start[s] <= query_start[s + 1], "query_start must not decrease");
    const int64_t used = (kv_lens[s] + page_size - 1) / page_size;
    STEM_CHECK(kv_lens[s] >= query_start[s + 1] - query_start[s] && used <= max_pages, "sequence ", s,
               " has kv_len ", kv_lens[s], " with ", max_pages, " pages");
    for (int64_t p = 0; p < used; ++p) {
      const int32_t page = page_table[s * max_pages + p];
      STEM_CHECK(page >= 0 && page < num_pages, "page ", page, " is outside the pool");
    }
  }
  for (int32_t r : logit_rows) STEM_CHECK(r >= 0 && r < T, "logit row ", r, " is outside the batch");
  STEM_CHECK(prompt_lens.size() == stem.size() && (stem.empty() || static_cast<int64_t>(stem.size()) == S),
             "prompt_lens and stem must both be empty or have one entry per sequence");
  for (int32_t p : prompt_lens) STEM_CHECK(p >= 0, "prompt length ", p, " is negative");
}

bool ForwardBatch::any_stem() const {
  return std::any_of(stem.begin(), stem.end(), [](uint8_t x) { return x != 0; });
}

std::vector<int32_t> ForwardBatch::stem_prompt_lens() const {
  std::vector<int32_t> lens(static_cast<size_t>(num_seqs()), 0);
  for (size_t s = 0; s < stem.size(); ++s)
    if (stem[s]) lens[s] = prompt_lens[s];
  return lens;
}

void SamplingBatch::add_row(const SamplingRow& row) {
  if (penalty_offsets.empty()) penalty_offsets.push_back(0);
  rows.push_back(row);
  penalty_offsets.push_back(static_cast<int32_t>(penalties.size()));
  mask_of_row.push_back(-1);
}

void SamplingBatch::add_mask(const uint32_t* mask, size_t words) {
  STEM_CHECK(!rows.empty(), "add_mask before the first add_row");
  STEM_CHECK(mask_words_per_row == 0 || static_cast<int64_t>(words) == mask_words_per_row, "token masks of ", words,
             " and ", mask_words_per_row, " words in one step");
  mask_words_per_row = static_cast<int64_t>(words);
  mask_of_row.back() = static_cast<int32_t>(num_masks());
  mask_words.insert(mask_words.end(), mask, mask + words);
}

TensorView SamplingBatch::masks_view() const {
  return TensorView(const_cast<uint32_t*>(mask_words.data()), DType::I32, {num_masks(), mask_words_per_row});
}

TensorView SamplingBatch::mask_of_row_view() const {
  return TensorView(const_cast<int32_t*>(mask_of_row.data()), DType::I32, {num_rows()});
}

void SamplingBatch::add_penalties(const PenaltyToken* tokens, size_t count) {
  STEM_CHECK(!rows.empty(), "add_penalties before the first add_row");
  penalties.insert(penalties.end(), tokens, tokens + count);
  STEM_CHECK(penalties.size() <= static_cast<size_t>(INT32_MAX), "over 2^31 penalty tokens in one step");
  penalty_offsets.back() = static_cast<int32_t>(penalties.size());
}

void SamplingBatch::validate(int64_t logit_rows, int64_t vocab_size) const {
  STEM_CHECK(num_rows() == logit_rows, "sampling has ", num_rows(), " rows for ", logit_rows, " logit rows");
  if (rows.empty()) return;
  STEM_CHECK(penalty_offsets.size() == rows.size() + 1 && penalty_offsets.front() == 0 &&
                 penalty_offsets.back() == static_cast<int32_t>(penalties.size()),
             "penalty_offsets must run from 0 to the penalty count, one entry per row and one more");
  for (size_t r = 0; r < rows.size(); ++r)
    STEM_CHECK(penalty_offsets[r] <= penalty_offsets[r + 1], "penalty_offsets must not decrease");
  for (const PenaltyToken& p : penalties)
    STEM_CHECK(p.id >= 0 && p.id < vocab_size, "penalty token id ", p.id, " is outside the vocabulary");
  STEM_CHECK(mask_of_row.size() == rows.size(), "mask_of_row has ", mask_of_row.size(), " entries for ", rows.size(),
             " rows");
  if (num_masks() > 0)
    STEM_CHECK(mask_words_per_row == (vocab_size + 31) / 32, "token masks of ", mask_words_per_row,
               " words for a vocabulary of ", vocab_size, " (", (vocab_size + 31) / 32, " words)");
}

SamplingInputs SamplingBatch::inputs() const {
  static const int32_t kNoPenalties[1] = {0};
  return {rows.data(), penalty_offsets.empty() ? kNoPenalties : penalty_offsets.data(), penalties.data(),
          num_rows()};
}

void SampledTokens::resize(int64_t rows) {
  tokens.resize(static_cast<size_t>(rows));
  logprobs.resize(static_cast<size_t>(rows));
  top_ids.resize(static_cast<size_t>(rows * kMaxTopLogprobs));
  top_logprobs.resize(static_cast<size_t>(rows * kMaxTopLogprobs));
}

SamplingOutputs SampledTokens::outputs() {
  const auto R = static_cast<int64_t>(tokens.size());
  return {TensorView(tokens.data(), DType::I32, {R}), TensorView(logprobs.data(), DType::F32, {R}),
          TensorView(top_ids.data(), DType::I32, {R, kMaxTopLogprobs}),
          TensorView(top_logprobs.data(), DType::F32, {R, kMaxTopLogprobs})};
}

void ModelBackend::forward_sample(const ForwardBatch& batch, const SamplingBatch& sampling, SampledTokens& out) {
  const auto R = static_cast<int64_t>(batch.logit_rows.size());
  sampling.validate(R, config().vocab_size);
  forward(batch, sample_logits_);
  out.resize(R);
  if (R == 0) return;
  if (sampling.num_masks() > 0)
    cpu::apply_token_mask(sample_logits_.view(), sampling.masks_view(), sampling.mask_of_row_view());
  cpu::sample(out.outputs(), sample_logits_.view(), sampling.inputs(), TensorView());
}

void ModelBackend::forward_sample(const ForwardBatch& batch, const std::function<void(SamplingBatch&)>& prepare,
                                  SampledTokens& out) {
  SamplingBatch sampling;
  prepare(sampling);
  forward_sample(batch, sampling, out);
}

void ModelBackend::check_targets(const ForwardBatch& batch, const std::vector<int32_t>& targets) const {
  STEM_CHECK(targets.size() == batch.logit_rows.size(), "forward_token_logprobs: ", targets.size(), " targets for ",
             batch.logit_rows.size(), " logit rows");
  for (size_t r = 0; r < targets.size(); ++r)
    STEM_CHECK(targets[r] >= -1 && targets[r] < config().vocab_size, "forward_token_logprobs: row ", r, " has target ",
               targets[r], ", outside [-1, ", config().vocab_size, ")");
}

void ModelBackend::forward_token_logprobs(const ForwardBatch& batch, const std::vector<int32_t>& targets,
                                          TokenScores& out) {
  check_targets(batch, targets);
  forward(batch, sample_logits_);
  const auto R = static_cast<int64_t>(targets.size());
  out.logprob.resize(targets.size());
  out.argmax.resize(targets.size());
  if (R == 0) return;
  cpu::token_logprob(TensorView(out.logprob.data(), DType::F32, {R}), TensorView(out.argmax.data(), DType::I32, {R}),
                     sample_logits_.view(), TensorView(const_cast<int32_t*>(targets.data()), DType::I32, {R}));
}

void ModelBackend::set_stem_settings(const StemSettings&) {
  throw Error("the " + name() + " backend cannot change its Stem settings after it was made");
}

void ModelBackend::set_op_decorator(ForwardingOps*) {
  throw Error("the " + name() + " backend takes no op decorator");
}

bool wants_fp8(const ModelConfig& config, const BackendOptions& options) {
  if (!options.quantization.empty() && options.quantization != "fp8")
    throw Error("quantization '" + options.quantization + "' is not supported (fp8)");
  return options.quantization == "fp8" || config.quantization == "fp8";
}

std::vector<LargeKeyBias> large_key_biases(const ModelConfig& config, const WeightStore& weights, float limit) {
  std::vector<LargeKeyBias> out;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string name = "model.layers." + std::to_string(l) + ".self_attn.k_proj.bias";
    if (!weights.has(name)) continue;
    const Tensor bias = weights.load_f32(name, {config.kv_dim()});
    float max_abs = 0.f;
    for (int64_t i = 0; i < bias.numel(); ++i) max_abs = std::max(max_abs, std::abs(bias.ptr<float>()[i]));
    if (max_abs >= limit) out.push_back({l, max_abs});
  }
  return out;
}

bool kv_cache_fp8(const std::string& kv_cache_dtype) {
  if (kv_cache_dtype == "fp8") return true;
  if (kv_cache_dtype == "auto" || kv_cache_dtype == "bf16") return false;
  throw Error("kv_cache_dtype '" + kv_cache_dtype + "' is not supported (auto, bf16, fp8)");
}

bool kv_layer_fp8(const BackendOptions& options, int64_t layer) {
  if (!kv_cache_fp8(options.kv_cache_dtype)) return false;
  const auto& skip = options.kv_unquantized_layers;
  return std::find(skip.begin(), skip.end(), layer) == skip.end();
}

void check_fp8_gpu(int major, int minor, const std::string& gpu_name) {
  if (major * 10 + minor < 89)
    throw Error("FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); " + gpu_name + " is " +
                std::to_string(major) + "." + std::to_string(minor) +
                ": use a bf16 checkpoint without --quantization fp8, or --device cpu");
}

std::unique_ptr<ModelBackend> make_backend(const ModelConfig& config, const WeightStore* weights,
                                           const BackendOptions& options) {
  if (options.device == "cpu") {
    if (!weights) throw Error("random (dummy) weights are only supported on the cuda device");
    return make_cpu_backend(config, *weights, options);
  }
  if (options.device == "cuda") {
#ifdef STEM_HAVE_CUDA
    return make_cuda_backend(config, weights, options);
#else
    throw Error("device 'cuda' is not available: this stemserve was built without CUDA");
#endif
  }
  throw Error("unknown device '" + options.device + "' (cpu, cuda)");
}

}  // namespace stem
