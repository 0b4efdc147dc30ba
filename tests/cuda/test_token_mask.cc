#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/token_mask.h"
#include "kernels/cuda/token_mask.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;

TEST_CASE("cuda token masks match the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // SmolLM2's and Qwen2.5's vocabularies (49152 = 1536 whole words; 151936 = 4748); a vocabulary
  // that ends mid-word; a row stride wider than the row.
  const auto [rows, vocab] = GENERATE(table<int64_t, int64_t>({{1, 49152}, {64, 151936}, {7, 1000}}));
  INFO("rows " << rows << " vocab " << vocab);
  const int64_t width = vocab + 16, words = (vocab + 31) / 32, n_masks = 3;
  std::vector<float> logits = ktest::random_floats(rng, rows * width, 8.f);
  // Mask 0: sparse (about 1 id in 64 allowed, as a JSON grammar's), mask 1: dense, mask 2: all.
  std::vector<int32_t> masks(static_cast<size_t>(n_masks * words));
  for (int64_t w = 0; w < words; ++w) {
    masks[w] = static_cast<int32_t>(static_cast<uint32_t>(rng()) & static_cast<uint32_t>(rng()) &
                                    static_cast<uint32_t>(rng()) & static_cast<uint32_t>(rng()) &
                                    static_cast<uint32_t>(rng()) & static_cast<uint32_t>(rng()));
    masks[words + w] = static_cast<int32_t>(static_cast<uint32_t>(rng()) | static_cast<uint32_t>(rng()));
    masks[2 * words + w] = -1;
  }
  std::vector<int32_t> which(static_cast<size_t>(rows));
  // -1 (unmasked), 0, 1, 2, -1, ...; a single row takes the sparse mask, so that something is masked.
  for (int64_t r = 0; r < rows; ++r) which[r] = rows == 1 ? 0 : static_cast<int32_t>(r % (n_masks + 1)) - 1;

  std::vector<float> want = logits;
  cpu::apply_token_mask(ktest::column_slice(want.data(), rows, width, 0, vocab),
                        TensorView(masks.data(), DType::I32, {n_masks, words}),
                        TensorView(which.data(), DType::I32, {rows}));
  auto d_logits = gpu_test::upload(logits);
  auto d_masks = gpu_test::upload(masks);
  auto d_which = gpu_test::upload(which);
  cuda::apply_token_mask(gpu_test::column_slice(*d_logits, DType::F32, rows, width, 0, vocab),
                         d_masks->view(DType::I32, {n_masks, words}), d_which->view(DType::I32, {rows}));
  const std::vector<float> got = d_logits->download<float>(logits.size());
  int64_t masked = 0, differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;  // bit for bit (no arithmetic)
    masked += std::isinf(want[i]);
  }
  CHECK(differ == 0);
  CHECK(masked > 0);
  gpu_test::report_error("token_mask rows=" + std::to_string(rows) + " V=" + std::to_string(vocab),
                         static_cast<double>(differ));
}
