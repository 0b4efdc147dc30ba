// The FP8 GEMV (cuda::fp8_gemv, kernels/cuda/fp8_gemv.cuh), alone and through cuda::fp8_matmul's
// dispatch at M = 1..8, against the CPU twin cpu::fp8_matmul (kernels/cpu/fp8.h) on random E4M3
// codes quantized per row by the twin (the device's quantization is tests/cuda/test_fp8.cc's).
//
// Tolerance, element by element, from the summation order only. Both sides multiply the same
// E4M3 values, and each product (≤ 8 significant bits, within 2^-18..448²) is exact in f32; both
// sum the products in f32, in different orders; both then multiply by (a_scale·w_scale) and add
// the bias in f32 (the same operations in the same order), and the GPU rounds once to bf16. With
// u = 2^-24 and S[m,n] = a_scale[m]·w_scale[n]·Σ_k |a[m,k]·w[n,k]|, each f32 sum is within
// (K−1)·u·S of the exact one (any order), the scaling and the bias add ≤ 3u·(S + |bias|) more on
// each side, so the two f32 values g (GPU) and ref (twin) differ by ≤ (2K + 4)·u·(S + |bias|);
// bf16 keeps 8 significant bits, so its rounding adds ≤ 2^-8·|g| ≤ 2^-8·(|ref| + |g − ref|):
//   |gpu − ref| ≤ 2^-8·|ref| + (2K + 16)·u·(S + |bias|).
// The second term is ≤ 2^-9.8·(S + |bias|) at K = 14336, and far smaller than a bf16 step at
// these shapes; a wrong layout, a swapped or missing scale, a lost or doubled bias, or a bias
// added after a bf16 rounding of the scaled sum (as fp8_matmul's cuBLASLt path does) is off by
// more. The cuBLASLt path (M above the dispatch, or STEM_FP8_GEMV off) is held to
// tests/cuda/test_fp8_gemm.cc's looser bound, which its tensor cores' partial sums need.
#include <cmath>
#include <cstring>

#include "kernels/cpu/fp8.h"
#include "kernels/cuda/fp8_gemv.cuh"
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
using Fp8GemvShape = fp8_test::Shape;

enum class Bound { SummationOrder, CublasLt };

// Elements of got (the first m rows of ref) outside the bound (and NaNs); reports the worst ratio.
int64_t out_of_bound(const std::vector<float>& got, const Reference& ref, const std::vector<float>& bias, int64_t n,
                     int64_t k, Bound which, double* worst) {
  if (which == Bound::CublasLt) return fp8_test::out_of_bound(got, ref, bias, n, fp8_test::cublaslt_bound, worst);
  // The file's comment: the summation order only.
  const auto summation_order = [k](double r, double s, double b) {
    return std::ldexp(r, -8) + std::ldexp(static_cast<double>(2 * k + 16) * (s + b), -24) + 1e-30;
  };
  return fp8_test::out_of_bound(got, ref, bias, n, summation_order, worst);
}

}  // namespace

