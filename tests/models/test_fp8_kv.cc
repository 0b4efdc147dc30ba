// The FP8 KV cache (--kv-cache-dtype fp8) on the CPU backend: the tiny fixtures' logits with an FP8
// cache against the f32 cache's, within the E4M3 bound below, with the same top-1 wherever the
// reference's margin exceeds it (whole prompts and prompts in chunks, so later chunks read pages
// earlier steps wrote); the prefix cache's seed differs by KV dtype; unknown dtypes are refused.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "engine/engine.h"
#include "engine/page_hash.h"
#include "models/backend.h"
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

int64_t argmax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

struct Comparison {
  double rel = 0, max_diff = 0, max_ref = 0;
  int64_t rows = 0, same_top1 = 0, must_agree = 0, agree = 0;
};

Comparison compare(const Tensor& got, const Tensor& ref) {
  REQUIRE(got.shape() == ref.shape());
  const int64_t R = ref.shape()[0], V = ref.shape()[1];
  Comparison c;
  c.rows = R;
  double num = 0, den = 0;
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < R * V; ++i) {
    const double d = got.ptr<float>()[i] - double(ref.ptr<float>()[i]);
    nonfinite += !std::isfinite(d);
    num += d * d;
    den += double(ref.ptr<float>()[i]) * ref.ptr<float>()[i];
    c.max_diff = std::max(c.max_diff, std::abs(d));
    c.max_ref = std::max(c.max_ref, std::abs(double(ref.ptr<float>()[i])));
  }
  CHECK(nonfinite == 0);
  c.rel = std::sqrt(num / den);
  const double bound = kKvBound * std::max(1.0, c.max_ref);
  for (int64_t r = 0; r < R; ++r) {
    const float *x = got.ptr<float>() + r * V, *y = ref.ptr<float>() + r * V;
    const int64_t top = argmax(y, V);
    double second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != top) second = std::max(second, double(y[v]));
    const bool same = argmax(x, V) == top;
    c.same_top1 += same;
    if (y[top] - second > 2 * bound) {
      ++c.must_agree;
      c.agree += same;
    }
  }
  return c;
}

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
    const Comparison c = compare(fp8.score(tokens(n, static_cast<int32_t>(n))), ref.score(tokens(n, int32_t(n))));
    INFO(name << " (chunks of " << chunk << "), " << n << " tokens: relative error " << c.rel
              << ", largest logit error " << c.max_diff << " (largest logit " << c.max_ref << "), top-1 the same on "
              << c.same_top1 << " of " << c.rows << ", " << c.agree << " of the " << c.must_agree
              << " beyond the bound");
    CHECK(c.rel <= kKvBound);
    CHECK(c.max_diff <= kKvBound * std::max(1.0, c.max_ref));
    CHECK(c.agree == c.must_agree);
    CHECK(c.rel > 0);  // the cache was FP8
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
