#include <cmath>
#include <limits>

#include "kernels/cpu/token_logprob.h"
#include "kernels/cuda/token_logprob.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

TEST_CASE("cuda token_logprob matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // SmolLM2's and Qwen2.5's vocabularies; a row stride wider than the row.
  const auto [rows, vocab] = GENERATE(table<int64_t, int64_t>({{1, 49152}, {37, 49152}, {5, 151936}, {300, 151936}}));
  INFO("rows " << rows << " vocab " << vocab);
  const int64_t width = vocab + 16;
  std::vector<float> logits = ktest::random_floats(rng, rows * width, 12.f);
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  for (auto& t : targets) t = pick(rng);
  targets[0] = -1;
  // Row 0 ties its maximum at two ids (the lower one wins) and holds a NaN (read as −inf).
  logits[17] = logits[vocab - 3] = 40.f;
  logits[5] = std::numeric_limits<float>::quiet_NaN();
  if (rows > 1) targets[1] = static_cast<int32_t>(vocab - 1);

  std::vector<float> ref_lp(static_cast<size_t>(rows));
  std::vector<int32_t> ref_am(static_cast<size_t>(rows));
  cpu::token_logprob(TensorView(ref_lp.data(), DType::F32, {rows}), TensorView(ref_am.data(), DType::I32, {rows}),
                     ktest::column_slice(logits.data(), rows, width, 0, vocab),
                     TensorView(targets.data(), DType::I32, {rows}));

  auto d_logits = gpu_test::upload(logits);
  auto d_targets = gpu_test::upload(targets);
  DeviceBuffer d_lp(static_cast<size_t>(rows) * 4), d_am(static_cast<size_t>(rows) * 4);
  d_lp.poison();
  d_am.poison();
  cuda::token_logprob(d_lp.view(DType::F32, {rows}), d_am.view(DType::I32, {rows}),
                      gpu_test::column_slice(*d_logits, DType::F32, rows, width, 0, vocab),
                      d_targets->view(DType::I32, {rows}));
  const std::vector<float> lp = d_lp.download<float>(static_cast<size_t>(rows));
  const std::vector<int32_t> am = d_am.download<int32_t>(static_cast<size_t>(rows));
  CHECK(am[0] == 17);
  CHECK(lp[0] == 0.f);
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    CHECK(am[r] == ref_am[r]);
    worst = std::max(worst, std::abs(double{lp[r]} - ref_lp[r]));
  }
  gpu_test::report_error("token_logprob rows=" + std::to_string(rows) + " V=" + std::to_string(vocab), worst);
  CHECK(worst <= 1e-5);
}

TEST_CASE("cuda token_logprob rejects bad arguments") {
  alignas(16) static float f[64];
  alignas(16) static int32_t i[64];
  const TensorView lp(f, DType::F32, {2}), am(i, DType::I32, {2}), logits(f, DType::F32, {2, 8});
  STEM_CHECK_ERROR(cuda::token_logprob(lp, am, logits, TensorView(i, DType::I32, {3})), "rows, as in logits");
  STEM_CHECK_ERROR(cuda::token_logprob(lp, am, TensorView(i, DType::I32, {2, 8}), TensorView(i, DType::I32, {2})),
                   "logits");
}
