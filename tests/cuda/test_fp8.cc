// The device's per-token FP8 quantization (kernels/cuda/fp8.cuh) against its CPU twin
// (kernels/cpu/fp8.h) on the same bf16 values: the same scales and the same codes, bit for bit
// (both divide in IEEE f32 and round to nearest even with saturation).
#include <cstring>

#include "kernels/cpu/fp8.h"
#include "kernels/cuda/fp8.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

TEST_CASE("cuda FP8 per-token quantization matches the CPU twin bit for bit") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // SmolLM2-135M's hidden size, Llama-3.1-8B's hidden and intermediate sizes; a row stride wider
  // than the row (the down projection reads gate out of the fused gate_up buffer).
  const auto [rows, cols, stride] =
      GENERATE(table<int64_t, int64_t, int64_t>({{1, 576, 576}, {7, 4096, 4096}, {300, 14336, 28672}, {5, 100, 104}}));
  INFO("rows " << rows << " cols " << cols << " stride " << stride);
  std::vector<float> x = ktest::random_floats(rng, rows * stride, 4.f);
  for (int64_t k = 0; k < stride; ++k) {
    x[k] *= (k % 11 == 0) ? 300.f : 1e-3f;  // row 0: outliers, and the rest down in E4M3's subnormals
    if (rows > 2) x[2 * stride + k] = 0.f;  // a row of zeros: scale 1
  }
  x = gpu_test::round_to_bf16(x);

  std::vector<uint8_t> want(static_cast<size_t>(rows * cols));
  std::vector<float> want_scales(static_cast<size_t>(rows));
  TensorView host_x(x.data(), DType::F32, {rows, cols});
  host_x.stride[0] = stride;
  cpu::quantize_rows_fp8(TensorView(want.data(), DType::F8E4M3, {rows, cols}),
                         TensorView(want_scales.data(), DType::F32, {rows}), host_x);

  auto d_x = gpu_test::upload_bf16(x);
  DeviceBuffer d_codes(static_cast<size_t>(rows * cols)), d_scales(static_cast<size_t>(rows) * 4);
  d_codes.poison();
  d_scales.poison();
  TensorView dev_x = d_x->view(DType::BF16, {rows, cols});
  dev_x.stride[0] = stride;
  cuda::quantize_rows_fp8(d_codes.view(DType::F8E4M3, {rows, cols}), d_scales.view(DType::F32, {rows}), dev_x);
  const std::vector<uint8_t> codes = d_codes.download<uint8_t>(want.size());
  const std::vector<float> scales = d_scales.download<float>(want_scales.size());
  int64_t scale_diff = 0, code_diff = 0;
  for (size_t r = 0; r < scales.size(); ++r) scale_diff += std::memcmp(&scales[r], &want_scales[r], 4) != 0;
  for (size_t i = 0; i < codes.size(); ++i) code_diff += codes[i] != want[i];
  CHECK(scale_diff == 0);
  CHECK(code_diff == 0);
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda FP8 quantization rejects bad arguments") {
  alignas(16) static uint16_t x[4 * 64];
  alignas(16) static uint8_t codes[4 * 64];
  alignas(16) static float scales[4];
  const TensorView xv(x, DType::BF16, {4, 64}), cv(codes, DType::F8E4M3, {4, 64}), sv(scales, DType::F32, {4});
  STEM_CHECK_ERROR(cuda::quantize_rows_fp8(cv, sv, TensorView(x, DType::F32, {4, 32})), "x must be bf16");
  STEM_CHECK_ERROR(cuda::quantize_rows_fp8(TensorView(codes, DType::BF16, {4, 32}), sv, xv), "codes must be f8e4m3");
  STEM_CHECK_ERROR(cuda::quantize_rows_fp8(TensorView(codes, DType::F8E4M3, {4, 32}), sv, xv), "must match x");
  STEM_CHECK_ERROR(cuda::quantize_rows_fp8(cv, TensorView(scales, DType::F32, {3}), xv), "one scale per row");
}
