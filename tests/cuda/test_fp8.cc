// The device's per-token FP8 quantization (kernels/cuda/fp8.cuh) against its CPU twin
// (kernels/cpu/fp8.h) on the same bf16 values: the same scales and the same codes, bit for bit
// (both divide in IEEE f32 and round to nearest even with saturation).
#include <cstring>

#include "kernels/cpu/fp8.h"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

// Checks codes/scales (device) against cpu::quantize_rows_fp8 of the f32 values `x` (host) holds,
// bit for bit.
void check_quantized(const TensorView& x, const DeviceBuffer& d_codes, const DeviceBuffer& d_scales) {
  const int64_t rows = x.shape[0], cols = x.shape[1];
  std::vector<uint8_t> want(static_cast<size_t>(rows * cols));
  std::vector<float> want_scales(static_cast<size_t>(rows));
  cpu::quantize_rows_fp8(TensorView(want.data(), DType::F8E4M3, {rows, cols}),
                         TensorView(want_scales.data(), DType::F32, {rows}), x);
  const std::vector<uint8_t> codes = d_codes.download<uint8_t>(want.size());
  const std::vector<float> scales = d_scales.download<float>(want_scales.size());
  int64_t scale_diff = 0, code_diff = 0;
  for (size_t r = 0; r < scales.size(); ++r) scale_diff += std::memcmp(&scales[r], &want_scales[r], 4) != 0;
  for (size_t i = 0; i < codes.size(); ++i) code_diff += codes[i] != want[i];
  CHECK(scale_diff == 0);
  CHECK(code_diff == 0);
}

}  // namespace

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

  TensorView host_x(x.data(), DType::F32, {rows, cols});
  host_x.stride[0] = stride;

  auto d_x = gpu_test::upload_bf16(x);
  DeviceBuffer d_codes(static_cast<size_t>(rows * cols)), d_scales(static_cast<size_t>(rows) * 4);
  d_codes.poison();
  d_scales.poison();
  TensorView dev_x = d_x->view(DType::BF16, {rows, cols});
  dev_x.stride[0] = stride;
  cuda::quantize_rows_fp8(d_codes.view(DType::F8E4M3, {rows, cols}), d_scales.view(DType::F32, {rows}), dev_x);
  check_quantized(host_x, d_codes, d_scales);
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

// The fused quantization (rmsnorm_fp8, add_rmsnorm_fp8, swiglu_fp8): the bf16 output is the
// unfused op's, bit for bit, and the codes and scales are the CPU twin's quantization of that
// bf16 output, bit for bit (the same arithmetic: kernels/cuda/fp8_row.cuh); check_quantized, above.

TEST_CASE("cuda rmsnorm_fp8 and add_rmsnorm_fp8: the unfused output, quantized as the CPU twin does") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [rows, hidden] = GENERATE(table<int64_t, int64_t>({{1, 4096}, {7, 576}, {300, 4096}, {3, 8192}}));
  INFO("rows " << rows << " hidden " << hidden);
  std::vector<float> residual = ktest::random_floats(rng, rows * hidden, 2.f);
  for (int64_t k = 0; k < hidden; k += 97) residual[k] *= 50.f;  // outliers in row 0
  const std::vector<float> x = gpu_test::random_bf16_values(rng, rows * hidden);
  const std::vector<float> weight = gpu_test::random_bf16_values(rng, hidden, 1.5f);
  auto d_weight = gpu_test::upload_bf16(weight);
  auto d_x = gpu_test::upload_bf16(x);
  const TensorView w_v = d_weight->view(DType::BF16, {hidden});
  DeviceBuffer d_want(static_cast<size_t>(rows * hidden) * 2), d_out(static_cast<size_t>(rows * hidden) * 2);
  DeviceBuffer d_codes(static_cast<size_t>(rows * hidden)), d_scales(static_cast<size_t>(rows) * 4);
  const TensorView codes = d_codes.view(DType::F8E4M3, {rows, hidden}), scales = d_scales.view(DType::F32, {rows});

  SECTION("rmsnorm of the f32 residual stream") {
    auto d_res = gpu_test::upload(residual);
    const TensorView res = d_res->view(DType::F32, {rows, hidden});
    cuda::rmsnorm(d_want.view(DType::BF16, {rows, hidden}), res, w_v, 1e-5f);
    d_codes.poison();
    d_scales.poison();
    cuda::rmsnorm_fp8(d_out.view(DType::BF16, {rows, hidden}), codes, scales, res, w_v, 1e-5f);
  }
  SECTION("add_rmsnorm") {
    auto d_res1 = gpu_test::upload(residual), d_res2 = gpu_test::upload(residual);
    cuda::add_rmsnorm(d_want.view(DType::BF16, {rows, hidden}), d_res1->view(DType::F32, {rows, hidden}),
                      d_x->view(DType::BF16, {rows, hidden}), w_v, 1e-5f);
    d_codes.poison();
    d_scales.poison();
    cuda::add_rmsnorm_fp8(d_out.view(DType::BF16, {rows, hidden}), codes, scales,
                          d_res2->view(DType::F32, {rows, hidden}), d_x->view(DType::BF16, {rows, hidden}), w_v,
                          1e-5f);
    CHECK(d_res1->download<float>(residual.size()) == d_res2->download<float>(residual.size()));
  }
  const std::vector<uint16_t> want = d_want.download<uint16_t>(static_cast<size_t>(rows * hidden));
  const std::vector<uint16_t> got = d_out.download<uint16_t>(want.size());
  CHECK(got == want);
  std::vector<float> got_f32 = gpu_test::from_bf16(got);
  check_quantized(TensorView(got_f32.data(), DType::F32, {rows, hidden}), d_codes, d_scales);
}

