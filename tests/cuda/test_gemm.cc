#include "kernels/cuda/gemm.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

struct GemmShape {
  int64_t n, k;
  bool bias;
  DType out;
  const char* what;
};

}  // namespace

TEST_CASE("cuda matmul (cuBLASLt) matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const GemmShape shape = GENERATE(values<GemmShape>({
      {576, 576, false, DType::BF16, "smollm2 o_proj"},
      {960, 576, true, DType::BF16, "qkv with bias (qwen2-style)"},
      {6144, 4096, false, DType::BF16, "llama8b qkv"},
      {4096, 14336, false, DType::BF16, "llama8b down"},
      {49152, 576, false, DType::F32, "smollm2 logits"},
      {640, 576, true, DType::F32, "f32 out with f32 bias"},
      {100, 72, true, DType::BF16, "odd sizes"},
  }));
  const int64_t n = shape.n, k = shape.k;
  INFO(shape.what << ": N " << n << " K " << k << " out " << dtype_name(shape.out) << " bias " << shape.bias);
  const std::vector<float> w = gpu_test::random_bf16_values(rng, n * k);
  const std::vector<float> bias = shape.bias ? gpu_test::random_bf16_values(rng, n, 4.f) : std::vector<float>{};
  auto d_w = gpu_test::upload_bf16(w);
  std::unique_ptr<DeviceBuffer> d_bias;
  if (shape.bias) d_bias = shape.out == DType::F32 ? gpu_test::upload(bias) : gpu_test::upload_bf16(bias);
  const TensorView w_v = d_w->view(DType::BF16, {n, k});
  const TensorView bias_v = shape.bias ? d_bias->view(shape.out, {n}) : TensorView{};
  // f32 out: exact bf16 products summed in f32, the fp32 bound of DESIGN §4 (measured ~2e-7 on H100).
  const double tol = shape.out == DType::F32 ? 1e-5 : gpu_test::kBf16Tolerance;
  cuda::GemmContext ctx;

  for (const int64_t m : {1, 7, 300}) {
    INFO("M " << m);
    const std::string label = std::string("matmul ") + shape.what + " M=" + std::to_string(m) +
                              " N=" + std::to_string(n) + " K=" + std::to_string(k) + " out=" + dtype_name(shape.out);
    const std::vector<float> a = gpu_test::random_bf16_values(rng, m * k);
    auto d_a = gpu_test::upload_bf16(a);
    DeviceBuffer d_out(static_cast<size_t>(m * n) * dtype_size(shape.out));
    d_out.poison();
    cuda::matmul(ctx, d_out.view(shape.out, {m, n}), d_a->view(DType::BF16, {m, k}), w_v, bias_v);
    const std::vector<float> ref = gpu_test::cpu_matmul(a, k, w, bias, m, n, k);
    STEM_CHECK_CLOSE(label, gpu_test::download_f32(d_out, shape.out, m * n), ref, tol);

    // Again with a and out as slices of wider buffers (row strides 2K and 2N): the strides must
    // reach cuBLASLt as leading dimensions.
    const std::vector<float> wide_a = gpu_test::random_bf16_values(rng, m * 2 * k);
    auto d_wide_a = gpu_test::upload_bf16(wide_a);
    DeviceBuffer d_wide_out(static_cast<size_t>(m * 2 * n) * dtype_size(shape.out));
    d_wide_out.poison();
    cuda::matmul(ctx, gpu_test::column_slice(d_wide_out, shape.out, m, 2 * n, n, n),
                 gpu_test::column_slice(*d_wide_a, DType::BF16, m, 2 * k, k, k), w_v, bias_v);
    const std::vector<float> wide_out = gpu_test::download_f32(d_wide_out, shape.out, m * 2 * n);
    std::vector<float> strided_out;
    for (int64_t i = 0; i < m; ++i)
      strided_out.insert(strided_out.end(), wide_out.begin() + i * 2 * n + n, wide_out.begin() + (i + 1) * 2 * n);
    std::vector<float> a_cols(wide_a.begin() + k, wide_a.end());  // row i of the slice starts at i·2K
    STEM_CHECK_CLOSE(label + " strided", strided_out, gpu_test::cpu_matmul(a_cols, 2 * k, w, bias, m, n, k), tol);
  }
  // The plan cache holds one entry per distinct shape and layout, and a repeat adds none.
  const size_t plans = ctx.cached_plans();
  const std::vector<float> a = gpu_test::random_bf16_values(rng, 7 * k);
  auto d_a = gpu_test::upload_bf16(a);
  DeviceBuffer d_out(static_cast<size_t>(7 * n) * dtype_size(shape.out));
  cuda::matmul(ctx, d_out.view(shape.out, {7, n}), d_a->view(DType::BF16, {7, k}), w_v, bias_v);
  CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(ctx.cached_plans() == plans);
}

// Argument checks run before any CUDA call (the context is lazy), so these run without a GPU too.
TEST_CASE("cuda matmul rejects bad arguments") {
  alignas(16) static uint16_t a[4 * 64], w[8 * 64], out[4 * 8], bias[8];
  alignas(16) static float f32s[4 * 64];
  const TensorView a_v(a, DType::BF16, {4, 64}), w_v(w, DType::BF16, {8, 64}), out_v(out, DType::BF16, {4, 8});
  cuda::GemmContext ctx;

  STEM_CHECK_ERROR(cuda::matmul(ctx, out_v, TensorView(f32s, DType::F32, {4, 64}), w_v, {}), "matmul a must be bf16");
  STEM_CHECK_ERROR(cuda::matmul(ctx, out_v, a_v, TensorView(f32s, DType::F32, {8, 64}), {}), "matmul w must be bf16");
  STEM_CHECK_ERROR(cuda::matmul(ctx, TensorView(f32s, DType::I32, {4, 8}), a_v, w_v, {}), "out must be bf16 or f32");
  STEM_CHECK_ERROR(cuda::matmul(ctx, out_v, a_v, TensorView(w, DType::BF16, {8, 32}), {}), "must be [N,K]");
  STEM_CHECK_ERROR(cuda::matmul(ctx, TensorView(out, DType::BF16, {4, 4}), a_v, w_v, {}), "must be [4,8]");
  STEM_CHECK_ERROR(cuda::matmul(ctx, out_v, a_v, w_v, TensorView(bias, DType::BF16, {4})), "N, the rows of w");
  // cuBLASLt's BIAS epilogue reads the bias in the output's type.
  STEM_CHECK_ERROR(
      cuda::matmul(ctx, TensorView(f32s, DType::F32, {4, 8}), a_v, w_v, TensorView(bias, DType::BF16, {8})),
      "bias must be f32");
  STEM_CHECK_ERROR(cuda::matmul(ctx, out_v, TensorView(a, DType::BF16, {4, 0}), TensorView(w, DType::BF16, {8, 0}), {}),
                   "K must be positive");
  CHECK(ctx.cached_plans() == 0);
}
