// The sampler: greedy, seeded reproducibility, each filter's effect, penalties, logprobs.
#include <cmath>
#include <map>

#include "engine/sampler.h"
#include "tests/test_util.h"

using namespace stem;

namespace {
std::vector<float> logits_of(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}
// The draw is a function of (seed, step) only: the same call with the same seed gives the same
// token, so a histogram varies the seed.
std::map<int32_t, int> histogram(SamplingParams p, const std::vector<float>& logits, int n) {
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) {
    p.seed = 1234 + static_cast<uint64_t>(i);
    ++h[Sampler(p, 0).sample(logits, {}, {}).token];
  }
  return h;
}
}  // namespace

TEST_CASE("greedy picks the argmax, the lower id on ties") {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, 1);
  CHECK(s.sample(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}, {}, {}).token == 1);
}

TEST_CASE("a seed gives the same tokens every time; another seed other tokens") {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = static_cast<float>(std::sin(i * 1.7));
  SamplingParams p;
  p.seed = 42;
  auto run = [&](uint64_t fallback) {
    Sampler s(p, fallback);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits, {}, out).token);
    return out;
  };
  CHECK(run(1) == run(2));
  // Counter-based: the same seed at the same step draws the same token, whatever came before.
  Sampler s(p, 7);
  const auto first = run(1);
  CHECK(s.sample(logits, {}, std::vector<int32_t>(first.begin(), first.begin() + 10)).token == first[10]);
  p.seed = 43;
  auto other = run(1);
  p.seed = 42;
  CHECK(other != run(1));
}

TEST_CASE("temperature 1 sampling follows the model's probabilities") {
  auto logits = logits_of({0.5, 0.3, 0.2});
  auto h = histogram(SamplingParams{}, logits, 20000);
  CHECK(h[0] / 20000.0 == Approx(0.5).margin(0.02));
  CHECK(h[1] / 20000.0 == Approx(0.3).margin(0.02));
  CHECK(h[2] / 20000.0 == Approx(0.2).margin(0.02));
}

TEST_CASE("top-k, top-p and min-p cut the candidates") {
  auto logits = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplingParams p;
  p.top_k = 2;
  auto h = histogram(p, logits, 5000);
  CHECK(h.count(2) == 0);
  CHECK(h.count(3) == 0);
  CHECK(h[0] / 5000.0 == Approx(0.4 / 0.7).margin(0.03));
  p = {};
  p.top_p = 0.65f;  // 0.4 + 0.3 reaches it: tokens 0 and 1
  h = histogram(p, logits, 5000);
  CHECK(h.size() == 2);
  p = {};
  p.min_p = 0.6f;  // keeps p >= 0.24: tokens 0 and 1
  h = histogram(p, logits, 5000);
  CHECK(h.size() == 2);
  CHECK(h.count(0) == 1);
  CHECK(h.count(1) == 1);
}

TEST_CASE("penalties move the argmax away from repeated tokens") {
  std::vector<float> logits{2.0f, 1.9f, 0.0f};
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 1.2f;  // 2.0 / 1.2 < 1.9
  std::vector<int32_t> prompt{0};
  CHECK(Sampler(p, 1).sample(logits, prompt, {}).token == 1);
  p.repetition_penalty = 1.0f;
  p.presence_penalty = 0.5f;  // only output tokens count
  CHECK(Sampler(p, 1).sample(logits, prompt, {}).token == 0);
  std::vector<int32_t> out{0};
  CHECK(Sampler(p, 1).sample(logits, prompt, out).token == 1);
  p.presence_penalty = 0;
  p.frequency_penalty = 0.04f;  // 3 times: 2.0 - 0.12 < 1.9
  std::vector<int32_t> out3{0, 0, 0};
  CHECK(Sampler(p, 1).sample(logits, prompt, out3).token == 1);
}

TEST_CASE("logprobs are the model's log-softmax, top alternatives best first") {
  auto logits = logits_of({0.6, 0.3, 0.1});
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = true;
  p.top_logprobs = 2;
  SampleResult r = Sampler(p, 1).sample(logits, {}, {});
  CHECK(r.token == 0);
  CHECK(r.logprob == Approx(std::log(0.6)).margin(1e-5));
  REQUIRE(r.top.size() == 2);
  CHECK(r.top[0].id == 0);
  CHECK(r.top[1].id == 1);
  CHECK(r.top[1].logprob == Approx(std::log(0.3)).margin(1e-5));
}

TEST_CASE("out-of-range sampling parameters are refused by name") {
  SamplingParams p;
  p.top_p = 0;
  CHECK_THAT(stem::test::error_of([&] { p.validate(); }), Catch::Matchers::Contains("top_p"));
  p = {};
  p.temperature = -1;
  CHECK_THAT(stem::test::error_of([&] { p.validate(); }), Catch::Matchers::Contains("temperature"));
}
