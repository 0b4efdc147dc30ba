#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <string>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

void check_norm_args(const std::string& op, const TensorView& out, const TensorView& x, const TensorView& weight) {
  check_rows(out, (op + " out").c_str(), DType::F32, 2);
  check_rows(x, (op + " x").c_str(), DType::F32, 2);
  check_packed(weight, (op + " weight").c_str(), DType::F32, 1);
  STEM_CHECK(x.shape[0] == out.shape[0] && x.shape[1] == out.shape[1], op, ": x ", x.str(), " and out ", out.str(),
             " must have the same shape");
  STEM_CHECK(weight.shape[0] == x.shape[1], op, ": weight ", weight.str(), " must have x's hidden size ", x.shape[1]);
}

// One row; src and dst may be the same memory.
void normalize_row(float* dst, const float* src, const float* weight, int64_t hidden, float eps) {
  float sum_sq = 0.f;
  for (int64_t j = 0; j < hidden; ++j) sum_sq += src[j] * src[j];
  const float inv_rms = 1.f / std::sqrt(sum_sq / static_cast<float>(hidden) + eps);
  for (int64_t j = 0; j < hidden; ++j) dst[j] = src[j] * inv_rms * weight[j];
}

// Rows are independent; only big steps are worth waking the thread pool for.
constexpr int64_t kParallelElems = 1 << 18;

}  // namespace

void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) {
  check_norm_args("rmsnorm", out, x, weight);
  const int64_t tokens = x.shape[0], hidden = x.shape[1];
  const float* w = weight.ptr<float>();
#pragma omp parallel for if (tokens * hidden >= kParallelElems)
  for (int64_t t = 0; t < tokens; ++t)
    normalize_row(out.ptr<float>() + t * row_stride(out), x.ptr<float>() + t * row_stride(x), w, hidden, eps);
}

void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                 float eps) {
  check_norm_args("add_rmsnorm", out, x, weight);
  check_rows(residual, "add_rmsnorm residual", DType::F32, 2);
  STEM_CHECK(residual.shape[0] == x.shape[0] && residual.shape[1] == x.shape[1], "add_rmsnorm: residual ",
             residual.str(), " and x ", x.str(), " must have the same shape");
  STEM_CHECK(out.data != residual.data, "add_rmsnorm: out must not alias residual (the sum is kept there)");
  const int64_t tokens = x.shape[0], hidden = x.shape[1];
  const float* w = weight.ptr<float>();
#pragma omp parallel for if (tokens * hidden >= kParallelElems)
  for (int64_t t = 0; t < tokens; ++t) {
    float* res = residual.ptr<float>() + t * row_stride(residual);
    const float* add = x.ptr<float>() + t * row_stride(x);
    for (int64_t j = 0; j < hidden; ++j) res[j] += add[j];
    normalize_row(out.ptr<float>() + t * row_stride(out), res, w, hidden, eps);
  }
}

}  // namespace stem::cpu
