// Stem sparse prefill in the whole model: the CUDA backend (cuda::stem_prefill in the layers past
// dense_layers) against the CPU backend (cpu::stem_plan + block_sparse_attention) on the same random
// model (head_dim 128, GQA 4/2, 4 layers) and the same 4000-token prompt, unchunked and in chunks
// of 1024 mixed with a dense sequence and a decode row. Settings that make a 4K prompt sparse:
// min_prompt_len 1024, budget_rate 0.25 (k_s = 8 of 32 blocks).
//
// Tolerance: as test_cuda_vs_cpu (2e-2 relative over a step's logits). The selections are made on
// slightly different scores (bf16 activations against f32), so a block whose score ties another's
// within rounding may be chosen on one side only; such rows differ by more than rounding, which is
// why the test also checks that Stem's error is well below the distance between Stem and dense.
#include "base/weights.h"
#include "models/cuda/backend.h"
#include "tests/gpu_model/gpu_model_util.h"
#include "tests/test_util.h"

using namespace stem;
using namespace stem::gpu_model_test;

namespace {

constexpr double kModelTolerance = 2e-2;
constexpr int64_t kPrompt = 4000;

StemSettings stem_settings() {
  StemSettings s;
  s.min_prompt_len = 1024;
  s.budget_rate = 0.25;
  return s;
}

// Marks the batch's sequences: Stem ones with their whole prompt length, the others dense.
void mark(ForwardBatch& b, const std::vector<int32_t>& prompt_lens) {
  b.prompt_lens = prompt_lens;
  b.stem.clear();
  for (int32_t p : prompt_lens) b.stem.push_back(p > 0 ? 1 : 0);
}

std::vector<float> values(const Tensor& t) { return {t.ptr<float>(), t.ptr<float>() + t.numel()}; }

// CUDA's FP8 KV cache against the CPU's (both --kv-cache-dtype fp8): codes of keys and values that
// differ before quantization by bf16 rounding flip where that crosses a rounding boundary (an E4M3
// step, 2^-3..2^-4 of the value, on about 2^-9/2^-4 of the elements), and a selection on such
// scores may choose a tied block on one side only: looser than kModelTolerance.
constexpr double kFp8KvTolerance = 0.1;

}  // namespace

