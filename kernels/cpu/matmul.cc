#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <limits>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

// BLAS takes int sizes; a step never comes near 2^31 elements per side.
blasint to_blas(int64_t n, const char* what) {
  STEM_CHECK(n <= std::numeric_limits<blasint>::max(), "matmul: ", what, " ", n, " is too large for BLAS");
  return static_cast<blasint>(n);
}

}  // namespace

void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) {
  check_rows(out, "matmul out", DType::F32, 2);
  check_rows(a, "matmul a", DType::F32, 2);
  check_rows(w, "matmul w", DType::F32, 2);
  const int64_t m = a.shape[0], k = a.shape[1], n = w.shape[0];
  STEM_CHECK(w.shape[1] == k, "matmul: w ", w.str(), " must be [N,K] with K = ", k, " as in a ", a.str());
  STEM_CHECK(out.shape[0] == m && out.shape[1] == n, "matmul: out ", out.str(), " must be [", m, ",", n, "] for a ",
             a.str(), " and w ", w.str());
  if (!bias.empty()) {
    check_packed(bias, "matmul bias", DType::F32, 1);
    check_dim(bias, "matmul bias", 0, n, "N, the rows of w");
  }
  if (m == 0 || n == 0) return;

  // Seed out with the bias (beta = 1) or let BLAS overwrite it (beta = 0 never reads out, so a
  // poisoned or uninitialised buffer is fine).
  float beta = 0.f;
  if (!bias.empty()) {
    for (int64_t i = 0; i < m; ++i) std::copy_n(bias.ptr<float>(), n, out.ptr<float>() + i * row_stride(out));
    beta = 1.f;
  }
  if (k == 0) {
    if (bias.empty())
      for (int64_t i = 0; i < m; ++i) std::fill_n(out.ptr<float>() + i * row_stride(out), n, 0.f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_blas(m, "M"), to_blas(n, "N"), to_blas(k, "K"), 1.f,
              a.ptr<float>(), to_blas(row_stride(a), "a row stride"), w.ptr<float>(),
              to_blas(row_stride(w), "w row stride"), beta, out.ptr<float>(),
              to_blas(row_stride(out), "out row stride"));
}

}  // namespace stem::cpu
