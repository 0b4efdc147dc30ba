// Stem in the CPU backend, on the tiny llama-gqa fixture (3 layers, 4 q / 2 KV heads, random
// weights) with ~1.5K-token prompts: Stem prefill in chunks of 256 tokens gives the unchunked
// logits at every position (within rounding, tests/rounding.h) and skips exactly the same key
// blocks; a batch that mixes a Stem sequence with a dense one gives each sequence's logits alone;
// and Stem really changes the numbers. An op decorator (models/ops.h ForwardingOps, as bench/eval/
// captures Q/K/V with) sees every op, the Stem layers as stem_attention, and changes nothing unless
// it replaces an op.
#include <algorithm>
#include <random>

#include "base/model_config.h"
#include "base/weights.h"
#include "models/backend.h"
#include "models/ops.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(test::fixtures_dir()) / "models" / "llama-gqa";
constexpr int32_t kPageSize = 16;
constexpr int64_t kPagesPerSeq = 128;  // 2048 tokens

StemSettings settings() {
  StemSettings s;
  s.min_prompt_len = 1024;
  s.budget_rate = 0.25;  // k_s = 3 of 12 blocks
  s.sink_blocks = 1;
  s.window_blocks = 1;
  s.dense_layers = 1;  // of 3 layers
  return s;
}

std::unique_ptr<ModelBackend> backend(const std::string& kv_cache_dtype = "auto") {
  BackendOptions o;
  o.kv_cache_dtype = kv_cache_dtype;
  o.num_pages = 2 * kPagesPerSeq;
  o.page_size = kPageSize;
  o.stem = settings();
  return make_cpu_backend(load_model_config(kModel), WeightStore(kModel), o);
}

std::vector<int32_t> random_prompt(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % 256);
  return t;
}

// One sequence's share of a step: rows [begin, end) of `prompt`, in the pages of slot `seq`.
struct Part {
  int64_t seq;
  const std::vector<int32_t>* prompt;
  int64_t begin, end;
  bool stem;
};

// Every row's logits are asked for, in the batch's row order.
ForwardBatch make_batch(const std::vector<Part>& parts) {
  ForwardBatch b;
  b.max_pages = kPagesPerSeq;
  b.query_start.push_back(0);
  for (const Part& p : parts) {
    for (int64_t i = p.begin; i < p.end; ++i) {
      b.tokens.push_back((*p.prompt)[i]);
      b.positions.push_back(static_cast<int32_t>(i));
      b.slots.push_back(static_cast<int32_t>(p.seq * kPagesPerSeq * kPageSize + i));
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
    }
    b.query_start.push_back(static_cast<int32_t>(b.tokens.size()));
    b.kv_lens.push_back(static_cast<int32_t>(p.end));
    for (int64_t pg = 0; pg < kPagesPerSeq; ++pg) b.page_table.push_back(static_cast<int32_t>(p.seq * kPagesPerSeq + pg));
    b.prompt_lens.push_back(static_cast<int32_t>(p.prompt->size()));
    b.stem.push_back(p.stem ? 1 : 0);
  }
  return b;
}

struct Prefill {
  std::vector<float> logits;  // [prompt rows, vocab]
  StemStepStats stem;         // summed over the steps
};

void add(StemStepStats& sum, const StemStepStats& s) {
  sum.sparse_blocks += s.sparse_blocks;
  sum.causal_key_blocks += s.causal_key_blocks;
  sum.skipped_key_blocks += s.skipped_key_blocks;
}

