// The FP8 GEMM (cuda::fp8_matmul, kernels/cuda/gemm.cuh) against its CPU twin (cpu::fp8_matmul,
// kernels/cpu/fp8.h) at the 8B model's prefill and decode shapes, with the activations quantized
// on the device by cuda::quantize_rows_fp8 (bit for bit the twin's: tests/cuda/test_fp8.cc) and
// the weights by the twin's per-channel rule, as the CUDA backend does. Both ways of applying the
// scales (Fp8Scales, gemm.cuh) are held to the same bound: cuBLASLt's vector scales in its
// epilogue, and unit scales with our scaling kernel after.
//
// Tolerance, element by element, from the arithmetic. Both sides multiply the same E4M3 values,
// so every product a·w is exact (4 + 4 significant bits); they differ only in how the products are
// summed and in the final rounding. Let S[m,n] = a_scale[m]·w_scale[n]·Σ_k |a[m,k]·w[n,k]|.
//   - the twin sums in f32: error ≤ K·2^-24·S (≤ 2^-10.2·S at K = 14336);
//   - the GPU's tensor cores keep about 14 significant bits in their FP8 partial sums before
//     cuBLASLt promotes them to f32 (fast accumulation off, every few 32-deep MMA steps): at most
//     about 4 additions of 2^-13 relative to a partial sum each, ≤ 2^-11·S;
//   - the scales multiply in f32 (a few 2^-24), and the result rounds once to bf16: ≤ 2^-9·|ref|;
//     the bias is added after that rounding, by a kernel of ours, and rounded again:
//     ≤ 2^-9·(|ref| + |bias|). With our scaling kernel the unscaled sum is rounded to bf16 first:
//     ≤ 2^-9·|sum·scales| ≤ 2^-9·S more.
// So |gpu − ref| ≤ 2^-8·(|ref| + |bias|) + 2^-8·S (the S terms add up to at most 1.7·2^-9·S). A
// wrong layout, a swapped or missing scale, or a lost bias is off by the size of the value itself.
#include <cmath>

#include "kernels/cpu/fp8.h"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/gemm.cuh"
#include "tests/cuda/fp8_twin.h"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

using fp8_test::Quantized;
using fp8_test::Reference;
using fp8_test::quantize;
using fp8_test::twin;
using Fp8Shape = fp8_test::Shape;

// Elements outside the bound of the file's comment (and NaNs); reports the worst ratio.
int64_t out_of_bound(const std::vector<float>& got, const Reference& ref, const std::vector<float>& bias, int64_t n,
                     double* worst) {
  return fp8_test::out_of_bound(got, ref, bias, n, fp8_test::cublaslt_bound, worst);
}

}  // namespace

