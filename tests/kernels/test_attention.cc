#include <algorithm>

#include "kernels/cpu/attention.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

struct Seq {
  int32_t kv_len, rows;  // rows: this step's queries, the newest `rows` tokens of the sequence
};

// A step's worth of paged attention inputs, built from logical per-sequence K/V so that the
// reference never looks at pages.
struct Step {
  int64_t q_heads, kv_heads, dim, page_size, pages, max_pages = 0, tokens = 0;
  std::vector<Seq> seqs;
  std::vector<std::vector<float>> k_logical, v_logical;  // [s]: [kv_len, Hkv, D]
  std::vector<float> q, k_cache, v_cache;
  std::vector<int32_t> page_table, kv_lens, query_start;

  Step(std::mt19937_64& rng, int64_t hq, int64_t hkv, int64_t d, int64_t ps, std::vector<Seq> s, float q_scale = 1.f)
      : q_heads(hq), kv_heads(hkv), dim(d), page_size(ps), seqs(std::move(s)) {
    int64_t needed = 0;
    for (const Seq& seq : seqs) {
      const int64_t n = (seq.kv_len + ps - 1) / ps;
      needed += n;
      max_pages = std::max(max_pages, n + 1);  // at least one padding entry per row
      tokens += seq.rows;
    }
    pages = needed + 3;  // spare pages no sequence owns
    // Everything the kernel must not read is NaN: spare pages and the tail of each last page.
    const int64_t slot = kv_heads * dim;
    k_cache = ktest::poisoned(pages * page_size * slot);
    v_cache = ktest::poisoned(pages * page_size * slot);
    std::vector<int32_t> order(static_cast<size_t>(pages));
    for (int64_t i = 0; i < pages; ++i) order[i] = static_cast<int32_t>(i);
    std::shuffle(order.begin(), order.end(), rng);  // page tables out of order
    page_table.assign(seqs.size() * max_pages, -1);
    size_t next_page = 0;
    query_start.push_back(0);
    for (size_t si = 0; si < seqs.size(); ++si) {
      const Seq& seq = seqs[si];
      kv_lens.push_back(seq.kv_len);
      query_start.push_back(query_start.back() + seq.rows);
      k_logical.push_back(ktest::random_floats(rng, seq.kv_len * slot));
      v_logical.push_back(ktest::random_floats(rng, seq.kv_len * slot));
      for (int64_t i = 0; i * ps < seq.kv_len; ++i) page_table[si * max_pages + i] = order[next_page++];
      for (int64_t p = 0; p < seq.kv_len; ++p) {
        const int64_t at = (page_table[si * max_pages + p / ps] * ps + p % ps) * slot;
        std::copy_n(k_logical[si].begin() + p * slot, slot, k_cache.begin() + at);
        std::copy_n(v_logical[si].begin() + p * slot, slot, v_cache.begin() + at);
      }
    }
    q = ktest::random_floats(rng, tokens * q_heads * dim, q_scale);
  }

  TensorView cache_view(std::vector<float>& c) {
    return TensorView(c.data(), DType::F32, {pages, page_size, kv_heads, dim});
  }
  TensorView table_view() {
    return TensorView(page_table.data(), DType::I32, {static_cast<int64_t>(seqs.size()), max_pages});
  }
  TensorView lens_view() { return TensorView(kv_lens.data(), DType::I32, {static_cast<int64_t>(seqs.size())}); }
  TensorView start_view() {
    return TensorView(query_start.data(), DType::I32, {static_cast<int64_t>(seqs.size()) + 1});
  }

  void run(const TensorView& out, const TensorView& q_view, float scale, int64_t window) {
    cpu::paged_attention(out, q_view, cache_view(k_cache), cache_view(v_cache), table_view(), lens_view(), start_view(),
                         scale, window);
  }

  // Softmax attention in double over logical positions, by the spec's definition.
  std::vector<double> reference(float scale, int64_t window) const {
    std::vector<double> out(static_cast<size_t>(tokens * q_heads * dim));
    const int64_t slot = kv_heads * dim, group = q_heads / kv_heads;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t r = query_start[s]; r < query_start[s + 1]; ++r) {
        const int64_t pos = seqs[s].kv_len - seqs[s].rows + (r - query_start[s]);
        for (int64_t h = 0; h < q_heads; ++h) {
          const float* qv = &q[(r * q_heads + h) * dim];
          const int64_t g = h / group;
          std::vector<double> score;
          for (int64_t p = 0; p <= pos; ++p) {
            double dot = 0;
            for (int64_t i = 0; i < dim; ++i) dot += double{qv[i]} * k_logical[s][p * slot + g * dim + i];
            const bool visible = window == 0 || pos - p < window;
            score.push_back(visible ? dot * scale : -INFINITY);
          }
          const double mx = *std::max_element(score.begin(), score.end());
          double sum = 0;
          for (double& x : score) sum += (x = std::exp(x - mx));
          for (int64_t i = 0; i < dim; ++i) {
            double acc = 0;
            for (int64_t p = 0; p <= pos; ++p) acc += score[p] * v_logical[s][p * slot + g * dim + i];
            out[(r * q_heads + h) * dim + i] = acc / sum;
          }
        }
      }
    }
    return out;
  }
};