Prefill prefill(ModelBackend& m, const std::vector<int32_t>& prompt, int64_t chunk, bool stem) {
  Prefill out;
  Tensor logits;
  for (int64_t begin = 0; begin < static_cast<int64_t>(prompt.size()); begin += chunk) {
    const int64_t end = std::min<int64_t>(static_cast<int64_t>(prompt.size()), begin + chunk);
    m.forward(make_batch({{0, &prompt, begin, end, stem}}), logits);
    out.logits.insert(out.logits.end(), logits.ptr<float>(), logits.ptr<float>() + logits.numel());
    add(out.stem, m.last_stem_stats());
  }
  return out;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float d = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

// 3 layers; the longest reduction is over the 1500 keys of the longest prompt.
const double kTol = test::rounding_tolerance(3, 1500);

// Counts the calls it hands on; with `zero_attention`, replaces dense attention by zeros.
class Counting final : public ForwardingOps {
 public:
  int matmuls = 0, attentions = 0, stem_attentions = 0;
  bool zero_attention = false;

  void reset() {
    matmuls = attentions = stem_attentions = 0;
    zero_attention = false;
  }
  void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) override {
    ++matmuls;
    ForwardingOps::matmul(out, a, w, bias);
  }
  void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                 const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                 int64_t sliding_window) override {
    ++attentions;
    if (zero_attention)
      std::fill_n(out.ptr<float>(), out.numel(), 0.f);
    else
      ForwardingOps::attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
  void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                      float scale, int64_t sliding_window) override {
    ++stem_attentions;
    ForwardingOps::stem_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
};

}  // namespace

TEST_CASE("stem backend: chunked Stem prefill equals unchunked, and mixed Stem and dense batches each sequence alone") {
  auto m = backend();
  const int64_t V = m->config().vocab_size;
  const std::vector<int32_t> a = random_prompt(1500, 1), b = random_prompt(600, 2);

  const Prefill dense = prefill(*m, a, 1500, false);
  const Prefill whole = prefill(*m, a, 1500, true);
  CHECK(dense.stem.sparse_blocks == 0);
  // nb = 12, k_s = 3: blocks 3..11 are sparse, in layers 1 and 2.
  CHECK(whole.stem.sparse_blocks == 9 * 2);
  CHECK(whole.stem.skipped_key_blocks > whole.stem.causal_key_blocks / 4);
  // Rows of the first k_s blocks attend to everything: the same numbers as dense (the same shapes,
  // so the same bits). Later rows differ.
  const size_t dense_rows = 3 * 128 * static_cast<size_t>(V);
  CHECK(max_abs_diff(whole.logits.data(), dense.logits.data(), dense_rows) == 0.f);
  // By far more than the rounding tolerance that the chunked and batched runs are held to below.
  CHECK(test::max_scaled_diff(whole.logits.data(), dense.logits.data(), whole.logits.size()) > 10 * kTol);

  SECTION("chunks of 256: every position's logits as unchunked, the same blocks skipped") {
    const Prefill chunked = prefill(*m, a, 256, true);
    REQUIRE(chunked.logits.size() == whole.logits.size());
    CHECK(chunked.stem.sparse_blocks == whole.stem.sparse_blocks);
    CHECK(chunked.stem.skipped_key_blocks == whole.stem.skipped_key_blocks);
    CHECK(test::max_scaled_diff(chunked.logits.data(), whole.logits.data(), whole.logits.size()) <= kTol);
  }
  SECTION("chunks of 200 cut blocks, which are then computed densely") {
    const Prefill cut = prefill(*m, a, 200, true);
    CHECK(cut.stem.sparse_blocks < whole.stem.sparse_blocks);
    CHECK(cut.stem.skipped_key_blocks < whole.stem.skipped_key_blocks);
  }
  SECTION("one batch of a Stem sequence and a dense one: each as alone") {
    const Prefill b_alone = prefill(*m, b, 600, false);
    Tensor logits;
    m->forward(make_batch({{0, &b, 0, 600, false}, {1, &a, 0, 1500, true}}), logits);
    CHECK(m->last_stem_stats().sparse_blocks == whole.stem.sparse_blocks);
    CHECK(m->last_stem_stats().skipped_key_blocks == whole.stem.skipped_key_blocks);
    const float* out = logits.ptr<float>();
    CHECK(test::max_scaled_diff(out, b_alone.logits.data(), b_alone.logits.size()) <= kTol);
    CHECK(test::max_scaled_diff(out + b_alone.logits.size(), whole.logits.data(), whole.logits.size()) <= kTol);
  }
}