TEST_CASE("cuda FP8 gemv matches the CPU twin for 1 to 8 rows, alone and through fp8_matmul") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const Fp8GemvShape shape = GENERATE(values<Fp8GemvShape>({
      {6144, 4096, false, "8B qkv"},
      {4096, 4096, false, "8B o_proj"},
      {4096, 14336, false, "8B down (long K)"},
      {1536 + 2 * 256, 1536, true, "qkv with bias (qwen2 1.5B)"},
      {101, 48, true, "odd N (not a whole warp's 4 rows), K of 3 vectors, bias"},
      {40, 2064, false, "N 40, K 2064 (a lane's last vector alone in its step)"},
  }));
  const int64_t n = shape.n, k = shape.k, max_m = cuda::kFp8GemvMaxRows;
  INFO(shape.what << ": N " << n << " K " << k << " bias " << shape.bias);
  // Weights: N(0, 1/K)-sized rows with a few outlier channels, quantized per output channel.
  std::vector<float> w = ktest::random_floats(rng, n * k, 1.f / std::sqrt(static_cast<float>(k)));
  for (int64_t r = 0; r < n; r += 97) w[r * k + r % k] *= 40.f;
  const Quantized wq = quantize(w, n, k);
  // Activations: bf16 values, unit scale with outlier channels (as after an RMSNorm), a row of zeros.
  std::vector<float> x = ktest::random_floats(rng, max_m * k, 1.f);
  for (int64_t r = 0; r < max_m; ++r)
    for (int64_t c = r; c < k; c += 331) x[r * k + c] *= 20.f;
  for (int64_t c = 0; c < k; ++c) x[2 * k + c] = 0.f;
  x = gpu_test::round_to_bf16(x);
  const Quantized xq = quantize(x, max_m, k);
  const std::vector<float> bias = shape.bias ? gpu_test::random_bf16_values(rng, n, 0.5f) : std::vector<float>{};
  // Row m of the twin's product does not depend on the other rows: the first M rows are the
  // reference for M rows.
  const Reference ref8 = twin(xq, wq, bias, max_m, n, k);

  auto d_w = gpu_test::upload(wq.codes);
  auto d_ws = gpu_test::upload(wq.scales);
  auto d_as = gpu_test::upload(xq.scales);
  std::unique_ptr<DeviceBuffer> d_bias;
  if (shape.bias) d_bias = gpu_test::upload_bf16(bias);
  const TensorView w_v = d_w->view(DType::F8E4M3, {n, k}), ws_v = d_ws->view(DType::F32, {n});
  const TensorView bias_v = shape.bias ? d_bias->view(DType::BF16, {n}) : TensorView{};
  // a as the right half of a wider buffer (row stride 2K): the codes of row r at r·2K + K.
  std::vector<uint8_t> wide_codes(static_cast<size_t>(max_m * 2 * k), 0x7F);  // NaN codes left of the view
  for (int64_t r = 0; r < max_m; ++r)
    std::memcpy(&wide_codes[static_cast<size_t>(r * 2 * k + k)], &xq.codes[static_cast<size_t>(r * k)],
                static_cast<size_t>(k));
  auto d_wide_a = gpu_test::upload(wide_codes);

  cuda::GemmContext ctx, lt_ctx;  // fp8_matmul with the dispatch, and cuBLASLt only
  lt_ctx.set_fp8_gemv(false);
  const bool cublaslt_shape = n % 16 == 0;  // fp8_matmul refuses other N (cuBLASLt's FP8 alignment)

  for (int64_t m = 1; m <= max_m; ++m) {
    INFO("M " << m);
    const std::string label = std::string("fp8_gemv ") + shape.what + " M=" + std::to_string(m);
    const Reference ref{std::vector<float>(ref8.out.begin(), ref8.out.begin() + m * n),
                        std::vector<float>(ref8.magnitude.begin(), ref8.magnitude.begin() + m * n)};
    const TensorView a_v = gpu_test::column_slice(*d_wide_a, DType::F8E4M3, m, 2 * k, k, k);
    const TensorView as_v = d_as->view(DType::F32, {m});
    double worst = 0;

    // Alone, into a packed out.
    DeviceBuffer d_out(static_cast<size_t>(m * n) * 2);
    d_out.poison();
    REQUIRE(cuda::fp8_gemv_accepts(d_out.view(DType::BF16, {m, n}), a_v, w_v));
    cuda::fp8_gemv(d_out.view(DType::BF16, {m, n}), a_v, as_v, w_v, ws_v, bias_v);
    const std::vector<float> got = gpu_test::download_f32(d_out, DType::BF16, m * n);
    const int64_t bad = out_of_bound(got, ref, bias, n, k, Bound::SummationOrder, &worst);
    INFO(label << ": " << bad << " elements out of bound, worst error / bound " << worst);
    gpu_test::report_error(label + " (error/bound)", worst);
    CHECK(bad == 0);

    // Every variant of the kernel (its shape: rows per warp, loads in flight, warps per block, early
    // loads) sums in the same order: the same bits as the default's.
    {
      const int before = cuda::fp8_gemv_variant();
      for (int v = 0; v < cuda::fp8_gemv_variants(); ++v) {
        cuda::set_fp8_gemv_variant(v);
        d_out.poison();
        cuda::fp8_gemv(d_out.view(DType::BF16, {m, n}), a_v, as_v, w_v, ws_v, bias_v);
        INFO("variant " << v);
        CHECK(gpu_test::download_f32(d_out, DType::BF16, m * n) == got);
      }
      cuda::set_fp8_gemv_variant(before);
    }

    // Into the right half of a wider out (row stride 2N): the left half stays poisoned.
    DeviceBuffer d_wide(static_cast<size_t>(m * 2 * n) * 2);
    d_wide.poison();
    cuda::fp8_gemv(gpu_test::column_slice(d_wide, DType::BF16, m, 2 * n, n, n), a_v, as_v, w_v, ws_v, bias_v);
    const std::vector<uint16_t> wide = d_wide.download<uint16_t>(static_cast<size_t>(m * 2 * n));
    std::vector<float> right(static_cast<size_t>(m * n));
    int64_t written_left = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < 2 * n; ++c) {
        const uint16_t h = wide[static_cast<size_t>(r * 2 * n + c)];
        if (c < n)
          written_left += h != 0xFFFF;
        else
          right[static_cast<size_t>(r * n + c - n)] = bf16_to_f32(h);
      }
    CHECK(written_left == 0);
    CHECK(right == got);  // the same kernel on the same operands: the same bits

    if (!cublaslt_shape) continue;
    // fp8_matmul: fp8_gemv up to kFp8GemvRows rows (the same bits as above, no cuBLASLt plan),
    // cuBLASLt above; and cuBLASLt at every M with the dispatch off.
    d_out.poison();
    cuda::fp8_matmul(ctx, d_out.view(DType::BF16, {m, n}), a_v, as_v, w_v, ws_v, bias_v);
    const std::vector<float> via = gpu_test::download_f32(d_out, DType::BF16, m * n);
    if (m <= cuda::kFp8GemvRows) {
      CHECK(via == got);
      CHECK(ctx.cached_plans() == 0);
    } else {
      const int64_t bad_via = out_of_bound(via, ref, bias, n, k, Bound::CublasLt, &worst);
      INFO(label << " via fp8_matmul (cuBLASLt): " << bad_via << " out of bound, worst error / bound " << worst);
      CHECK(bad_via == 0);
      CHECK(ctx.cached_plans() > 0);
    }
    d_out.poison();
    cuda::fp8_matmul(lt_ctx, d_out.view(DType::BF16, {m, n}), a_v, as_v, w_v, ws_v, bias_v);
    const int64_t bad_lt =
        out_of_bound(gpu_test::download_f32(d_out, DType::BF16, m * n), ref, bias, n, k, Bound::CublasLt, &worst);
    INFO(label << " via fp8_matmul, dispatch off: " << bad_lt << " out of bound, worst error / bound " << worst);
    CHECK(bad_lt == 0);
  }
  if (cublaslt_shape) CHECK(lt_ctx.cached_plans() >= static_cast<size_t>(max_m));  // a plan for every M
}

