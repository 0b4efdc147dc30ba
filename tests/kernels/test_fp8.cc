// E4M3 conversions and the FP8 twins (kernels/cpu/fp8.h): every code decoded, rounding against
// torch's float8_e4m3fn (tests/fixtures/make_fp8_fixtures.py) and hand-checked cases, per-row
// quantization within half an E4M3 step, and the FP8 GEMM against a double-precision sum.
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/test_util.h"

using namespace stem;
using namespace stem::cpu;

namespace {

nlohmann::json cases() {
  std::ifstream in(stem::test::fixtures_dir() + "/fp8/e4m3_cases.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// Half the spacing of E4M3 values around v: 2^-4 relative for normals, 2^-10 absolute below 2^-6.
double half_step(double v) { return std::max(std::abs(v) * 0x1p-4, 0x1p-10); }

}  // namespace

TEST_CASE("fp8: the 256 codes decode as E4M3, hand-checked at the edges") {
  CHECK(fp8_to_f32(0x00) == 0.f);
  CHECK(std::signbit(fp8_to_f32(0x80)));
  CHECK(fp8_to_f32(0x01) == 0x1p-9f);  // smallest subnormal
  CHECK(fp8_to_f32(0x07) == 7 * 0x1p-9f);
  CHECK(fp8_to_f32(0x08) == 0x1p-6f);  // smallest normal
  CHECK(fp8_to_f32(0x38) == 1.f);
  CHECK(fp8_to_f32(0x39) == 1.125f);
  CHECK(fp8_to_f32(0x7E) == 448.f);
  CHECK(fp8_to_f32(0xFE) == -448.f);
  CHECK(fp8_to_f32(0x77) == 240.f);  // 1.875 * 2^7
  CHECK(std::isnan(fp8_to_f32(0x7F)));
  CHECK(std::isnan(fp8_to_f32(0xFF)));
  // Increasing over the positive codes; negative codes mirror them; every code round-trips.
  for (int c = 1; c < 0x7F; ++c) CHECK(fp8_to_f32(uint8_t(c)) > fp8_to_f32(uint8_t(c - 1)));
  for (int c = 0; c < 0x7F; ++c) CHECK(fp8_to_f32(uint8_t(c | 0x80)) == -fp8_to_f32(uint8_t(c)));
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7F) != 0x7F) CHECK(f32_to_fp8(fp8_to_f32(uint8_t(c))) == c);
  // torch's decoding of every code agrees.
  const nlohmann::json all = cases(), &decode = all["decode_bits"];
  REQUIRE(decode.size() == 256);
  for (int c = 0; c < 256; ++c) {
    INFO("code " << c);
    if (decode[c].is_null())
      CHECK(std::isnan(fp8_to_f32(uint8_t(c))));
    else
      CHECK(std::bit_cast<uint32_t>(fp8_to_f32(uint8_t(c))) == decode[c].get<uint32_t>());
  }
}

TEST_CASE("fp8: f32 and bf16 round to the code torch's float8_e4m3fn gives") {
  const nlohmann::json j = cases();
  INFO("fixture made with torch " << j["torch"].get<std::string>());
  size_t n = 0;
  for (const auto& c : j["f32"]) {
    const float x = std::bit_cast<float>(c[0].get<uint32_t>());
    const int want = c[1].get<int>();
    INFO("x = " << x << " (bits " << c[0] << ")");
    if (std::isnan(x))
      CHECK(std::isnan(fp8_to_f32(f32_to_fp8(x))));
    else
      CHECK(int(f32_to_fp8(x)) == want);
    ++n;
  }
  CHECK(n > 7000);
  n = 0;
  for (const auto& c : j["bf16"]) {
    const uint16_t h = c[0].get<uint16_t>();
    INFO("bf16 bits " << h);
    CHECK(int(bf16_to_fp8(h)) == c[1].get<int>());
    ++n;
  }
  CHECK(n > 1000);
}