TEST_CASE("stem backend: an op decorator sees every op, keeps the logits, can replace an op, and goes when unset") {
  auto m = backend();
  const int64_t L = m->config().num_hidden_layers;
  const std::vector<int32_t> a = random_prompt(1500, 1), b = random_prompt(100, 2);
  const Prefill dense = prefill(*m, b, 100, false), stem = prefill(*m, a, 1500, true);
  REQUIRE(stem.stem.sparse_blocks > 0);

  Counting ops;
  m->set_op_decorator(&ops);
  // The same shapes in one process: the same bits.
  CHECK(prefill(*m, b, 100, false).logits == dense.logits);
  CHECK(ops.attentions == L);
  CHECK(ops.stem_attentions == 0);
  CHECK(ops.matmuls == 4 * L + 1);  // qkv, o, gate_up, down; lm_head

  ops.reset();
  const Prefill decorated = prefill(*m, a, 1500, true);
  CHECK(decorated.logits == stem.logits);
  CHECK(decorated.stem.skipped_key_blocks == stem.stem.skipped_key_blocks);
  CHECK(ops.attentions == 1);  // dense_layers
  CHECK(ops.stem_attentions == L - 1);

  ops.reset();
  ops.zero_attention = true;
  CHECK(prefill(*m, b, 100, false).logits != dense.logits);
  CHECK(ops.attentions == L);

  m->set_op_decorator(nullptr);
  ops.reset();
  CHECK(prefill(*m, b, 100, false).logits == dense.logits);
  CHECK(ops.attentions == 0);
}

TEST_CASE("stem backend: with an FP8 KV cache, chunked equals unchunked, the same blocks, near the f32 cache's Stem") {
  auto f32 = backend(), fp8 = backend("fp8");
  const int64_t V = f32->config().vocab_size;
  const std::vector<int32_t> a = random_prompt(1500, 1);
  const Prefill ref = prefill(*f32, a, 1500, true);
  const Prefill whole = prefill(*fp8, a, 1500, true);
  const Prefill chunked = prefill(*fp8, a, 256, true);
  // Stem reads the staged (dequantized) pages: the same values whichever step wrote them.
  CHECK(whole.stem.sparse_blocks == ref.stem.sparse_blocks);
  CHECK(chunked.stem.sparse_blocks == whole.stem.sparse_blocks);
  CHECK(chunked.stem.skipped_key_blocks == whole.stem.skipped_key_blocks);
  REQUIRE(chunked.logits.size() == whole.logits.size());
  // Relative (Frobenius) error of x against y over the prompt's logits.
  auto rel_error = [](const std::vector<float>& x, const std::vector<float>& y) {
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      den += double(y[i]) * y[i];
    }
    return std::sqrt(num / den);
  };
  // Chunked against whole: the K/V values differ only by the GEMMs' summation order (BLAS picks
  // its kernels by shape and CPU), but a code flips where that crosses an E4M3 rounding boundary
  // (a step of 2^-4 of one value), which float32's rounding bound does not cover; as in
  // tests/models/test_fp8_kv.cc's batching test, a wrong position, page or block would be an error
  // of order one.
  const double chunk_rel = rel_error(chunked.logits, whole.logits);
  INFO("FP8 KV Stem, chunks of 256 against whole: relative error " << chunk_rel);
  CHECK(chunk_rel <= 1e-2);
  // Against the f32 cache: E4M3's first-order bound on the logits (tests/models/test_fp8_kv.cc),
  // relative over the prompt's logits; it did run in FP8.
  const double rel = rel_error(whole.logits, ref.logits);
  INFO("FP8 KV Stem against f32 KV Stem: relative error " << rel << " over " << ref.logits.size() / V << " rows");
  CHECK(rel <= 2 * 0x1p-4 + 0x1p-8);
  CHECK(rel > 0);
}
