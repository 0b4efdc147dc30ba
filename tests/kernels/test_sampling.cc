// The CPU sampling op (the twin of cuda::sample): each parameter's effect, the seeded draw's
// definition (inverse CDF in id order at u = f(seed, step)), its distribution over seeds,
// penalties against hand-computed values, logprobs, ties.
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "kernels/cpu/sampling.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

struct Out {
  std::vector<int32_t> token, top_ids;
  std::vector<float> logprob, top_lp;
};

// Runs the op over R rows of logits [R, V] with one parameter row each.
Out run(const std::vector<float>& logits, int64_t V, const std::vector<SamplingRow>& rows,
        const std::vector<std::vector<PenaltyToken>>& pens = {}) {
  const auto R = static_cast<int64_t>(rows.size());
  std::vector<int32_t> offsets{0};
  std::vector<PenaltyToken> flat;
  for (int64_t r = 0; r < R; ++r) {
    if (r < static_cast<int64_t>(pens.size())) flat.insert(flat.end(), pens[r].begin(), pens[r].end());
    offsets.push_back(static_cast<int32_t>(flat.size()));
  }
  Out o{std::vector<int32_t>(R, -7), std::vector<int32_t>(R * kMaxTopLogprobs, -7), std::vector<float>(R, NAN),
        std::vector<float>(R * kMaxTopLogprobs, NAN)};
  std::vector<float> scratch(static_cast<size_t>(R * V), NAN);
  cpu::sample({TensorView(o.token.data(), DType::I32, {R}), TensorView(o.logprob.data(), DType::F32, {R}),
               TensorView(o.top_ids.data(), DType::I32, {R, kMaxTopLogprobs}),
               TensorView(o.top_lp.data(), DType::F32, {R, kMaxTopLogprobs})},
              TensorView(const_cast<float*>(logits.data()), DType::F32, {R, V}),
              SamplingInputs{rows.data(), offsets.data(), flat.data(), R},
              TensorView(scratch.data(), DType::F32, {R, V}));
  return o;
}

int32_t one(const std::vector<float>& logits, const SamplingRow& row, std::vector<PenaltyToken> pen = {}) {
  return run(logits, static_cast<int64_t>(logits.size()), {row}, {pen}).token[0];
}

std::vector<float> log_of(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

SamplingRow seeded(uint64_t seed, float temperature = 1.0f) {
  SamplingRow r;
  r.seed = seed;
  r.temperature = temperature;
  return r;
}

// Tokens drawn with seeds 0..n-1 (step 0), counted.
std::map<int32_t, int> histogram(const std::vector<float>& logits, SamplingRow row, int n) {
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) {
    row.seed = static_cast<uint64_t>(i);
    ++h[one(logits, row)];
  }
  return h;
}

// Pearson's chi-square of the counts against the expected probabilities (all tokens).
double chi_square(const std::map<int32_t, int>& h, const std::vector<double>& p, int n) {
  double x2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const auto it = h.find(static_cast<int32_t>(i));
    const double got = it == h.end() ? 0 : it->second, want = p[i] * n;
    if (want == 0) {
      CHECK(got == 0);
      continue;
    }
    x2 += (got - want) * (got - want) / want;
  }
  return x2;
}

}  // namespace

TEST_CASE("sampling: greedy is the argmax, the lower id on ties; NaN never wins") {
  SamplingRow g = seeded(1, 0.0f);
  CHECK(one({0.1f, 3.0f, -1.0f, 3.0f}, g) == 1);
  CHECK(one({NAN, 0.5f, 2.0f, NAN}, g) == 2);
  SamplingRow k1 = seeded(1);
  k1.top_k = 1;  // top_k 1 is greedy too
  CHECK(one({0.1f, 3.0f, -1.0f, 3.0f}, k1) == 1);
  CHECK(one({-INFINITY, -INFINITY}, seeded(3)) == 0);  // nothing to draw from: the argmax
}

TEST_CASE("sampling: the draw is the inverse CDF over the kept tokens in id order at u(seed, step)") {
  const std::vector<double> p{0.1, 0.35, 0.05, 0.3, 0.2};
  const auto logits = log_of(p);
  for (uint64_t seed = 0; seed < 200; ++seed)
    for (uint64_t step = 0; step < 3; ++step) {
      SamplingRow r = seeded(seed);
      r.step = step;
      const double u = sampling_uniform(seed, step);
      double cum = 0;
      int32_t want = -1;
      for (int32_t i = 0; i < 5 && want < 0; ++i)
        if (u < (cum += p[i])) want = i;
      // Only a draw within rounding of a boundary may differ; none of these 600 is.
      CHECK(one(logits, r) == want);
    }
}

