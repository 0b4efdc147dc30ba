#include "kernels/cpu/embedding.h"
#include "kernels/cuda/embedding.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

std::vector<int32_t> random_ids(std::mt19937_64& rng, int64_t tokens, int64_t vocab) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int32_t& id : ids) id = pick(rng);
  return ids;
}

}  // namespace

TEST_CASE("cuda embedding gathers the same rows as the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [tokens, hidden] =
      GENERATE(table<int64_t, int64_t>({{1, 576}, {7, 576}, {300, 576}, {1, 4096}, {7, 4096}, {300, 4096}}));
  const DType out_dtype = GENERATE(DType::F32, DType::BF16);
  INFO("tokens " << tokens << " hidden " << hidden << " out " << dtype_name(out_dtype));
  const int64_t vocab = 1000;
  const std::vector<float> table = gpu_test::random_bf16_values(rng, vocab * hidden);
  const std::vector<int32_t> ids = random_ids(rng, tokens, vocab);

  // The CPU twin reads the same bf16 table.
  std::vector<uint16_t> table_bf16 = gpu_test::to_bf16(table);
  std::vector<int32_t> ids_host = ids;
  std::vector<float> ref(static_cast<size_t>(tokens * hidden));
  cpu::embedding(TensorView(ref.data(), DType::F32, {tokens, hidden}),
                 TensorView(ids_host.data(), DType::I32, {tokens}),
                 TensorView(table_bf16.data(), DType::BF16, {vocab, hidden}));

  auto d_table = gpu_test::upload_bf16(table);
  auto d_ids = gpu_test::upload(ids);
  DeviceBuffer d_out(static_cast<size_t>(tokens * hidden) * dtype_size(out_dtype));
  d_out.poison();
  cuda::embedding(d_out.view(out_dtype, {tokens, hidden}), d_ids->view(DType::I32, {tokens}),
                  d_table->view(DType::BF16, {vocab, hidden}));
  const std::vector<float> out = gpu_test::download_f32(d_out, out_dtype, tokens * hidden);
  STEM_CHECK_CLOSE(
      "embedding T=" + std::to_string(tokens) + " H=" + std::to_string(hidden) + " out=" + dtype_name(out_dtype), out,
      ref, 0.0);  // a copy of bf16 values: exact in either output type
  CHECK(out == ref);
}

TEST_CASE("cuda embedding turns an out-of-range id into a NaN row, never an out-of-bounds read") {
  STEM_REQUIRE_GPU();
  std::mt19937_64 rng(ktest::test_seed());
  const int64_t vocab = 50, hidden = 64, tokens = 4;
  const std::vector<float> table = gpu_test::random_bf16_values(rng, vocab * hidden);
  const std::vector<int32_t> ids = {3, -1, static_cast<int32_t>(vocab), 49};
  auto d_table = gpu_test::upload_bf16(table);
  auto d_ids = gpu_test::upload(ids);
  DeviceBuffer d_out(tokens * hidden * 4);
  cuda::embedding(d_out.view(DType::F32, {tokens, hidden}), d_ids->view(DType::I32, {tokens}),
                  d_table->view(DType::BF16, {vocab, hidden}));
  const std::vector<float> out = gpu_test::download_f32(d_out, DType::F32, tokens * hidden);
  for (int64_t j = 0; j < hidden; ++j) {
    CHECK(out[j] == table[3 * hidden + j]);
    CHECK(std::isnan(out[hidden + j]));
    CHECK(std::isnan(out[2 * hidden + j]));
    CHECK(out[3 * hidden + j] == table[49 * hidden + j]);
  }
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda embedding rejects bad arguments") {
  alignas(16) static float f32s[64 * 16];
  alignas(16) static uint16_t halves[64 * 16];
  alignas(16) static int32_t ids[8];
  const TensorView out(f32s, DType::F32, {8, 16}), id_v(ids, DType::I32, {8});
  const TensorView table(halves, DType::BF16, {64, 16});

  STEM_CHECK_ERROR(cuda::embedding(out, id_v, TensorView(f32s, DType::F32, {64, 16})), "table must be bf16");
  STEM_CHECK_ERROR(cuda::embedding(out, TensorView(ids, DType::I64, {4}), table), "ids must be i32");
  STEM_CHECK_ERROR(cuda::embedding(TensorView(ids, DType::I32, {8, 16}), id_v, table), "out must be f32 or bf16");
  STEM_CHECK_ERROR(cuda::embedding(out, id_v, TensorView(halves, DType::BF16, {32, 32})), "hidden size");
  STEM_CHECK_ERROR(cuda::embedding(out, TensorView(ids, DType::I32, {7}), table), "tokens, as in out");
  STEM_CHECK_ERROR(
      cuda::embedding(TensorView(f32s, DType::F32, {8, 12}), id_v, TensorView(halves, DType::BF16, {64, 12})),
      "multiple of 8");
  STEM_CHECK_ERROR(cuda::embedding(out, id_v, TensorView(halves + 1, DType::BF16, {64, 16})), "16-byte boundary");
}
