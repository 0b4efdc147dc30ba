// The FP8 KV cache (--kv-cache-dtype fp8) on the CPU backend: the tiny fixtures' logits with an FP8
// cache against the f32 cache's, within the E4M3 bound below, with the same top-1 wherever the
// reference's margin exceeds it (whole prompts and prompts in chunks, so later chunks read pages
// earlier steps wrote); a batch of several sequences against each alone (the staging's
// renumbered pages); the prefix cache's seed differs by KV dtype; unknown dtypes are refused.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "base/model_config.h"
#include "base/weights.h"
#include "engine/engine.h"
#include "engine/page_hash.h"
#include "models/backend.h"
#include "tests/models/logit_compare.h"
#include "tests/test_util.h"

using namespace stem;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& name) { return fs::path(stem::test::fixtures_dir()) / "models" / name; }

std::vector<int32_t> tokens(size_t n, int32_t seed) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((seed + 37 * i + i * i) % 256);
  return ids;
}

// The bound, from the E4M3 step (kernels/cpu/kv_fp8.h, tests/kernels/test_kv_fp8.cc): each cached
// key and value is its own value within u8 = 2^-4 of itself (normals; the subnormals' absolute
// 2^-10·scale is smaller than 2^-4 of the head's largest value), so a score q·k of terms of one
// sign is off by at most u8 of itself, and the softmax-weighted sum of values by about u8 + the
// scores' effect on the weights: first order 2·u8 + u8², the same first-order bound as one FP8
// GEMM's (tests/models/test_fp8_model.cc), not a proof for the network: the errors of a head's D
// terms mostly cancel, and the norms keep later layers from growing them. Checked: the logits'
// relative (Frobenius) error, each logit within that fraction of the largest |logit| of its
// sequence, top-1 the same wherever the f32 cache's top-two margin exceeds twice that.
constexpr double kU8 = 0x1p-4, kKvBound = 2 * kU8 + kU8 * kU8;


// The model's logits with an FP8 KV cache against the f32 cache's; chunk > 0: prompts prefill in
// steps of that many tokens.
void check_fp8_kv(const std::string& name, int64_t chunk) {
  EngineOptions o;
  o.load_tokenizer = false;
  if (chunk > 0) o.max_num_batched_tokens = chunk;
  Engine ref(fixture(name), o);
  o.kv_cache_dtype = "fp8";
  Engine fp8(fixture(name), o);
  int64_t rows = 0, same = 0, must = 0;
  for (size_t n : {9, 23, 40}) {
    const test::LogitComparison c =
        test::compare_logits(fp8.score(tokens(n, static_cast<int32_t>(n))), ref.score(tokens(n, int32_t(n))), kKvBound);
    INFO(name << " (chunks of " << chunk << "), " << n << " tokens: relative error " << c.rel
              << ", largest logit error " << c.max_diff << " (largest logit " << c.max_ref << "), top-1 the same on "
              << c.same_top1 << " of " << c.rows << ", " << c.agree << " of the " << c.must_agree
              << " beyond the bound");
    test::check_within(c, kKvBound);
    rows += c.rows;
    same += c.same_top1;
    must += c.must_agree;
  }
  INFO(name << ": top-1 the same on " << same << " of " << rows << " positions");
  CHECK(same >= rows * 3 / 4);
  CHECK(must > 0);
}

}  // namespace

TEST_CASE("fp8 kv: the fixtures' logits with an FP8 KV cache against the f32 cache's, within the E4M3 bound") {
  for (const char* name : {"llama-gqa", "qwen2-bias", "mistral-swa", "llama-head-dim"}) {
    check_fp8_kv(name, 0);
    check_fp8_kv(name, 8);  // later chunks read the codes earlier steps wrote
    check_fp8_kv(name, 1);  // one token a step, as decode steps
  }
}

TEST_CASE("fp8 kv: greedy generation with an FP8 KV cache follows the f32 cache's where the margin is clear") {
  EngineOptions o;
  o.load_tokenizer = false;
  Engine ref(fixture("llama-gqa"), o);
  o.kv_cache_dtype = "fp8";
  Engine fp8(fixture("llama-gqa"), o);
  GenerateRequest r;
  r.prompt = tokens(12, 5);
  r.sampling.temperature = 0;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 2;
  r.stop.max_tokens = 16;
  r.stop.ignore_eos = true;
  const GenerateResult a = ref.generate(r), b = fp8.generate(r);
  REQUIRE(a.tokens.size() == 16);
  REQUIRE(b.tokens.size() == 16);
  // Log-probabilities move by at most twice a logit's bound (the log-sum-exp by at most one more);
  // the tiny model's logits stay within 1 in magnitude, so where the f32 cache's top-two margin
  // exceeds 4·kKvBound the FP8 cache must pick the same token, and on the common run every chosen
  // token's log-probability stays within 2·kKvBound.
  size_t compared = 0, clear = 0;
  for (; compared < a.tokens.size() && b.tokens[compared] == a.tokens[compared]; ++compared) {
    INFO("step " << compared);
    CHECK(std::abs(double(b.samples[compared].logprob) - a.samples[compared].logprob) <= 2 * kKvBound);
  }
  for (size_t i = 0; i < a.tokens.size(); ++i) {
    const double margin = double(a.samples[i].top.at(0).logprob) - a.samples[i].top.at(1).logprob;
    if (margin <= 4 * kKvBound) break;
    ++clear;
  }
  INFO("same tokens for " << compared << " steps; the margin is clear for the first " << clear);
  CHECK(compared >= clear);
  CHECK(compared > 0);
}