// A whole prompt, a chunk continuing a prompt, a decode row, a sequence idle this step, a first
// token, and a longer chunk: every row kind in one call, of different lengths. Small enough to
// run on the calling thread.
const std::vector<Seq> kMixed = {{11, 11}, {23, 6}, {9, 1}, {14, 0}, {1, 1}, {70, 12}};

}  // namespace

TEST_CASE("paged_attention matches softmax attention over mixed sequences") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  struct Heads {
    int64_t q, kv, dim;
  };
  const Heads heads = GENERATE(Heads{8, 2, 64}, Heads{4, 4, 128}, Heads{6, 1, 64}, Heads{8, 2, 128});
  const int64_t page_size = GENERATE(4, 16), window = GENERATE(0, 5, 64);
  INFO("Hq " << heads.q << " Hkv " << heads.kv << " D " << heads.dim << " page_size " << page_size << " window "
             << window);
  Step step(rng, heads.q, heads.kv, heads.dim, page_size, kMixed);
  const float scale = 1.f / std::sqrt(static_cast<float>(heads.dim));
  const std::vector<double> ref = step.reference(scale, window);
  const int64_t n = step.tokens * heads.q * heads.dim;

  std::vector<float> out = ktest::poisoned(n);
  step.run(TensorView(out.data(), DType::F32, {step.tokens, heads.q, heads.dim}),
           TensorView(step.q.data(), DType::F32, {step.tokens, heads.q, heads.dim}), scale, window);
  CHECK(ktest::count_nan(out.data(), n) == 0);
  CHECK(ktest::rel_error(out, ref) <= 1e-5);

  // Again with out over q: each row's query must be read before its output lands there.
  const TensorView q_view(step.q.data(), DType::F32, {step.tokens, heads.q, heads.dim});
  step.run(q_view, q_view, scale, window);
  CHECK(ktest::rel_error(step.q, ref) <= 1e-5);
}

TEST_CASE("paged_attention splits a large step over threads") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t hq = 8, hkv = 2, dim = 128;
  // Long enough to cross the kernel's threshold for the OpenMP pool.
  Step step(rng, hq, hkv, dim, 16, {{300, 40}, {200, 1}, {256, 16}, {33, 1}});
  const int64_t window = GENERATE(0, 100);
  const float scale = 1.f / std::sqrt(128.f);
  std::vector<float> out = ktest::poisoned(step.tokens * hq * dim);
  step.run(TensorView(out.data(), DType::F32, {step.tokens, hq, dim}),
           TensorView(step.q.data(), DType::F32, {step.tokens, hq, dim}), scale, window);
  CHECK(ktest::count_nan(out.data(), int64_t(out.size())) == 0);
  CHECK(ktest::rel_error(out, step.reference(scale, window)) <= 1e-5);
}

TEST_CASE("paged_attention reads q from a fused qkv buffer") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t hq = 8, hkv = 2, dim = 64, width = (hq + 2 * hkv) * dim;
  Step step(rng, hq, hkv, dim, 8, {{30, 12}, {7, 1}});
  std::vector<float> qkv = ktest::random_floats(rng, step.tokens * width);
  for (int64_t t = 0; t < step.tokens; ++t)
    std::copy_n(step.q.begin() + t * hq * dim, hq * dim, qkv.begin() + t * width);
  TensorView q_view(qkv.data(), DType::F32, {step.tokens, hq, dim});
  q_view.stride[0] = width;
  std::vector<float> out = ktest::poisoned(step.tokens * hq * dim);
  step.run(TensorView(out.data(), DType::F32, {step.tokens, hq, dim}), q_view, 0.125f, 0);
  CHECK(ktest::rel_error(out, step.reference(0.125f, 0)) <= 1e-5);
}