TEST_CASE("cuda swiglu_fp8: the unfused output, quantized as the CPU twin does") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [rows, inter] = GENERATE(table<int64_t, int64_t>({{1, 14336}, {7, 1536}, {300, 14336}, {2, 8}}));
  INFO("rows " << rows << " intermediate " << inter);
  // gate and up as the two halves of a fused [T, 2I] projection output; out in place over gate.
  std::vector<float> gate_up = gpu_test::random_bf16_values(rng, rows * 2 * inter, 3.f);
  if (rows > 2)
    for (int64_t k = 0; k < inter; ++k) gate_up[2 * 2 * inter + k] = 0.f;  // row 2: silu(0) = 0, a row of zeros
  auto d_a = gpu_test::upload_bf16(gate_up), d_b = gpu_test::upload_bf16(gate_up);
  const TensorView gate_a = gpu_test::column_slice(*d_a, DType::BF16, rows, 2 * inter, 0, inter);
  const TensorView up_a = gpu_test::column_slice(*d_a, DType::BF16, rows, 2 * inter, inter, inter);
  const TensorView gate_b = gpu_test::column_slice(*d_b, DType::BF16, rows, 2 * inter, 0, inter);
  const TensorView up_b = gpu_test::column_slice(*d_b, DType::BF16, rows, 2 * inter, inter, inter);
  DeviceBuffer d_codes(static_cast<size_t>(rows * inter)), d_scales(static_cast<size_t>(rows) * 4);
  d_codes.poison();
  d_scales.poison();
  cuda::swiglu(gate_a, gate_a, up_a);
  cuda::swiglu_fp8(gate_b, d_codes.view(DType::F8E4M3, {rows, inter}), d_scales.view(DType::F32, {rows}), gate_b,
                   up_b);
  const std::vector<uint16_t> want = d_a->download<uint16_t>(gate_up.size());
  const std::vector<uint16_t> got = d_b->download<uint16_t>(gate_up.size());
  CHECK(got == want);
  std::vector<float> out(static_cast<size_t>(rows * inter));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < inter; ++c)
      out[r * inter + c] = bf16_to_f32(got[static_cast<size_t>(r * 2 * inter + c)]);
  check_quantized(TensorView(out.data(), DType::F32, {rows, inter}), d_codes, d_scales);
}

TEST_CASE("cuda fused FP8 quantization rejects bad outputs") {
  alignas(256) static uint16_t x[4 * 64], w[64];
  alignas(256) static uint8_t codes[4 * 64];
  alignas(256) static float scales[4], res[4 * 64];
  const TensorView xv(x, DType::BF16, {4, 64}), wv(w, DType::BF16, {64}), rv(res, DType::F32, {4, 64});
  const TensorView cv(codes, DType::F8E4M3, {4, 64}), sv(scales, DType::F32, {4});
  STEM_CHECK_ERROR(cuda::rmsnorm_fp8(xv, TensorView(codes, DType::F8E4M3, {4, 32}), sv, rv, wv, 1e-5f),
                   "must match out");
  STEM_CHECK_ERROR(cuda::add_rmsnorm_fp8(xv, cv, TensorView(scales, DType::F32, {3}), rv, xv, wv, 1e-5f),
                   "one scale per row");
  STEM_CHECK_ERROR(cuda::swiglu_fp8(xv, TensorView(codes, DType::BF16, {4, 64}), sv, xv, xv), "codes must be f8e4m3");
}