TEST_CASE("sampling: a seed and step give the same token every time; the draw moves with both") {
  std::vector<float> logits(300);
  for (int i = 0; i < 300; ++i) logits[i] = static_cast<float>(std::sin(i * 1.7) * 2);
  std::vector<int32_t> a, b, c;
  for (uint64_t step = 0; step < 64; ++step) {
    SamplingRow r = seeded(42);
    r.step = step;
    a.push_back(one(logits, r));
    b.push_back(one(logits, r));
    r.seed = 43;
    c.push_back(one(logits, r));
  }
  CHECK(a == b);
  CHECK(a != c);
  CHECK(std::set<int32_t>(a.begin(), a.end()).size() > 10);
  CHECK(sampling_uniform(7, 0) != sampling_uniform(7, 1));
  CHECK(sampling_uniform(7, 0) != sampling_uniform(8, 0));
}

TEST_CASE("sampling: over many seeds the tokens follow the expected probabilities (chi-square)") {
  constexpr int kN = 20000;
  // df = 5 (6 tokens): P(X² > 22.5) = 0.0004. The seeds are fixed, so the result is too.
  const std::vector<double> p{0.3, 0.25, 0.2, 0.12, 0.08, 0.05};
  const auto logits = log_of(p);
  CHECK(chi_square(histogram(logits, seeded(0), kN), p, kN) < 22.5);

  // Temperature 0.5: p_i ∝ p_i^2.
  std::vector<double> q;
  for (double x : p) q.push_back(x * x);
  const double sq = std::accumulate(q.begin(), q.end(), 0.0);
  for (double& x : q) x /= sq;
  CHECK(chi_square(histogram(logits, seeded(0, 0.5f), kN), q, kN) < 22.5);

  // top-k 3 renormalises the three best (df = 2: P(X² > 15.2) = 0.0005).
  SamplingRow k = seeded(0);
  k.top_k = 3;
  const std::vector<double> pk{0.3 / 0.75, 0.25 / 0.75, 0.2 / 0.75, 0, 0, 0};
  CHECK(chi_square(histogram(logits, k, kN), pk, kN) < 15.2);
}

TEST_CASE("sampling: top-k keeps the k best and every tie at the k-th value") {
  const std::vector<float> logits{1.0f, 3.0f, 2.0f, 2.0f, 0.5f};
  SamplingRow r = seeded(0);
  r.top_k = 2;  // 3.0 and both 2.0s (a tie at the threshold is kept whole)
  const auto h = histogram(logits, r, 3000);
  CHECK(h.size() == 3);
  CHECK(h.count(1) == 1);
  CHECK(h.count(2) == 1);
  CHECK(h.count(3) == 1);
}

TEST_CASE("sampling: top-p keeps the smallest best-first set of value groups that reaches top_p") {
  const auto logits = log_of({0.1, 0.4, 0.3, 0.2});
  SamplingRow r = seeded(0);
  r.top_p = 0.65f;  // 0.4 + 0.3 reaches it: tokens 1 and 2
  auto h = histogram(logits, r, 3000);
  CHECK(h.size() == 2);
  CHECK(h.count(1) == 1);
  CHECK(h.count(2) == 1);
  r.top_p = 0.35f;  // the best alone reaches it
  CHECK(histogram(logits, r, 500).size() == 1);
  r.top_p = 0.75f;  // needs the third as well
  CHECK(histogram(logits, r, 3000).size() == 3);
  // top-p applies to the top-k set renormalised: of {0.4, 0.3}, 0.4/0.7 < 0.6 needs both.
  r.top_k = 2;
  r.top_p = 0.6f;
  CHECK(histogram(logits, r, 3000).size() == 2);
}

TEST_CASE("sampling: min-p keeps tokens with p >= min_p * p_max, after temperature") {
  const auto logits = log_of({0.1, 0.4, 0.3, 0.2});
  SamplingRow r = seeded(0);
  r.min_p = 0.6f;  // p >= 0.24: tokens 1 and 2
  auto h = histogram(logits, r, 3000);
  CHECK(h.size() == 2);
  CHECK(h.count(1) == 1);
  CHECK(h.count(2) == 1);
  r.temperature = 0.5f;  // p/p_max becomes 1, 0.56, 0.25, 0.06: only the best reaches 0.6
  CHECK(histogram(logits, r, 1000).size() == 1);
}