TEST_CASE("cuda FP8 GEMM (cuBLASLt, per-token and per-channel scales) matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const Fp8Shape shape = GENERATE(values<Fp8Shape>({
      {4096, 4096, false, "8B o_proj"},
      {6144, 4096, false, "8B qkv"},
      {28672, 4096, false, "8B gate_up"},
      {4096, 14336, false, "8B down"},
      {5632, 2048, false, "N 5632 K 2048"},
      {2048, 5632, false, "N 2048 K 5632"},
      {1536 + 2 * 256, 1536, true, "qkv with bias (qwen2 1.5B)"},
  }));
  const int64_t n = shape.n, k = shape.k;
  INFO(shape.what << ": N " << n << " K " << k << " bias " << shape.bias);
  // Weights: N(0, 1/K) rows with a few outlier channels, quantized per output channel.
  std::vector<float> w = ktest::random_floats(rng, n * k, 1.f / std::sqrt(static_cast<float>(k)));
  for (int64_t r = 0; r < n; r += 97) w[r * k + r % k] *= 40.f;
  const Quantized wq = quantize(w, n, k);
  const std::vector<float> bias = shape.bias ? gpu_test::random_bf16_values(rng, n, 0.5f) : std::vector<float>{};
  auto d_w = gpu_test::upload(wq.codes);
  auto d_ws = gpu_test::upload(wq.scales);
  std::unique_ptr<DeviceBuffer> d_bias;
  if (shape.bias) d_bias = gpu_test::upload_bf16(bias);
  const TensorView w_v = d_w->view(DType::F8E4M3, {n, k}), ws_v = d_ws->view(DType::F32, {n});
  const TensorView bias_v = shape.bias ? d_bias->view(DType::BF16, {n}) : TensorView{};
  const auto [how, how_name] = GENERATE(table<cuda::Fp8Scales, std::string>(
      {{cuda::Fp8Scales::CublasLt, "cuBLASLt scales"}, {cuda::Fp8Scales::Epilogue, "our scaling kernel"}}));
  INFO(how_name);
  cuda::GemmContext ctx;
  ctx.set_fp8_scales(how);
  ctx.set_fp8_gemv(false);  // cuBLASLt at M = 1 too (fp8_matmul's dispatch to fp8_gemv: test_fp8_gemv.cc)

  for (const int64_t m : {1, 7, 64, 1000}) {
    INFO("M " << m);
    const std::string label = std::string("fp8_matmul (") + how_name + ") " + shape.what + " M=" + std::to_string(m) +
                              " N=" + std::to_string(n) + " K=" + std::to_string(k);
    // Activations: bf16, unit scale with outlier channels (as after an RMSNorm), one row of zeros.
    std::vector<float> x = ktest::random_floats(rng, m * k, 1.f);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < k; c += 331) x[r * k + c] *= 20.f;
    if (m > 2)
      for (int64_t c = 0; c < k; ++c) x[2 * k + c] = 0.f;
    x = gpu_test::round_to_bf16(x);
    const Quantized xq = quantize(x, m, k);
    const Reference ref = twin(xq, wq, bias, m, n, k);

    // The backend's path: quantize on the device, then the GEMM.
    auto d_x = gpu_test::upload_bf16(x);
    DeviceBuffer d_codes(static_cast<size_t>(m * k)), d_scales(static_cast<size_t>(m) * 4);
    DeviceBuffer d_out(static_cast<size_t>(m * n) * 2);
    d_out.poison();
    cuda::quantize_rows_fp8(d_codes.view(DType::F8E4M3, {m, k}), d_scales.view(DType::F32, {m}),
                            d_x->view(DType::BF16, {m, k}));
    CHECK(d_codes.download<uint8_t>(xq.codes.size()) == xq.codes);  // the twin's codes, so the same inputs
    cuda::fp8_matmul(ctx, d_out.view(DType::BF16, {m, n}), d_codes.view(DType::F8E4M3, {m, k}),
                     d_scales.view(DType::F32, {m}), w_v, ws_v, bias_v);
    const std::vector<float> got = gpu_test::download_f32(d_out, DType::BF16, m * n);
    double worst = 0;
    const int64_t bad = out_of_bound(got, ref, bias, n, &worst);
    INFO(label << ": " << bad << " elements out of bound, worst error / bound " << worst);
    gpu_test::report_error(label + " (error/bound)", worst);
    CHECK(bad == 0);
    STEM_CHECK_CLOSE(label, got, ref.out, gpu_test::kBf16Tolerance);

    // Again into a slice of a wider output (row stride 2N): the stride must reach cuBLASLt.
    DeviceBuffer d_wide(static_cast<size_t>(m * 2 * n) * 2);
    d_wide.poison();
    cuda::fp8_matmul(ctx, gpu_test::column_slice(d_wide, DType::BF16, m, 2 * n, n, n),
                     d_codes.view(DType::F8E4M3, {m, k}), d_scales.view(DType::F32, {m}), w_v, ws_v, bias_v);
    const std::vector<float> wide = gpu_test::download_f32(d_wide, DType::BF16, m * 2 * n);
    std::vector<float> right(static_cast<size_t>(m * n));
    for (int64_t r = 0; r < m; ++r)
      std::copy(wide.begin() + r * 2 * n + n, wide.begin() + (r + 1) * 2 * n, right.begin() + r * n);
    const int64_t bad_wide = out_of_bound(right, ref, bias, n, &worst);  // ldd may pick another algorithm
    INFO(label << " into a wider out: " << bad_wide << " elements out of bound, worst error / bound " << worst);
    CHECK(bad_wide == 0);
  }
  CHECK(ctx.fp8_epilogue_plans() == (how == cuda::Fp8Scales::Epilogue ? ctx.cached_plans() : 0));
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda FP8 GEMM rejects bad arguments") {
  alignas(256) static uint8_t a[4 * 64], w[32 * 64];
  alignas(256) static uint16_t out[4 * 32], bias[32];
  alignas(256) static float sa[4], sw[32];
  cuda::GemmContext ctx;
  const TensorView av(a, DType::F8E4M3, {4, 64}), wv(w, DType::F8E4M3, {32, 64}), ov(out, DType::BF16, {4, 32});
  const TensorView sav(sa, DType::F32, {4}), swv(sw, DType::F32, {32});
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, ov, TensorView(a, DType::BF16, {4, 32}), sav, wv, swv, {}),
                   "a must be f8e4m3");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, TensorView(out, DType::F32, {4, 16}), av, sav, wv, swv, {}),
                   "out must be bf16");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, ov, av, TensorView(sa, DType::F32, {3}), wv, swv, {}),
                   "one scale per row of a");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, ov, av, sav, wv, TensorView(sw, DType::F32, {31}), {}),
                   "one scale per row of w");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, ov, av, sav, wv, swv, TensorView(bias, DType::BF16, {31})), "N, the rows");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, TensorView(out, DType::BF16, {4, 24}), av, sav,
                                    TensorView(w, DType::F8E4M3, {24, 64}), TensorView(sw, DType::F32, {24}), {}),
                   "K and N multiples of 16");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, TensorView(out, DType::BF16, {4, 32}), TensorView(a, DType::F8E4M3, {4, 40}),
                                    sav, TensorView(w, DType::F8E4M3, {32, 40}), swv, {}),
                   "K and N multiples of 16");
}