TEST_CASE("fp8 kv: a batch of prefill chunks and decode rows gives each sequence its logits alone (staged pages)") {
  const fs::path dir = fixture("llama-gqa");
  const ModelConfig c = load_model_config(dir);
  const WeightStore store(dir);
  BackendOptions o;
  o.num_pages = 24;
  o.page_size = 4;
  o.kv_cache_dtype = "fp8";
  // Sequence s owns pages [8s, 8s + 8), in reverse order so that staging renumbers them.
  auto page_table = [](int s) {
    std::vector<int32_t> t;
    for (int p = 7; p >= 0; --p) t.push_back(8 * s + p);
    return t;
  };
  struct Part {
    int seq;
    std::vector<int32_t> tokens;
    int32_t start;  // its first position
  };
  auto batch = [&](const std::vector<Part>& parts) {
    ForwardBatch b;
    b.max_pages = 8;
    b.query_start.push_back(0);
    for (const Part& p : parts) {
      const std::vector<int32_t> table = page_table(p.seq);
      for (size_t i = 0; i < p.tokens.size(); ++i) {
        const int32_t pos = p.start + static_cast<int32_t>(i);
        b.tokens.push_back(p.tokens[i]);
        b.positions.push_back(pos);
        b.slots.push_back(table[pos / 4] * 4 + pos % 4);
        b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
      }
      b.query_start.push_back(static_cast<int32_t>(b.tokens.size()));
      b.kv_lens.push_back(p.start + static_cast<int32_t>(p.tokens.size()));
      b.page_table.insert(b.page_table.end(), table.begin(), table.end());
    }
    return b;
  };
  const std::vector<int32_t> a = tokens(23, 3), b2 = tokens(17, 4), d = tokens(9, 5);
  // Together: step 1 prefills a[0,20), b[0,17) and d[0,9); step 2 decodes one row of a and one of
  // b (d idle); step 3 takes two rows of b, then two of a (the batch's order differs from the pool's).
  auto together = make_cpu_backend(c, store, o);
  std::vector<Tensor> got(3);
  together->forward(batch({{0, {a.begin(), a.begin() + 20}, 0}, {1, b2, 0}, {2, d, 0}}), got[0]);
  together->forward(batch({{0, {a[20]}, 20}, {1, {7}, 17}}), got[1]);
  together->forward(batch({{1, {9, 11}, 18}, {0, {a[21], a[22]}, 21}}), got[2]);
  // Alone: each sequence in its own backend, the same steps.
  auto alone = [&](int seq, const std::vector<std::vector<Part>>& steps) {
    auto m = make_cpu_backend(c, store, o);
    std::vector<Tensor> out(steps.size());
    for (size_t i = 0; i < steps.size(); ++i) m->forward(batch(steps[i]), out[i]);
    return out;
  };
  const std::vector<Tensor> ra = alone(0, {{{0, {a.begin(), a.begin() + 20}, 0}}, {{0, {a[20]}, 20}}, {{0, {a[21], a[22]}, 21}}});
  const std::vector<Tensor> rb = alone(1, {{{1, b2, 0}}, {{1, {7}, 17}}, {{1, {9, 11}, 18}}});
  const std::vector<Tensor> rd = alone(2, {{{2, d, 0}}});
  const int64_t V = c.vocab_size;
  // Rows of `got[step]` from `row` on against `ref`'s rows: relative (Frobenius). The K/V values
  // differ between the runs only by the GEMMs' summation order (shapes), and a code flips only where
  // that crosses a rounding boundary: rare, a step of 2^-4 of one value; wrong pages would be
  // errors of order one.
  auto check = [&](const std::string& what, const Tensor& t, int64_t row, const Tensor& ref) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      const double x = t.ptr<float>()[row * V + i], y = ref.ptr<float>()[i];
      num += (x - y) * (x - y);
      den += y * y;
    }
    INFO(what << ": relative error " << std::sqrt(num / den));
    CHECK(std::sqrt(num / den) <= 1e-2);
  };
  check("step 1, a", got[0], 0, ra[0]);
  check("step 1, b", got[0], 20, rb[0]);
  check("step 1, d", got[0], 37, rd[0]);
  check("step 2, a", got[1], 0, ra[1]);
  check("step 2, b", got[1], 1, rb[1]);
  check("step 3, b", got[2], 0, rb[2]);
  check("step 3, a", got[2], 2, ra[2]);
}