TEST_CASE("sampling: penalties change exactly the listed tokens, as vLLM computes them") {
  // Temperature 1, no filters: the trace's masses are exp(w − max), so w can be read back.
  const std::vector<float> logits{2.0f, -1.5f, 0.5f, 1.0f, -0.25f};
  SamplingRow r = seeded(5);
  r.repetition_penalty = 1.25f;
  r.presence_penalty = 0.5f;
  r.frequency_penalty = 0.125f;
  const std::vector<PenaltyToken> pen{{0, 0, 1}, {1, 2, 0}, {3, 3, 1}};
  std::vector<double> want(logits.begin(), logits.end());
  want[0] = 2.0 / 1.25;                                // prompt only: repetition
  want[1] = -1.5 * 1.25 - (0.125 * 2 + 0.5);           // output twice, negative: times rep
  want[3] = 1.0 / 1.25 - (0.125 * 3 + 0.5);            // both
  const cpu::SampleTrace t = cpu::sample_row_trace(logits.data(), 5, r, pen.data(), 3);
  REQUIRE(t.kept.size() == 5);
  const double top = *std::max_element(want.begin(), want.end());
  for (size_t i = 0; i < 5; ++i) {
    const double mass = t.cum[i] - (i ? t.cum[i - 1] : 0.0);
    INFO("token " << i);
    CHECK(std::log(mass) + top == Approx(want[i]).margin(1e-6));
  }
  // Greedy moves off a repeated token.
  SamplingRow g = seeded(1, 0.0f);
  g.repetition_penalty = 1.2f;  // 2.0 / 1.2 < 1.9
  CHECK(one({2.0f, 1.9f, 0.0f}, g, {{0, 0, 1}}) == 1);
  g.repetition_penalty = 1.0f;
  g.frequency_penalty = 0.04f;  // 3 times: 2.0 − 0.12 < 1.9
  CHECK(one({2.0f, 1.9f, 0.0f}, g, {{0, 3, 0}}) == 1);
  CHECK(one({2.0f, 1.9f, 0.0f}, g, {{0, 0, 1}}) == 0);  // presence/frequency: output tokens only
}

TEST_CASE("sampling: logprobs are the raw log-softmax; top ids best first, ties by id, the rest -1") {
  const std::vector<float> logits{0.5f, 2.0f, 1.0f, 2.0f, -3.0f};
  SamplingRow r = seeded(9, 0.0f);
  r.logprobs = 1;
  r.top_logprobs = 3;
  r.repetition_penalty = 3.0f;  // moves the choice, not the reported distribution
  const Out o = run(logits, 5, {r}, {{{1, 1, 0}, {3, 1, 0}}});
  double s = 0;
  for (float x : logits) s += std::exp(x - 2.0);
  const double lse = 2.0 + std::log(s);
  CHECK(o.token[0] == 2);  // 2.0/3 < 1.0
  CHECK(o.logprob[0] == Approx(1.0 - lse).margin(1e-6));
  CHECK(o.top_ids[0] == 1);
  CHECK(o.top_ids[1] == 3);
  CHECK(o.top_ids[2] == 2);
  CHECK(o.top_lp[0] == Approx(2.0 - lse).margin(1e-6));
  for (int j = 3; j < kMaxTopLogprobs; ++j) {
    CHECK(o.top_ids[j] == -1);
    CHECK(o.top_lp[j] == 0.0f);
  }
  r.logprobs = 0;
  r.top_logprobs = 0;
  CHECK(run(logits, 5, {r}).logprob[0] == 0.0f);  // not asked for: 0, as before
}

TEST_CASE("sampling: rows are independent; the shapes are checked") {
  const std::vector<float> one_row{0.0f, 1.0f, 5.0f, 2.0f};
  std::vector<float> logits;
  for (int r = 0; r < 3; ++r) logits.insert(logits.end(), one_row.begin(), one_row.end());
  std::vector<SamplingRow> rows{seeded(1, 0.0f), seeded(2), seeded(3, 0.0f)};
  rows[1].top_k = 2;
  const Out o = run(logits, 4, rows);
  CHECK(o.token[0] == 2);
  CHECK((o.token[1] == 2 || o.token[1] == 3));
  CHECK(o.token[2] == 2);
  std::vector<int32_t> tok(2);
  std::vector<float> lp(2), tl(2 * kMaxTopLogprobs);
  std::vector<int32_t> ti(2 * kMaxTopLogprobs), offsets{0, 0, 0};
  // Catch2 v2 and v3 spell their substring matcher differently: STEM_CHECK_ERROR reads the same in both.
  STEM_CHECK_ERROR(cpu::sample({TensorView(tok.data(), DType::I32, {2}), TensorView(lp.data(), DType::F32, {2}),
                                TensorView(ti.data(), DType::I32, {2, kMaxTopLogprobs}),
                                TensorView(tl.data(), DType::F32, {2, kMaxTopLogprobs})},
                               TensorView(logits.data(), DType::F32, {3, 4}),
                               SamplingInputs{rows.data(), offsets.data(), nullptr, 3}, TensorView()),
                   "token");
}