TEST_CASE("cuda Stem prefill matches the cpu's: unchunked, chunked, mixed with dense and decode rows") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  nlohmann::json cfg = llama_config(512, 4, 2, 128, 4);
  cfg["max_position_embeddings"] = 8192;
  const ModelConfig c = write_random_model(tmp.path(), cfg, 31);
  WeightStore store(tmp.path());
  BackendOptions o;
  o.num_pages = 640;
  o.page_size = 16;
  o.stem = stem_settings();
  auto cpu = make_cpu_backend(c, store, o);
  o.device = "cuda";
  auto gpu = make_cuda_model_backend(c, &store, o);

  std::mt19937_64 rng(32);
  const std::vector<int32_t> prompt = random_tokens(rng, kPrompt, c.vocab_size);
  PagedSequences seqs(o.num_pages, o.page_size, 33);

  // Unchunked, every row's logits; and the CPU's dense prefill of the same prompt for scale.
  const int whole = seqs.add();
  ForwardBatch b = seqs.step({{whole, prompt}}, true);
  Tensor cpu_dense, cpu_stem, gpu_stem;
  cpu->forward(b, cpu_dense);
  mark(b, {static_cast<int32_t>(kPrompt)});
  cpu->forward(b, cpu_stem);
  const StemStepStats cpu_stats = cpu->last_stem_stats();
  gpu->forward(b, gpu_stem);
  // nb = 32, k_s = 8: blocks 8..31 are sparse in layers 2 and 3.
  CHECK(cpu_stats.sparse_blocks == 24 * 2);
  CHECK(gpu->last_stem_stats().sparse_blocks == cpu_stats.sparse_blocks);
  // The device counts what its lists skip: the CPU's figure, up to blocks whose scores tie within
  // rounding at a row's cut (a tie can swap a scored block for a sink or window block).
  CHECK(gpu->last_stem_stats().causal_key_blocks == cpu_stats.causal_key_blocks);
  CHECK(std::abs(gpu->last_stem_stats().skipped_key_blocks - cpu_stats.skipped_key_blocks) <=
        cpu_stats.skipped_key_blocks / 100);
  INFO("cpu Stem skipped " << cpu_stats.skipped_key_blocks << " of " << cpu_stats.causal_key_blocks << " key blocks");
  CHECK(cpu_stats.skipped_key_blocks * 5 > cpu_stats.causal_key_blocks);
  const double stem_err = gpu_test::rel_error(values(gpu_stem), values(cpu_stem));
  const double dense_gap = gpu_test::rel_error(values(cpu_stem), values(cpu_dense));
  STEM_CHECK_CLOSE("model_stem_cuda_vs_cpu unchunked", values(gpu_stem), values(cpu_stem), kModelTolerance);
  gpu_test::report_error("model_stem_vs_dense cpu (not an error: Stem's effect)", dense_gap);
  INFO("cuda vs cpu Stem " << stem_err << ", cpu Stem vs dense " << dense_gap);
  CHECK(stem_err * 4 < dense_gap);

  // Chunks of 1024 (multiples of the block: the same selection), with a dense 600-token sequence
  // in the first step and its decode row in the second.
  const int chunked = seqs.add(), dense_seq = seqs.add();
  const std::vector<int32_t> other = random_tokens(rng, 600, c.vocab_size);
  std::vector<float> gpu_rows;
  int64_t sparse_blocks = 0;
  for (int64_t begin = 0; begin < kPrompt; begin += 1024) {
    const int64_t end = std::min<int64_t>(kPrompt, begin + 1024);
    std::vector<PagedSequences::Part> parts = {{chunked, {prompt.begin() + begin, prompt.begin() + end}}};
    std::vector<int32_t> lens = {static_cast<int32_t>(kPrompt)};
    if (begin == 0) parts.push_back({dense_seq, other}), lens.push_back(0);
    if (begin == 1024) parts.push_back({dense_seq, {17}}), lens.push_back(0);
    b = seqs.step(parts, true);
    mark(b, lens);
    Tensor want, got;
    cpu->forward(b, want);
    gpu->forward(b, got);
    CHECK(gpu->last_stem_stats().sparse_blocks == cpu->last_stem_stats().sparse_blocks);
    sparse_blocks += cpu->last_stem_stats().sparse_blocks;
    STEM_CHECK_CLOSE("model_stem_cuda_vs_cpu chunk at " + std::to_string(begin), values(got), values(want),
                     kModelTolerance);
    gpu_rows.insert(gpu_rows.end(), got.ptr<float>(), got.ptr<float>() + (end - begin) * c.vocab_size);
  }
  CHECK(sparse_blocks == cpu_stats.sparse_blocks);
  // The GPU's chunked prefill against its unchunked one: the same selections; only GEMM shapes
  // (and so cuBLASLt's summation order) and the attention's split differ.
  STEM_CHECK_CLOSE("model_stem_cuda chunked vs unchunked", gpu_rows, values(gpu_stem), 1e-2);
}

