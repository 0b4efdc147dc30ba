#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/token_mask.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

TEST_CASE("token masks set the disallowed ids of constrained rows to -inf") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  // 3 rows of 40 ids (2 words a mask, the second holding ids 32..39); row 1 is unconstrained, rows
  // 0 and 2 share mask 1: ids 0, 5, 31, 32 and 39 allowed. Mask 0 (allowing all) is unused.
  const int64_t V = 40;
  std::vector<float> logits(3 * V);
  for (int64_t i = 0; i < 3 * V; ++i) logits[i] = static_cast<float>(i % 7) - 3.f;
  const std::vector<float> before = logits;
  const uint32_t w0 = (1u << 0) | (1u << 5) | (1u << 31), w1 = (1u << 0) | (1u << 7);
  std::vector<int32_t> masks = {-1, -1, static_cast<int32_t>(w0), static_cast<int32_t>(w1)};
  std::vector<int32_t> which = {1, -1, 1};
  cpu::apply_token_mask(TensorView(logits.data(), DType::F32, {3, V}), TensorView(masks.data(), DType::I32, {2, 2}),
                        TensorView(which.data(), DType::I32, {3}));
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t v = 0; v < V; ++v) {
      INFO("row " << r << " id " << v);
      const bool allowed = r == 1 || v == 0 || v == 5 || v == 31 || v == 32 || v == 39;
      CHECK(logits[r * V + v] == (allowed ? before[r * V + v] : -inf));
    }
}

TEST_CASE("token masks: bad arguments are named") {
  std::vector<float> logits(2 * 40);
  std::vector<int32_t> masks(4), which = {0, 2};
  const TensorView x(logits.data(), DType::F32, {2, 40});
  STEM_CHECK_ERROR(cpu::apply_token_mask(x, TensorView(masks.data(), DType::I32, {4, 1}),
                                         TensorView(which.data(), DType::I32, {2})),
                   "ceil(vocabulary / 32)");
  STEM_CHECK_ERROR(cpu::apply_token_mask(x, TensorView(masks.data(), DType::I32, {2, 2}),
                                         TensorView(which.data(), DType::I32, {1})),
                   "rows, as in logits");
  STEM_CHECK_ERROR(cpu::apply_token_mask(x, TensorView(masks.data(), DType::I32, {2, 2}),
                                         TensorView(which.data(), DType::I32, {2})),
                   "names mask 2 of 2");
}
