// cuda::sample against its CPU twin on fresh random logits, rows of mixed parameters.
// Tokens must be equal, except where the twin's own trace shows the draw (or a top-p / min-p
// boundary) within kBoundary (relative) of a decision, and the GPU took the other side of
// exactly that decision. Logprobs within 1e-4; top ids exactly; every output written.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "kernels/cpu/sampling.h"
#include "kernels/cuda/sampling.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

// The twin and the kernel sum doubles in different orders: ~1e-12 of the mass at V = 256K at
// worst. A decision closer than this to its boundary may go either way; farther ones may not.
constexpr double kBoundary = 1e-9;
constexpr double kLogprobTol = 1e-4;

struct Case {
  std::vector<float> logits;  // [R, V]
  std::vector<SamplingRow> rows;
  std::vector<int32_t> offsets{0};
  std::vector<PenaltyToken> penalties;
};

// Row r's parameters: a mix of what requests use, greedy ones included.
SamplingRow row_params(int64_t r, std::mt19937_64& rng) {
  SamplingRow p;
  p.seed = rng();
  p.step = rng() % 1000;
  switch (r % 8) {
    case 0: p.temperature = 0; break;
    case 1: p.temperature = 0; p.logprobs = 1; p.top_logprobs = 5; p.repetition_penalty = 1.3f; break;
    case 2: p.temperature = 0.8f; p.top_p = 0.9f; break;
    case 3: p.top_k = 50; break;
    case 4: p.temperature = 1.2f; p.top_k = 40; p.top_p = 0.95f; p.min_p = 0.05f; p.logprobs = 1; p.top_logprobs = 20; break;
    case 5: p.temperature = 0.7f; p.min_p = 0.1f; p.presence_penalty = 0.5f; p.frequency_penalty = 0.3f; break;
    case 6: p.logprobs = 1; break;
    default:
      p.temperature = 0.5f; p.top_k = 1000; p.top_p = 0.8f; p.repetition_penalty = 1.1f;
      p.presence_penalty = -0.4f; p.frequency_penalty = 0.2f; p.top_logprobs = 3;
  }
  return p;
}

Case make_case(std::mt19937_64& rng, int64_t R, int64_t V) {
  Case c;
  c.logits.resize(static_cast<size_t>(R * V));
  for (int64_t r = 0; r < R; ++r) {
    float* row = c.logits.data() + r * V;
    // Flat to peaky rows: the draw then lands among many tokens or among a few.
    std::normal_distribution<float> normal(0.0f, (r % 3 == 0) ? 1.0f : (r % 3 == 1 ? 3.0f : 6.0f));
    for (int64_t i = 0; i < V; ++i) row[i] = normal(rng);
    if (r % 5 == 0) {  // exact ties at the top: argmax, top-k threshold and top-n ties by id
      const int64_t best = std::max_element(row, row + V) - row;
      for (int k = 0; k < 3; ++k) row[rng() % V] = row[best];
    }
    if (r % 16 == 11) {  // a top-k row (kind 3) with more ties at its threshold than the kernel keeps
      const int64_t best = std::max_element(row, row + V) - row;  // as candidates: it walks the row
      for (int k = 0; k < 2500; ++k) row[rng() % V] = row[best];
    }
    c.rows.push_back(row_params(r, rng));
    if (c.rows.back().has_penalties()) {
      // The row's best tokens and some random ones, each once, in a random order.
      std::vector<int32_t> ids(static_cast<size_t>(V));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 8, ids.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      std::vector<int32_t> pick(ids.begin(), ids.begin() + 8);
      for (int k = 0; k < 300; ++k) pick.push_back(static_cast<int32_t>(rng() % V));
      std::sort(pick.begin(), pick.end());
      pick.erase(std::unique(pick.begin(), pick.end()), pick.end());
      std::shuffle(pick.begin(), pick.end(), rng);
      for (int32_t id : pick) {
        PenaltyToken t{id, static_cast<int32_t>(rng() % 4), static_cast<int32_t>(rng() % 2)};
        if (!t.output_count && !t.in_prompt) t.in_prompt = 1;
        c.penalties.push_back(t);
      }
    }
    c.offsets.push_back(static_cast<int32_t>(c.penalties.size()));
  }
  return c;
}

double raw_logprob(const float* row, int64_t V, int32_t id) {
  float m = -INFINITY;
  for (int64_t i = 0; i < V; ++i) m = std::max(m, row[i]);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(row[i]) - m);
  return static_cast<double>(row[id]) - m - std::log(s);
}