TEST_CASE("cuda token logprobs and Stem settings switched in place match the cpu's") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  nlohmann::json cfg = llama_config(512, 4, 2, 128, 4);
  cfg["max_position_embeddings"] = 8192;
  const ModelConfig c = write_random_model(tmp.path(), cfg, 41);
  WeightStore store(tmp.path());
  BackendOptions o;
  o.num_pages = 300;
  o.page_size = 16;
  o.stem = stem_settings();
  auto cpu = make_cpu_backend(c, store, o);
  o.device = "cuda";
  o.stem = StemSettings{};  // switched to stem_settings() below, in place
  auto gpu = make_cuda_model_backend(c, &store, o);
  gpu->set_stem_settings(stem_settings());
  StemSettings bad;
  bad.stride = 1;
  CHECK_THROWS_WITH(gpu->set_stem_settings(bad), Catch::Contains("stride"));

  std::mt19937_64 rng(42);
  const std::vector<int32_t> prompt = random_tokens(rng, kPrompt, c.vocab_size);
  PagedSequences seqs(o.num_pages, o.page_size, 43);
  ForwardBatch b = seqs.step({{seqs.add(), prompt}}, true);
  mark(b, {static_cast<int32_t>(kPrompt)});
  std::vector<int32_t> targets(prompt.begin() + 1, prompt.end());
  targets.push_back(-1);
  TokenScores want, got;
  cpu->forward_token_logprobs(b, targets, want);
  gpu->forward_token_logprobs(b, targets, got);
  CHECK(gpu->last_stem_stats().sparse_blocks == cpu->last_stem_stats().sparse_blocks);
  REQUIRE(got.logprob.size() == targets.size());
  double nll_cpu = 0, nll_gpu = 0;
  int64_t same = 0;
  for (size_t r = 0; r + 1 < targets.size(); ++r) {
    nll_cpu -= want.logprob[r];
    nll_gpu -= got.logprob[r];
    same += want.argmax[r] == got.argmax[r];
  }
  CHECK(got.logprob.back() == 0.f);
  INFO("mean NLL cpu " << nll_cpu / kPrompt << " cuda " << nll_gpu / kPrompt << ", argmax equal on " << same);
  // bf16 against f32 (logits within 2e-2 relative, as above) moves the mean NLL by far less than 1%;
  // a random model's rows are nearly flat, so near-ties flip some argmaxes, not most.
  CHECK(std::abs(nll_gpu - nll_cpu) / nll_cpu < 1e-2);
  CHECK(same * 2 >= kPrompt - 1);
}

TEST_CASE("cuda Stem prefill with an FP8 KV cache matches the cpu's: staged pages, a dense chunk and a decode row") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  nlohmann::json cfg = llama_config(512, 4, 2, 128, 4);
  cfg["max_position_embeddings"] = 8192;
  const ModelConfig c = write_random_model(tmp.path(), cfg, 41);
  WeightStore store(tmp.path());
  BackendOptions o;
  o.num_pages = 640;
  o.page_size = 16;
  o.stem = stem_settings();
  o.kv_cache_dtype = "fp8";
  auto cpu = make_cpu_backend(c, store, o);
  o.device = "cuda";
  auto gpu = make_cuda_model_backend(c, &store, o);
  std::mt19937_64 rng(42);
  const std::vector<int32_t> prompt = random_tokens(rng, kPrompt, c.vocab_size);
  PagedSequences seqs(o.num_pages, o.page_size, 43);
  // Chunks of 1024 of a Stem prompt, with a dense 600-token sequence in the first step and its
  // decode row in the second (not staged in a Stem step: computed again from the codes).
  const int chunked = seqs.add(), dense_seq = seqs.add();
  const std::vector<int32_t> other = random_tokens(rng, 600, c.vocab_size);
  int64_t sparse_blocks = 0;
  for (int64_t begin = 0; begin < kPrompt; begin += 1024) {
    const int64_t end = std::min<int64_t>(kPrompt, begin + 1024);
    std::vector<PagedSequences::Part> parts = {{chunked, {prompt.begin() + begin, prompt.begin() + end}}};
    std::vector<int32_t> lens = {static_cast<int32_t>(kPrompt)};
    if (begin == 0) parts.push_back({dense_seq, other}), lens.push_back(0);
    if (begin == 1024) parts.push_back({dense_seq, {17}}), lens.push_back(0);
    ForwardBatch b = seqs.step(parts, true);
    mark(b, lens);
    Tensor want, got;
    cpu->forward(b, want);
    gpu->forward(b, got);
    CHECK(gpu->last_stem_stats().sparse_blocks == cpu->last_stem_stats().sparse_blocks);
    sparse_blocks += cpu->last_stem_stats().sparse_blocks;
    STEM_CHECK_CLOSE("model_stem_fp8kv_cuda_vs_cpu chunk at " + std::to_string(begin), values(got), values(want),
                     kFp8KvTolerance);
  }
  CHECK(sparse_blocks == 24 * 2);  // nb = 32, k_s = 8: blocks 8..31 sparse in layers 2 and 3
}