TEST_CASE("paged_attention stays finite for logits far beyond exp's range") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // Scores in the hundreds: exp without max subtraction would overflow to inf.
  Step step(rng, 4, 2, 64, 4, {{40, 9}, {12, 1}}, 60.f);
  const int64_t n = step.tokens * 4 * 64;
  std::vector<float> out = ktest::poisoned(n);
  step.run(TensorView(out.data(), DType::F32, {step.tokens, 4, 64}),
           TensorView(step.q.data(), DType::F32, {step.tokens, 4, 64}), 1.f, 0);
  CHECK(std::count_if(out.begin(), out.end(), [](float x) { return !std::isfinite(x); }) == 0);
  // fp32 rounding of scores this large moves the weights by ~1e-5 relative, so the bound is looser.
  CHECK(ktest::rel_error(out, step.reference(1.f, 0)) <= 1e-4);
}

TEST_CASE("paged_attention rejects inconsistent metadata") {
  std::mt19937_64 rng(5);
  Step step(rng, 4, 2, 16, 4, {{10, 3}, {5, 1}});
  std::vector<float> out = ktest::poisoned(step.tokens * 4 * 16);
  const TensorView out_v(out.data(), DType::F32, {step.tokens, 4, 16});
  const TensorView q_v(step.q.data(), DType::F32, {step.tokens, 4, 16});
  auto run = [&] { step.run(out_v, q_v, 0.25f, 0); };

  REQUIRE(ktest::error_of(run) == "<no error>");
  std::fill(out.begin(), out.end(), NAN);  // a failed call below must leave it so
  SECTION("a page index past the cache") {
    step.page_table[step.max_pages + 1] = static_cast<int32_t>(step.pages);
    STEM_CHECK_ERROR(run(), "page_table[1][1] = " + std::to_string(step.pages));
  }
  SECTION("a negative page index among the used pages") {
    step.page_table[2] = -1;
    STEM_CHECK_ERROR(run(), "page_table[0][2] = -1");
  }
  SECTION("more query rows than cached tokens") {
    step.kv_lens[1] = 0;
    STEM_CHECK_ERROR(run(), "sequence 1 has 1 query rows but only kv_len 0");
  }
  SECTION("kv_len beyond the page table") {
    step.kv_lens[0] = static_cast<int32_t>(step.max_pages * 4 + 1);
    STEM_CHECK_ERROR(run(), "over its page table");
  }
  SECTION("query_start that does not cover the rows") {
    step.query_start[2] = 3;
    STEM_CHECK_ERROR(run(), "query_start[2] must be the 4 query rows");
  }
  SECTION("query_start that decreases, pointing past the rows") {
    step.query_start[1] = 5;
    STEM_CHECK_ERROR(run(), "without decreasing, but sequence 0 spans [0,5)");
  }
  SECTION("a negative sliding window") {
    STEM_CHECK_ERROR(step.run(out_v, q_v, 0.25f, -1), "sliding_window must be >= 0");
  }
  SECTION("heads and shapes") {
    auto kc = step.cache_view(step.k_cache), vc = step.cache_view(step.v_cache);
    auto table = step.table_view(), lens = step.lens_view(), starts = step.start_view();
    const TensorView q3(step.q.data(), DType::F32, {step.tokens, 3, 16});
    STEM_CHECK_ERROR(cpu::paged_attention(TensorView(out.data(), DType::F32, {step.tokens, 3, 16}), q3, kc, vc, table,
                                          lens, starts, 0.25f, 0),
                     "not a multiple of the cache's 2 KV heads");
    const TensorView q8(step.q.data(), DType::F32, {step.tokens, 8, 8});
    STEM_CHECK_ERROR(cpu::paged_attention(TensorView(out.data(), DType::F32, {step.tokens, 8, 8}), q8, kc, vc, table,
                                          lens, starts, 0.25f, 0),
                     "head_dim, as in q");
    STEM_CHECK_ERROR(cpu::paged_attention(out_v, TensorView(step.q.data(), DType::BF16, {step.tokens, 4, 16}), kc, vc,
                                          table, lens, starts, 0.25f, 0),
                     "q must be f32");
    STEM_CHECK_ERROR(cpu::paged_attention(out_v, q_v, kc, vc, TensorView(step.page_table.data(), DType::I64, {1, 1}),
                                          lens, starts, 0.25f, 0),
                     "page_table must be i32");
    STEM_CHECK_ERROR(cpu::paged_attention(out_v, q_v, kc, vc, table, lens,
                                          TensorView(step.query_start.data(), DType::I32, {2}), 0.25f, 0),
                     "sequences + 1");
  }
  CHECK(ktest::count_nan(out.data(), int64_t(out.size())) == int64_t(out.size()));
}
