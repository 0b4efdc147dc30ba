// The CPU twin's side of the FP8 GEMM tests (test_fp8_gemm.cc: cuBLASLt; test_fp8_gemv.cc: the
// GEMV): codes quantized per row by the twin, the twin's product, and the magnitude S that both
// tests' bounds scale with.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "tests/cuda/gpu_test_util.h"

namespace stem::fp8_test {

struct Shape {
  int64_t n, k;
  bool bias;
  const char* what;
};

// E4M3 codes of x [rows, cols] (f32), quantized per row by the twin.
struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

inline Quantized quantize(const std::vector<float>& x, int64_t rows, int64_t cols) {
  Quantized q{std::vector<uint8_t>(static_cast<size_t>(rows * cols)), std::vector<float>(static_cast<size_t>(rows))};
  cpu::quantize_rows_fp8(TensorView(q.codes.data(), DType::F8E4M3, {rows, cols}),
                         TensorView(q.scales.data(), DType::F32, {rows}),
                         TensorView(const_cast<float*>(x.data()), DType::F32, {rows, cols}));
  return q;
}

// The twin's product [m,n], and S[m,n] = a_scale[m]·w_scale[n]·Σ_k |a[m,k]·w[n,k]|.
struct Reference {
  std::vector<float> out, magnitude;
};

inline Reference twin(const Quantized& a, const Quantized& w, const std::vector<float>& bias, int64_t m, int64_t n,
                      int64_t k) {
  Reference r{std::vector<float>(static_cast<size_t>(m * n)), std::vector<float>(static_cast<size_t>(m * n))};
  std::vector<float> bias_copy = bias;
  cpu::fp8_matmul(TensorView(r.out.data(), DType::F32, {m, n}),
                  TensorView(const_cast<uint8_t*>(a.codes.data()), DType::F8E4M3, {m, k}),
                  TensorView(const_cast<float*>(a.scales.data()), DType::F32, {m}),
                  TensorView(const_cast<uint8_t*>(w.codes.data()), DType::F8E4M3, {n, k}),
                  TensorView(const_cast<float*>(w.scales.data()), DType::F32, {n}),
                  bias.empty() ? TensorView{} : TensorView(bias_copy.data(), DType::F32, {n}));
  std::vector<float> abs_a(a.codes.size()), abs_w(w.codes.size());
  for (size_t i = 0; i < abs_a.size(); ++i) abs_a[i] = std::fabs(cpu::fp8_to_f32(a.codes[i]));
  for (size_t i = 0; i < abs_w.size(); ++i) abs_w[i] = std::fabs(cpu::fp8_to_f32(w.codes[i]));
  const std::vector<float> sum = gpu_test::cpu_matmul(abs_a, k, abs_w, {}, m, n, k);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) r.magnitude[i * n + j] = sum[i * n + j] * a.scales[i] * w.scales[j];
  return r;
}

// test_fp8_gemm.cc's bound for cuBLASLt's FP8 GEMM (derived there): |ref|, S and |bias| of one element.
inline double cublaslt_bound(double ref, double magnitude, double bias) {
  return std::ldexp(ref + bias, -8) + std::ldexp(magnitude, -8) + 1e-30;
}

// Elements of got (the first rows of ref) whose error passes bound(|ref|, S, |bias|), NaNs
// included; *worst: the largest error / bound.
template <class Bound>
int64_t out_of_bound(const std::vector<float>& got, const Reference& ref, const std::vector<float>& bias, int64_t n,
                     Bound bound, double* worst) {
  int64_t bad = 0;
  *worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double b = bias.empty() ? 0.0 : std::fabs(bias[i % static_cast<size_t>(n)]);
    const double limit = bound(std::fabs(ref.out[i]), double{ref.magnitude[i]}, b);
    const double err = std::fabs(double{got[i]} - ref.out[i]);
    if (!(err <= limit)) ++bad;
    if (std::isfinite(err)) *worst = std::max(*worst, err / limit);
  }
  return bad;
}

}  // namespace stem::fp8_test
