// An op decorator (models/ops.h ForwardingOps, ModelBackend::set_op_decorator) around the CPU
// backend's ops, on the tiny llama-gqa fixture (3 layers): it sees every op of the forward and
// leaves the logits as they were (the same shapes in one process: the same bits); it sees the
// layers Stem takes as stem_attention; an op it replaces changes the numbers; unset, it sees
// nothing more. bench/eval/ captures the attention stage's Q/K/V this way.
#include <random>

#include "base/model_config.h"
#include "base/weights.h"
#include "models/backend.h"
#include "models/ops.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(test::fixtures_dir()) / "models" / "llama-gqa";
constexpr int32_t kPageSize = 16;
constexpr int64_t kPages = 128;  // 2048 tokens

std::unique_ptr<ModelBackend> backend() {
  BackendOptions o;
  o.num_pages = kPages;
  o.page_size = kPageSize;
  o.stem.min_prompt_len = 1024;
  o.stem.budget_rate = 0.25;
  o.stem.sink_blocks = 1;
  o.stem.window_blocks = 1;
  o.stem.dense_layers = 1;
  return make_cpu_backend(load_model_config(kModel), WeightStore(kModel), o);
}

// A prefill of n random tokens, the last row's logits; Stem or dense.
ForwardBatch prefill(int64_t n, bool stem) {
  std::mt19937_64 rng(7);
  ForwardBatch b;
  for (int64_t i = 0; i < n; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng() % 256));
    b.positions.push_back(static_cast<int32_t>(i));
    b.slots.push_back(static_cast<int32_t>(i));
  }
  b.query_start = {0, static_cast<int32_t>(n)};
  b.kv_lens = {static_cast<int32_t>(n)};
  b.max_pages = kPages;
  for (int32_t p = 0; p < kPages; ++p) b.page_table.push_back(p);
  b.logit_rows = {static_cast<int32_t>(n - 1)};
  if (stem) {
    b.prompt_lens = {static_cast<int32_t>(n)};
    b.stem = {1};
  }
  return b;
}

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
    if (zero_attention) {
      std::fill_n(out.ptr<float>(), out.numel(), 0.f);
      return;
    }
    ForwardingOps::attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
  void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                      float scale, int64_t sliding_window) override {
    ++stem_attentions;
    ForwardingOps::stem_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
};

std::vector<float> run(ModelBackend& m, const ForwardBatch& b) {
  Tensor logits;
  m.forward(b, logits);
  return std::vector<float>(logits.ptr<float>(), logits.ptr<float>() + logits.numel());
}

}  // namespace

TEST_CASE("op decorator: sees the forward's ops, keeps its logits, replaces an op, and goes when unset") {
  auto m = backend();
  const int64_t L = m->config().num_hidden_layers;
  const std::vector<float> plain = run(*m, prefill(100, false)), plain_stem = run(*m, prefill(1500, true));
  const StemStepStats plain_stats = m->last_stem_stats();
  REQUIRE(plain_stats.sparse_blocks > 0);

  Counting ops;
  m->set_op_decorator(&ops);
  CHECK(run(*m, prefill(100, false)) == plain);
  CHECK(ops.attentions == L);
  CHECK(ops.stem_attentions == 0);
  CHECK(ops.matmuls == 4 * L + 1);  // qkv, o, gate_up, down; lm_head

  ops.reset();
  CHECK(run(*m, prefill(1500, true)) == plain_stem);
  CHECK(ops.attentions == 1);  // dense_layers
  CHECK(ops.stem_attentions == L - 1);
  CHECK(m->last_stem_stats().skipped_key_blocks == plain_stats.skipped_key_blocks);

  ops.reset();
  ops.zero_attention = true;
  CHECK(run(*m, prefill(100, false)) != plain);
  CHECK(ops.attentions == L);

  m->set_op_decorator(nullptr);
  ops.reset();
  CHECK(run(*m, prefill(100, false)) == plain);
  CHECK(ops.attentions == 0);
}