TEST_CASE("fp8: round to nearest even, saturate at 448, keep NaN, subnormals") {
  CHECK(f32_to_fp8(1.0625f) == 0x38);    // halfway 1 and 1.125: to the even 1
  CHECK(f32_to_fp8(1.1875f) == 0x3A);    // halfway 1.125 and 1.25: to the even 1.25
  CHECK(f32_to_fp8(std::nextafter(1.0625f, 2.f)) == 0x39);
  CHECK(f32_to_fp8(15.5f) == 0x58);      // halfway 15 and 16: 16 (m = 16 carries into the next binade)
  CHECK(f32_to_fp8(-1.0625f) == 0xB8);
  CHECK(f32_to_fp8(448.f) == 0x7E);
  CHECK(f32_to_fp8(460.f) == 0x7E);
  CHECK(f32_to_fp8(1e30f) == 0x7E);      // beyond the range: saturated, not NaN
  CHECK(f32_to_fp8(INFINITY) == 0x7E);
  CHECK(f32_to_fp8(-INFINITY) == 0xFE);
  CHECK(f32_to_fp8(NAN) == 0x7F);
  CHECK(f32_to_fp8(0x1p-10f) == 0x00);   // halfway 0 and 2^-9: to the even 0
  CHECK(f32_to_fp8(std::nextafter(0x1p-10f, 1.f)) == 0x01);
  CHECK(f32_to_fp8(3 * 0x1p-10f) == 0x02);  // halfway 1 and 2 subnormal steps: 2
  CHECK(f32_to_fp8(15 * 0x1p-10f) == 0x08); // halfway 7 · 2^-9 and 2^-6: the normal 2^-6
  CHECK(f32_to_fp8(1e-40f) == 0x00);     // f32 subnormal
  CHECK(f32_to_fp8(-0.f) == 0x80);
  CHECK(fp8_to_bf16(0x38) == f32_to_bf16(1.f));
}

TEST_CASE("fp8: per-row quantization: scale amax/448, each value within half an E4M3 step") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t R = 5, K = 300;
  std::vector<float> x = ktest::random_floats(rng, R * K);
  for (int64_t k = 0; k < K; ++k) {
    x[1 * K + k] *= 1e-3f;                             // small row: its own scale
    x[2 * K + k] = 0.f;                                // zeros: scale 1, codes 0
    x[3 * K + k] *= (k % 7 == 0) ? 100.f : 1e-4f;      // a wide row: subnormal codes
  }
  x[4 * K + 17] = -3.f;  // the row's largest magnitude is negative
  std::vector<uint8_t> codes(R * K);
  std::vector<float> scales(R), back(R * K);
  quantize_rows_fp8(TensorView(codes.data(), DType::F8E4M3, {R, K}), TensorView(scales.data(), DType::F32, {R}),
                    TensorView(x.data(), DType::F32, {R, K}));
  dequantize_rows_fp8(TensorView(back.data(), DType::F32, {R, K}), TensorView(codes.data(), DType::F8E4M3, {R, K}),
                      TensorView(scales.data(), DType::F32, {R}));
  CHECK(scales[2] == 1.f);
  CHECK(codes[4 * K + 17] == 0xFE);  // -amax is -448 · scale
  for (int64_t r = 0; r < R; ++r) {
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::abs(x[r * K + k]));
    if (amax > 0) CHECK(scales[r] == amax / 448.f);
    for (int64_t k = 0; k < K; ++k) {
      INFO("row " << r << " col " << k);
      const double q = double(x[r * K + k]) / scales[r];
      CHECK(codes[r * K + k] == f32_to_fp8(x[r * K + k] / scales[r]));
      CHECK(std::abs(double(back[r * K + k]) - x[r * K + k]) <= half_step(q) * scales[r] * (1 + 0x1p-22));
    }
  }
  // A NaN in a row gives that row a NaN scale.
  x[7] = NAN;
  quantize_rows_fp8(TensorView(codes.data(), DType::F8E4M3, {R, K}), TensorView(scales.data(), DType::F32, {R}),
                    TensorView(x.data(), DType::F32, {R, K}));
  CHECK(std::isnan(scales[0]));
  CHECK(scales[1] > 0);
}