TEST_CASE("cuda FP8 gemv: a NaN code gives NaN in its row only, as in the twin") {
  STEM_REQUIRE_GPU();
  const int64_t m = 2, n = 24, k = 64;
  std::vector<uint8_t> a(static_cast<size_t>(m * k), 0x38), w(static_cast<size_t>(n * k), 0x30);  // 1.0, 0.5
  a[5] = 0x7F;  // row 0
  const std::vector<float> as = {1.f, 2.f}, ws(static_cast<size_t>(n), 0.25f);
  auto d_a = gpu_test::upload(a);
  auto d_w = gpu_test::upload(w);
  auto d_as = gpu_test::upload(as);
  auto d_ws = gpu_test::upload(ws);
  DeviceBuffer d_out(static_cast<size_t>(m * n) * 2);
  d_out.poison();
  cuda::fp8_gemv(d_out.view(DType::BF16, {m, n}), d_a->view(DType::F8E4M3, {m, k}), d_as->view(DType::F32, {m}),
                 d_w->view(DType::F8E4M3, {n, k}), d_ws->view(DType::F32, {n}), {});
  const std::vector<float> got = gpu_test::download_f32(d_out, DType::BF16, m * n);
  std::vector<float> ref(static_cast<size_t>(m * n));
  cpu::fp8_matmul(TensorView(ref.data(), DType::F32, {m, n}), TensorView(a.data(), DType::F8E4M3, {m, k}),
                  TensorView(const_cast<float*>(as.data()), DType::F32, {m}),
                  TensorView(w.data(), DType::F8E4M3, {n, k}), TensorView(const_cast<float*>(ws.data()), DType::F32, {n}),
                  {});
  for (int64_t j = 0; j < n; ++j) {
    INFO("column " << j);
    CHECK(std::isnan(ref[j]));
    CHECK(std::isnan(got[j]));
    CHECK(got[n + j] == ref[n + j]);  // 64 · 0.5 · 2 · 0.25 = 16, exact on both sides
    CHECK(ref[n + j] == 16.f);
  }
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda FP8 gemv refuses what it cannot take, and fp8_matmul's checks come before its dispatch") {
  alignas(256) static uint8_t a[9 * 128], w[32 * 128];
  alignas(256) static uint16_t out[9 * 64], bias[32];
  alignas(256) static float sa[9], sw[32];
  const TensorView av(a, DType::F8E4M3, {2, 64}), wv(w, DType::F8E4M3, {32, 64}), ov(out, DType::BF16, {2, 32});
  const TensorView sav(sa, DType::F32, {2}), swv(sw, DType::F32, {32});
  CHECK(cuda::fp8_gemv_accepts(ov, av, wv));

  STEM_CHECK_ERROR(cuda::fp8_gemv(TensorView(out, DType::BF16, {9, 32}), TensorView(a, DType::F8E4M3, {9, 64}),
                                  TensorView(sa, DType::F32, {9}), wv, swv, {}),
                   "1 to 8 rows");
  CHECK_FALSE(cuda::fp8_gemv_accepts(TensorView(out, DType::BF16, {9, 32}), TensorView(a, DType::F8E4M3, {9, 64}), wv));
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, TensorView(a, DType::BF16, {2, 32}), sav, wv, swv, {}), "a must be f8e4m3");
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, av, sav, TensorView(w, DType::BF16, {32, 32}), swv, {}), "w must be f8e4m3");
  STEM_CHECK_ERROR(cuda::fp8_gemv(TensorView(out, DType::F32, {2, 16}), av, sav, wv, swv, {}), "out must be bf16");
  STEM_CHECK_ERROR(cuda::fp8_gemv(TensorView(out, DType::BF16, {2, 24}), av, sav, wv, swv, {}), "transposed");
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, av, TensorView(sa, DType::F32, {3}), wv, swv, {}), "one scale per row of a");
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, av, sav, wv, TensorView(sw, DType::F32, {31}), {}), "one scale per row of w");
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, av, sav, wv, swv, TensorView(bias, DType::BF16, {31})), "N, the rows");
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, av, sav, wv, swv, TensorView(sw, DType::F32, {32})), "bias must be bf16");
  // K not a whole number of 16-code vectors, a misaligned start, a row stride of half a vector.
  const TensorView a40(a, DType::F8E4M3, {2, 40}), w40(w, DType::F8E4M3, {32, 40});
  CHECK_FALSE(cuda::fp8_gemv_accepts(ov, a40, w40));
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, a40, sav, w40, swv, {}), "multiple of 16 E4M3 values");
  const TensorView shifted(a + 8, DType::F8E4M3, {2, 64});
  CHECK_FALSE(cuda::fp8_gemv_accepts(ov, shifted, wv));
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, shifted, sav, wv, swv, {}), "16-byte boundary");
  TensorView strided = av;
  strided.stride[0] = 72;
  CHECK_FALSE(cuda::fp8_gemv_accepts(ov, strided, wv));
  STEM_CHECK_ERROR(cuda::fp8_gemv(ov, strided, sav, wv, swv, {}), "row stride must be a multiple of 16");
  TensorView w_strided = wv;
  w_strided.stride[0] = 72;
  CHECK_FALSE(cuda::fp8_gemv_accepts(ov, av, w_strided));

  // fp8_matmul checks its arguments (cuBLASLt's alignment too) before it picks a path, so a shape
  // it refuses at M = 1000 it refuses at M = 1.
  cuda::GemmContext ctx;
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, TensorView(out, DType::BF16, {1, 24}), TensorView(a, DType::F8E4M3, {1, 64}),
                                    TensorView(sa, DType::F32, {1}), TensorView(w, DType::F8E4M3, {24, 64}),
                                    TensorView(sw, DType::F32, {24}), {}),
                   "K and N multiples of 16");
  STEM_CHECK_ERROR(cuda::fp8_matmul(ctx, ov, av, sav, wv, TensorView(sw, DType::F32, {31}), {}),
                   "one scale per row of w");
}