TEST_CASE("fp8 kv: the prefix cache's seed names the KV dtype: FP8 and bf16 pages never mix") {
  const std::string bf16 = model_identity("/m", "cuda", false, "", false);
  const std::string fp8 = model_identity("/m", "cuda", false, "", true);
  CHECK(bf16 != fp8);
  CHECK_FALSE(prefix_seed(bf16, kDenseKvKind, "") == prefix_seed(fp8, kDenseKvKind, ""));
  const std::vector<int32_t> page = tokens(16, 1);
  CHECK_FALSE(chain_page_hash(prefix_seed(bf16, kDenseKvKind, ""), page) ==
              chain_page_hash(prefix_seed(fp8, kDenseKvKind, ""), page));
  // The weights' quantization and the KV dtype are separate fields.
  CHECK(model_identity("/m", "cuda", false, "fp8", false) != fp8);
  CHECK(model_identity("/m", "cuda", false, "fp8", true) != model_identity("/m", "cuda", false, "fp8", false));
}

TEST_CASE("fp8 kv: auto and bf16 are today's cache; an unknown KV dtype is refused, naming the values") {
  CHECK_FALSE(kv_cache_fp8("auto"));
  CHECK_FALSE(kv_cache_fp8("bf16"));
  CHECK(kv_cache_fp8("fp8"));
  CHECK_THROWS_WITH(kv_cache_fp8("int8"), Contains("kv_cache_dtype 'int8'") && Contains("auto, bf16, fp8"));
  EngineOptions o;
  o.load_tokenizer = false;
  o.kv_cache_dtype = "fp8_e5m2";
  CHECK_THROWS_WITH(Engine(fixture("llama-gqa"), o), Contains("kv_cache_dtype 'fp8_e5m2'"));
}

TEST_CASE("fp8 kv: the layers whose key biases the FP8 cache would lose are found, each with its largest |bias|") {
  const fs::path dir = fixture("qwen2-bias");
  const ModelConfig c = load_model_config(dir);
  const WeightStore w(dir);
  // Each layer's largest |k_proj bias|, read here on its own.
  std::vector<float> largest;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const Tensor b = w.load_f32("model.layers." + std::to_string(l) + ".self_attn.k_proj.bias", {c.kv_dim()});
    float m = 0.f;
    for (int64_t i = 0; i < b.numel(); ++i) m = std::max(m, std::abs(b.ptr<float>()[i]));
    largest.push_back(m);
  }
  REQUIRE(c.num_hidden_layers >= 2);
  // A limit at the smaller of two layers' maxima reports the larger and itself, not a layer below it.
  const float lo = std::min(largest[0], largest[1]);
  const std::vector<LargeKeyBias> some = large_key_biases(c, w, lo);
  std::vector<int64_t> expected;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (largest[static_cast<size_t>(l)] >= lo) expected.push_back(l);
  REQUIRE(some.size() == expected.size());
  for (size_t i = 0; i < some.size(); ++i) {
    CHECK(some[i].layer == expected[i]);
    CHECK(some[i].max_abs == largest[static_cast<size_t>(some[i].layer)]);
  }
  // The fixture's biases are small random values: nothing at the engine's limit.
  CHECK(large_key_biases(c, w, kFp8KvKeyBiasLimit).empty());
  // A model without biases has none to report, at any limit.
  const fs::path plain = fixture("llama-gqa");
  CHECK(large_key_biases(load_model_config(plain), WeightStore(plain), 0.f).empty());
}

TEST_CASE("fp8 kv: layers with large key biases keep their K/V unquantized; the others are FP8") {
  const fs::path dir = fixture("qwen2-bias");
  const ModelConfig c = load_model_config(dir);
  const WeightStore w(dir);
  REQUIRE(c.num_hidden_layers >= 2);
  std::vector<float> largest;
  for (const LargeKeyBias& b : large_key_biases(c, w, 0.f)) largest.push_back(b.max_abs);
  REQUIRE(largest.size() == static_cast<size_t>(c.num_hidden_layers));
  EngineOptions o;
  o.load_tokenizer = false;
  Engine f32(dir, o);
  o.kv_cache_dtype = "fp8";
  Engine fp8(dir, o);
  // Every layer's bias at or above the limit: no layer is FP8, so the same arithmetic as the f32 cache.
  o.kv_fp8_key_bias_limit = 0.f;
  Engine none(dir, o);
  // Some layers: the limit at the largest of the layers' maxima keeps that layer (or those) only.
  o.kv_fp8_key_bias_limit = *std::max_element(largest.begin(), largest.end());
  Engine some(dir, o);
  REQUIRE(std::count(largest.begin(), largest.end(), o.kv_fp8_key_bias_limit) < c.num_hidden_layers);
  for (size_t n : {9, 40}) {
    const std::vector<int32_t> ids = tokens(n, static_cast<int32_t>(n));
    const Tensor ref = f32.score(ids), all = fp8.score(ids), kept = none.score(ids), mixed = some.score(ids);
    auto values = [](const Tensor& t) { return std::vector<float>(t.ptr<float>(), t.ptr<float>() + t.numel()); };
    INFO(n << " tokens");
    CHECK(values(kept) == values(ref));
    CHECK(values(mixed) != values(ref));  // the other layers are FP8
    CHECK(values(mixed) != values(all));  // and that layer is not
    test::check_within(test::compare_logits(mixed, ref, kKvBound), kKvBound);
  }
}