TEST_CASE("fp8: the FP8 GEMM sums exact products in f32 and applies the scales after") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t M = 7, N = 13, K = 200;
  const std::vector<float> a = ktest::random_floats(rng, M * K, 3.f), w = ktest::random_floats(rng, N * K, 0.02f);
  const std::vector<float> bias = ktest::random_floats(rng, N);
  std::vector<uint8_t> aq(M * K), wq(N * K);
  std::vector<float> sa(M), sw(N), out = ktest::poisoned(M * N);
  quantize_rows_fp8(TensorView(aq.data(), DType::F8E4M3, {M, K}), TensorView(sa.data(), DType::F32, {M}),
                    TensorView(const_cast<float*>(a.data()), DType::F32, {M, K}));
  quantize_rows_fp8(TensorView(wq.data(), DType::F8E4M3, {N, K}), TensorView(sw.data(), DType::F32, {N}),
                    TensorView(const_cast<float*>(w.data()), DType::F32, {N, K}));
  fp8_matmul(TensorView(out.data(), DType::F32, {M, N}), TensorView(aq.data(), DType::F8E4M3, {M, K}),
             TensorView(sa.data(), DType::F32, {M}), TensorView(wq.data(), DType::F8E4M3, {N, K}),
             TensorView(sw.data(), DType::F32, {N}), TensorView(const_cast<float*>(bias.data()), DType::F32, {N}));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      INFO("m " << m << " n " << n);
      // The codes' products are exact, so only the f32 sum (K terms) and the epilogue round.
      double codes_dot = 0, codes_abs = 0, full = 0, quant_bound = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double ca = fp8_to_f32(aq[m * K + k]), cw = fp8_to_f32(wq[n * K + k]);
        codes_dot += ca * cw;
        codes_abs += std::abs(ca * cw);
        // Against the unquantized product: each factor moved by at most half an E4M3 step.
        const double x = a[m * K + k], y = w[n * K + k];
        const double dx = half_step(x / sa[m]) * sa[m], dy = half_step(y / sw[n]) * sw[n];
        full += x * y;
        quant_bound += std::abs(x) * dy + dx * std::abs(y) + dx * dy;
      }
      const double s = double(sa[m]) * sw[n], want = codes_dot * s + bias[n];
      const double rounding = (K + 3) * 0x1p-24 * (codes_abs * s + std::abs(bias[n]));
      CHECK(std::abs(out[m * N + n] - want) <= rounding);
      CHECK(std::abs(out[m * N + n] - (full + bias[n])) <= quant_bound + rounding);
    }
}

TEST_CASE("fp8: bad arguments are refused, naming them") {
  std::vector<float> x(4 * 8, 1.f), s(4);
  std::vector<uint8_t> q(4 * 8);
  const TensorView xv(x.data(), DType::F32, {4, 8}), qv(q.data(), DType::F8E4M3, {4, 8}), sv(s.data(), DType::F32, {4});
  STEM_CHECK_ERROR(quantize_rows_fp8(TensorView(q.data(), DType::BF16, {4, 4}), sv, xv), "fp8 quantize codes must be f8e4m3");
  STEM_CHECK_ERROR(quantize_rows_fp8(TensorView(q.data(), DType::F8E4M3, {4, 4}), sv, xv), "must match the values");
  STEM_CHECK_ERROR(quantize_rows_fp8(qv, TensorView(s.data(), DType::F32, {3}), xv), "one scale per row");
  STEM_CHECK_ERROR(fp8_matmul(TensorView(x.data(), DType::F32, {4, 4}), xv, sv, qv, sv, TensorView()), "fp8_matmul a must be f8e4m3");
  STEM_CHECK_ERROR(scaled_matmul(TensorView(x.data(), DType::F32, {4, 5}), xv, sv, xv, sv, TensorView()), "must be [4,4]");
}