// Why the GPU may have drawn `gpu` where the twin drew something else; empty if it may not.
std::string justified(const Case& c, int64_t r, int64_t V, int32_t gpu) {
  const float* row = c.logits.data() + r * V;
  const PenaltyToken* pen = c.penalties.data() + c.offsets[r];
  const int64_t count = c.offsets[r + 1] - c.offsets[r];
  const cpu::SampleTrace t = cpu::sample_row_trace(row, V, c.rows[r], pen, count);
  if (t.greedy) return "";
  // (a) the draw: gpu and the twin's token are neighbours in the kept list (nothing but zero
  // mass between them) and the target lies within kBoundary of the cumulative sum between them.
  const auto at = [&](int32_t id) { return std::find(t.kept.begin(), t.kept.end(), id) - t.kept.begin(); };
  const auto a = at(t.token), b = at(gpu);
  const auto n = static_cast<ptrdiff_t>(t.kept.size());
  if (a < n && b < n) {
    const auto lo = std::min(a, b), hi = std::max(a, b);
    if (t.cum[hi - 1] == t.cum[lo] && std::abs(t.target - t.cum[lo]) <= kBoundary * t.cum.back())
      return "draw within " + std::to_string(std::abs(t.target - t.cum[lo]) / t.cum.back()) + " of a boundary";
  }
  // (b) the kept set: a top-p or min-p decision within kBoundary, and the twin with that
  // parameter one float step to either side draws the GPU's token.
  auto nudged = [&](float SamplingRow::*field) {
    for (float to : {0.0f, 2.0f}) {
      SamplingRow p = c.rows[r];
      p.*field = std::nextafter(p.*field, to);
      if (cpu::sample_row_trace(row, V, p, pen, count).token == gpu) return true;
    }
    return false;
  };
  if (t.top_p_margin <= kBoundary && nudged(&SamplingRow::top_p)) return "top-p boundary";
  if (t.min_p_margin <= kBoundary && nudged(&SamplingRow::min_p)) return "min-p boundary";
  return "";
}

void check_case(std::mt19937_64& rng, int64_t R, int64_t V) {
  INFO("R " << R << " V " << V);
  const Case c = make_case(rng, R, V);
  auto logits = gpu_test::upload(c.logits);
  auto rows = gpu_test::upload(c.rows);
  auto offsets = gpu_test::upload(c.offsets);
  auto penalties = std::make_unique<DeviceBuffer>(std::max<size_t>(c.penalties.size(), 1) * sizeof(PenaltyToken));
  if (!c.penalties.empty()) penalties->upload(c.penalties);
  DeviceBuffer scratch(static_cast<size_t>(R * V) * 4), token(R * 4), logprob(R * 4),
      top_ids(R * kMaxTopLogprobs * 4), top_lp(R * kMaxTopLogprobs * 4);
  scratch.poison();  // NaN: a row that reads scratch without writing it goes wrong
  logprob.poison();
  top_lp.poison();
  CUDA_CHECK(cudaMemset(token.get(), 0x7F, token.bytes()));  // ints: 0x7F7F7F7F, no valid id
  CUDA_CHECK(cudaMemset(top_ids.get(), 0x7F, top_ids.bytes()));
  const SamplingInputs in{rows->as<SamplingRow>(), offsets->as<int32_t>(), penalties->as<PenaltyToken>(), R};
  const SamplingOutputs out{token.view(DType::I32, {R}), logprob.view(DType::F32, {R}),
                            top_ids.view(DType::I32, {R, kMaxTopLogprobs}),
                            top_lp.view(DType::F32, {R, kMaxTopLogprobs})};
  cuda::sample(out, logits->view(DType::F32, {R, V}), in, scratch.view(DType::F32, {R, V}));
  const auto g_token = token.download<int32_t>(R);
  const auto g_lp = logprob.download<float>(R);
  const auto g_top = top_ids.download<int32_t>(R * kMaxTopLogprobs);
  const auto g_top_lp = top_lp.download<float>(R * kMaxTopLogprobs);

  std::vector<int32_t> c_token(R), c_top(R * kMaxTopLogprobs);
  std::vector<float> c_lp(R), c_top_lp(R * kMaxTopLogprobs);
  const SamplingInputs host_in{c.rows.data(), c.offsets.data(), c.penalties.data(), R};
  cpu::sample({TensorView(c_token.data(), DType::I32, {R}), TensorView(c_lp.data(), DType::F32, {R}),
               TensorView(c_top.data(), DType::I32, {R, kMaxTopLogprobs}),
               TensorView(c_top_lp.data(), DType::F32, {R, kMaxTopLogprobs})},
              TensorView(const_cast<float*>(c.logits.data()), DType::F32, {R, V}), host_in, TensorView());

  int64_t exceptions = 0;
  double worst_lp = 0;
  for (int64_t r = 0; r < R; ++r) {
    INFO("row " << r << " (kind " << r % 8 << ")");
    const float* row = c.logits.data() + r * V;
    if (g_token[r] != c_token[r]) {
      REQUIRE(g_token[r] >= 0);
      REQUIRE(g_token[r] < V);
      const std::string why = justified(c, r, V, g_token[r]);
      INFO("gpu " << g_token[r] << " twin " << c_token[r]);
      CHECK(!why.empty());
      if (!why.empty()) {
        ++exceptions;
        WARN("row " << r << ": gpu token " << g_token[r] << ", twin " << c_token[r] << ": " << why);
      }
    }
    // The logprob of the token the GPU chose (the twin's, where they agree).
    const double ref = c.rows[r].wants_logprobs()
                           ? (g_token[r] == c_token[r] ? c_lp[r] : raw_logprob(row, V, g_token[r]))
                           : 0.0;
    CHECK(std::abs(g_lp[r] - ref) <= kLogprobTol);
    worst_lp = std::max(worst_lp, std::abs(g_lp[r] - ref));
    for (int j = 0; j < kMaxTopLogprobs; ++j) {
      const int64_t at = r * kMaxTopLogprobs + j;
      CHECK(g_top[at] == c_top[at]);
      CHECK(std::abs(g_top_lp[at] - c_top_lp[at]) <= kLogprobTol);
      worst_lp = std::max(worst_lp, static_cast<double>(std::abs(g_top_lp[at] - c_top_lp[at])));
    }
  }
  const std::string what = "sample R=" + std::to_string(R) + " V=" + std::to_string(V);
  gpu_test::report_error(what + " logprob max abs diff", worst_lp);
  gpu_test::report_error(what + " token boundary exceptions", static_cast<double>(exceptions));
}

}  // namespace

