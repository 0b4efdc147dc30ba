#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

struct GemvShape {
  int64_t n, k;
  bool bias;
  DType out;
  const char* what;
};

}  // namespace

TEST_CASE("cuda gemv matches the CPU twin for 1 to 8 rows") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const GemvShape shape = GENERATE(values<GemvShape>({
      {576, 576, false, DType::BF16, "smollm2 o_proj (K not a multiple of 256)"},
      {960, 576, true, DType::BF16, "qkv with bias (qwen2-style)"},
      {6144, 4096, false, DType::BF16, "llama8b qkv"},
      {4096, 14336, false, DType::BF16, "llama8b down"},
      {49152, 576, false, DType::F32, "smollm2 logits"},
      {101, 72, true, DType::F32, "odd N, f32 out with f32 bias"},
  }));
  const int64_t n = shape.n, k = shape.k;
  INFO(shape.what << ": N " << n << " K " << k);
  const std::vector<float> w = gpu_test::random_bf16_values(rng, n * k);
  const std::vector<float> bias = shape.bias ? gpu_test::random_bf16_values(rng, n, 4.f) : std::vector<float>{};
  auto d_w = gpu_test::upload_bf16(w);
  std::unique_ptr<DeviceBuffer> d_bias;
  if (shape.bias) d_bias = shape.out == DType::F32 ? gpu_test::upload(bias) : gpu_test::upload_bf16(bias);
  const TensorView w_v = d_w->view(DType::BF16, {n, k});
  const TensorView bias_v = shape.bias ? d_bias->view(shape.out, {n}) : TensorView{};
  const double tol = shape.out == DType::F32 ? 1e-5 : gpu_test::kBf16Tolerance;
  cuda::GemmContext ctx;

  for (int64_t m = 1; m <= cuda::kGemvMaxRows; ++m) {
    INFO("M " << m);
    const std::string label = std::string("gemv ") + shape.what + " M=" + std::to_string(m);
    // a as a slice of a wider buffer (row stride 2K) and out packed, then both packed through matmul.
    const std::vector<float> wide_a = gpu_test::random_bf16_values(rng, m * 2 * k);
    auto d_wide_a = gpu_test::upload_bf16(wide_a);
    DeviceBuffer d_out(static_cast<size_t>(m * n) * dtype_size(shape.out));
    d_out.poison();
    const TensorView a_slice = gpu_test::column_slice(*d_wide_a, DType::BF16, m, 2 * k, k, k);
    REQUIRE(cuda::gemv_accepts(d_out.view(shape.out, {m, n}), a_slice, w_v));
    cuda::gemv(d_out.view(shape.out, {m, n}), a_slice, w_v, bias_v);
    const std::vector<float> a_cols(wide_a.begin() + k, wide_a.end());  // row i of the slice starts at i·2K
    const std::vector<float> ref = gpu_test::cpu_matmul(a_cols, 2 * k, w, bias, m, n, k);
    const std::vector<float> got = gpu_test::download_f32(d_out, shape.out, m * n);
    CHECK(gpu_test::count_nan(got) == 0);
    STEM_CHECK_CLOSE(label, got, ref, tol);

    // matmul at these sizes goes through gemv (or cuBLASLt above its dispatch size): same numbers.
    d_out.poison();
    cuda::matmul(ctx, d_out.view(shape.out, {m, n}), a_slice, w_v, bias_v);
    STEM_CHECK_CLOSE(label + " via matmul", gpu_test::download_f32(d_out, shape.out, m * n), ref, tol);
  }
}

// Argument checks run before any CUDA call, so these run without a GPU too.
TEST_CASE("cuda gemv rejects what it cannot take") {
  alignas(16) static uint16_t a[16 * 64], w[8 * 64], out[16 * 8];
  const TensorView w_v(w, DType::BF16, {8, 64});
  STEM_CHECK_ERROR(cuda::gemv(TensorView(out, DType::BF16, {9, 8}), TensorView(a, DType::BF16, {9, 64}), w_v, {}),
                   "1 to 8 rows");
  STEM_CHECK_ERROR(cuda::gemv(TensorView(out, DType::BF16, {2, 4}), TensorView(a, DType::BF16, {2, 64}), w_v, {}),
                   "transposed");
  // K not a whole number of 8-element vectors, and a misaligned start: not for gemv.
  const TensorView odd_a(a, DType::BF16, {2, 60}), odd_w(w, DType::BF16, {8, 60});
  CHECK_FALSE(cuda::gemv_accepts(TensorView(out, DType::BF16, {2, 8}), odd_a, odd_w));
  STEM_CHECK_ERROR(cuda::gemv(TensorView(out, DType::BF16, {2, 8}), odd_a, odd_w, {}), "multiple of 8");
  const TensorView shifted(a + 1, DType::BF16, {2, 64});
  CHECK_FALSE(cuda::gemv_accepts(TensorView(out, DType::BF16, {2, 8}), shifted, w_v));
  CHECK_FALSE(cuda::gemv_accepts(TensorView(out, DType::BF16, {9, 8}), TensorView(a, DType::BF16, {9, 64}), w_v));
}
