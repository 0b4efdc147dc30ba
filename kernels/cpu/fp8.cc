#include "kernels/cpu/fp8.h"

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

float decode(uint8_t c) {
  const int e = (c >> 3) & 0xF, m = c & 7;
  if ((c & 0x7F) == 0x7F) return std::nanf("");
  // Subnormals (e = 0): m · 2^-9; normals: (8 + m) · 2^(e - 10).
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
  return (c & 0x80) ? -v : v;
}

const std::array<float, 256>& table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> a{};
    for (int c = 0; c < 256; ++c) a[c] = decode(static_cast<uint8_t>(c));
    return a;
  }();
  return t;
}

// f32 rows (any row stride) and their E4M3 codes (packed), of the same shape.
void check_codes(const TensorView& values, const TensorView& codes, const char* op) {
  check_rows(values, (std::string(op) + " values").c_str(), DType::F32, 2);
  check_packed(codes, (std::string(op) + " codes").c_str(), DType::F8E4M3, 2);
  STEM_CHECK(codes.shape[0] == values.shape[0] && codes.shape[1] == values.shape[1], op, ": codes ", codes.str(),
             " must match the values ", values.str());
}

void check_scales(const TensorView& s, const char* name, int64_t rows) {
  check_packed(s, name, DType::F32, 1);
  check_dim(s, name, 0, rows, "one scale per row");
}

}  // namespace

float fp8_to_f32(uint8_t code) { return table()[code]; }

uint8_t f32_to_fp8(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a >= kFp8Max) return sign | 0x7E;  // 448 = 1.75 · 2^8; beyond it (inf too) saturates
  // a = f · 2^E with f in [0.5, 1): its binade starts at 2^(E-1). Below 2^-6 the spacing stays 2^-9
  // (subnormals). The binade's 8 steps of 2^(e-3), rounded to nearest even by nearbyint (scaling by
  // a power of two is exact), and the code is (e + 7) · 8 + (m − 8): m = 16 carries into the next
  // binade, and e = −6 with m < 8 is a subnormal's code m.
  int E = 0;
  std::frexp(a, &E);
  const int e = a < 0x1p-6f ? -6 : E - 1;  // frexp(0) gives E = 0
  const int m = static_cast<int>(std::nearbyint(std::ldexp(a, 3 - e)));
  return sign | static_cast<uint8_t>(((e + 7) << 3) + m - 8);
}

void quantize_rows_fp8(const TensorView& codes, const TensorView& scales, const TensorView& x) {
  check_codes(x, codes, "fp8 quantize");
  const int64_t R = x.shape[0], K = x.shape[1];
  check_scales(scales, "fp8 quantize scales", R);
#pragma omp parallel for if (R * K > (1 << 16))
  for (int64_t r = 0; r < R; ++r) {
    const float* in = x.ptr<float>() + r * row_stride(x);
    uint8_t* out = codes.ptr<uint8_t>() + r * K;
    float amax = 0.f;
    for (int64_t k = 0; k < K && !std::isnan(amax); ++k)
      if (const float v = std::fabs(in[k]); v > amax || std::isnan(v)) amax = v;
    const float s = amax == 0.f ? 1.f : amax / kFp8Max;
    for (int64_t k = 0; k < K; ++k) out[k] = f32_to_fp8(in[k] / s);
    scales.ptr<float>()[r] = s;
  }
}

void dequantize_rows_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales) {
  check_codes(out, codes, "fp8 dequantize");
  const int64_t R = codes.shape[0], K = codes.shape[1];
  if (!scales.empty()) check_scales(scales, "fp8 dequantize scales", R);
  const auto& t = table();
  for (int64_t r = 0; r < R; ++r) {
    const uint8_t* in = codes.ptr<uint8_t>() + r * K;
    float* o = out.ptr<float>() + r * row_stride(out);
    const float s = scales.empty() ? 1.f : scales.ptr<float>()[r];
    for (int64_t k = 0; k < K; ++k) o[k] = t[in[k]] * s;
  }
}

void scaled_matmul(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
                   const TensorView& w_scale, const TensorView& bias) {
  matmul(out, a, w, TensorView());  // checks a, w and out
  const int64_t M = out.shape[0], N = out.shape[1];
  check_scales(a_scale, "scaled_matmul a_scale", M);
  check_scales(w_scale, "scaled_matmul w_scale", N);
  if (!bias.empty()) {
    check_packed(bias, "scaled_matmul bias", DType::F32, 1);
    check_dim(bias, "scaled_matmul bias", 0, N, "N, the rows of w");
  }
  const float *sa = a_scale.ptr<float>(), *sw = w_scale.ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    float* o = out.ptr<float>() + m * row_stride(out);
    for (int64_t n = 0; n < N; ++n) o[n] = o[n] * (sa[m] * sw[n]) + (bias.empty() ? 0.f : bias.ptr<float>()[n]);
  }
}

void fp8_matmul(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
                const TensorView& w_scale, const TensorView& bias) {
  check_packed(a, "fp8_matmul a", DType::F8E4M3, 2);
  check_packed(w, "fp8_matmul w", DType::F8E4M3, 2);
  std::vector<float> af(static_cast<size_t>(a.numel())), wf(static_cast<size_t>(w.numel()));
  const TensorView av(af.data(), DType::F32, {a.shape[0], a.shape[1]});
  const TensorView wv(wf.data(), DType::F32, {w.shape[0], w.shape[1]});
  dequantize_rows_fp8(av, a, TensorView());
  dequantize_rows_fp8(wv, w, TensorView());
  scaled_matmul(out, av, a_scale, wv, w_scale, bias);
}

}  // namespace stem::cpu