TEST_CASE("cuda sample matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [R, V] = GENERATE(table<int64_t, int64_t>(
      {{1, 128256}, {8, 128256}, {37, 49152}, {64, 128256}, {256, 49152}, {256, 128256}}));
  check_case(rng, R, V);
}

TEST_CASE("cuda sample: a seed gives the same tokens every run") {
  STEM_REQUIRE_GPU();
  std::mt19937_64 rng(ktest::test_seed());
  const int64_t R = 16, V = 32000;
  const Case c = make_case(rng, R, V);
  auto logits = gpu_test::upload(c.logits);
  auto rows = gpu_test::upload(c.rows);
  auto offsets = gpu_test::upload(c.offsets);
  auto penalties = gpu_test::upload(c.penalties);
  DeviceBuffer scratch(static_cast<size_t>(R * V) * 4), token(R * 4), logprob(R * 4),
      top_ids(R * kMaxTopLogprobs * 4), top_lp(R * kMaxTopLogprobs * 4);
  const SamplingInputs in{rows->as<SamplingRow>(), offsets->as<int32_t>(), penalties->as<PenaltyToken>(), R};
  const SamplingOutputs out{token.view(DType::I32, {R}), logprob.view(DType::F32, {R}),
                            top_ids.view(DType::I32, {R, kMaxTopLogprobs}),
                            top_lp.view(DType::F32, {R, kMaxTopLogprobs})};
  std::vector<int32_t> first;
  for (int run = 0; run < 5; ++run) {
    cuda::sample(out, logits->view(DType::F32, {R, V}), in, scratch.view(DType::F32, {R, V}));
    const auto got = token.download<int32_t>(R);
    if (run == 0) first = got;
    CHECK(got == first);
  }
}

// Timings (reported with STEM_TEST_REPORT): batch 256 at a 128K vocabulary, all greedy and mixed.
TEST_CASE("cuda sample: time per batch") {
  STEM_REQUIRE_GPU();
  std::mt19937_64 rng(ktest::test_seed());
  const int64_t R = 256, V = 128256;
  Case c = make_case(rng, R, V);
  for (const bool greedy : {true, false}) {
    std::vector<SamplingRow> rows = c.rows;
    std::vector<int32_t> offsets = c.offsets;
    if (greedy) {
      for (SamplingRow& p : rows) p = SamplingRow{.temperature = 0.0f};
      std::fill(offsets.begin(), offsets.end(), 0);
    }
    auto logits = gpu_test::upload(c.logits);
    auto d_rows = gpu_test::upload(rows);
    auto d_offsets = gpu_test::upload(offsets);
    auto penalties = gpu_test::upload(c.penalties);
    DeviceBuffer scratch(static_cast<size_t>(R * V) * 4), token(R * 4), logprob(R * 4),
        top_ids(R * kMaxTopLogprobs * 4), top_lp(R * kMaxTopLogprobs * 4);
    const SamplingInputs in{d_rows->as<SamplingRow>(), d_offsets->as<int32_t>(), penalties->as<PenaltyToken>(), R};
    const SamplingOutputs out{token.view(DType::I32, {R}), logprob.view(DType::F32, {R}),
                              top_ids.view(DType::I32, {R, kMaxTopLogprobs}),
                              top_lp.view(DType::F32, {R, kMaxTopLogprobs})};
    auto launch = [&] { cuda::sample(out, logits->view(DType::F32, {R, V}), in, scratch.view(DType::F32, {R, V})); };
    launch();
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    constexpr int kIters = 20;
    CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < kIters; ++i) launch();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    const double per = ms / kIters, gbs = static_cast<double>(R * V) * 4 / (per * 1e-3) / 1e9;
    WARN("sample R=256 V=128256 " << (greedy ? "greedy" : "mixed") << ": " << per << " ms (" << gbs
                                  << " GB/s of logits read once)");
    gpu_test::report_error(std::string("sample R=256 V=128256 ms ") + (greedy ? "greedy" : "mixed"), per);
    CHECK(per > 0);
  }
}
