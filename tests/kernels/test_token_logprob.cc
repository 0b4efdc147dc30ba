#include <cmath>
#include <limits>

#include "kernels/cpu/token_logprob.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

TEST_CASE("token_logprob is the log-softmax at the target and the lowest argmax") {
  // Row 0: log-softmax of {1, 2, 3} at 0 is 1 − 3 − log(e^-2 + e^-1 + 1); argmax 2.
  // Row 1: ties at the maximum: the lowest id wins; no target: 0.
  // Row 2: NaN counts as −inf (neither the argmax nor a term of the sum).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> logits = {1, 2, 3, 5, 7, 7, nan, 4, 4.5f};
  std::vector<int32_t> targets = {0, -1, 1};
  std::vector<float> lp = ktest::poisoned(3);
  std::vector<int32_t> am(3, -7);
  cpu::token_logprob(TensorView(lp.data(), DType::F32, {3}), TensorView(am.data(), DType::I32, {3}),
                     TensorView(logits.data(), DType::F32, {3, 3}), TensorView(targets.data(), DType::I32, {3}));
  CHECK(lp[0] == Approx(1 - 3 - std::log(std::exp(-2.0) + std::exp(-1.0) + 1)).epsilon(1e-6));
  CHECK(am[0] == 2);
  CHECK(lp[1] == 0.f);
  CHECK(am[1] == 1);
  CHECK(lp[2] == Approx(4 - 4.5 - std::log(std::exp(-0.5) + 1)).epsilon(1e-6));
  CHECK(am[2] == 2);
}

TEST_CASE("token_logprob over random rows sums to a proper distribution") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t rows = 5, vocab = 1000, width = 1003;  // a row stride wider than the row
  std::vector<float> logits = ktest::random_floats(rng, rows * width, 8.f);
  const TensorView view = ktest::column_slice(logits.data(), rows, width, 0, vocab);
  // The probabilities of every token of a row, one target at a time, sum to 1.
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    std::vector<int32_t> targets(rows, -1);
    std::vector<float> lp(rows);
    std::vector<int32_t> am(rows);
    for (int32_t v = 0; v < vocab; ++v) {
      targets[r] = v;
      cpu::token_logprob(TensorView(lp.data(), DType::F32, {rows}), TensorView(am.data(), DType::I32, {rows}), view,
                         TensorView(targets.data(), DType::I32, {rows}));
      total += std::exp(double{lp[r]});
    }
    CHECK(total == Approx(1.0).epsilon(1e-5));
    const float* x = logits.data() + r * width;
    CHECK(x[am[r]] == *std::max_element(x, x + vocab));
  }
}

TEST_CASE("token_logprob rejects targets past the vocabulary") {
  std::vector<float> logits(6, 1.f), lp(2);
  std::vector<int32_t> targets = {0, 3}, am(2);
  CHECK(ktest::contains(ktest::error_of([&] {
                          cpu::token_logprob(TensorView(lp.data(), DType::F32, {2}),
                                             TensorView(am.data(), DType::I32, {2}),
                                             TensorView(logits.data(), DType::F32, {2, 3}),
                                             TensorView(targets.data(), DType::I32, {2}));
                        }),
                        "past the vocabulary"));
}
