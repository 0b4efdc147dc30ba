#include "kernels/cpu/matmul.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

// out[i][j] = sum_k a[i][k] w[j][k] (+ bias[j]) in double; a has row stride lda.
std::vector<double> reference(const float* a, int64_t lda, const std::vector<float>& w, const float* bias, int64_t m,
                              int64_t n, int64_t k) {
  std::vector<double> out;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias ? bias[j] : 0.0;
      for (int64_t x = 0; x < k; ++x) acc += double{a[i * lda + x]} * w[j * k + x];
      out.push_back(acc);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("matmul computes a times w transposed plus bias") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t m = GENERATE(1, 33), n = 96, k = 200;
  const bool with_bias = GENERATE(false, true);
  INFO("M " << m << " bias " << with_bias);
  std::vector<float> a = ktest::random_floats(rng, m * k), w = ktest::random_floats(rng, n * k);
  std::vector<float> bias = ktest::random_floats(rng, n);
  const TensorView bias_v = with_bias ? TensorView(bias.data(), DType::F32, {n}) : TensorView{};
  const std::vector<double> ref = reference(a.data(), k, w, with_bias ? bias.data() : nullptr, m, n, k);

  std::vector<float> out = ktest::poisoned(m * n);  // beta = 0 must not read the NaNs
  cpu::matmul(TensorView(out.data(), DType::F32, {m, n}), TensorView(a.data(), DType::F32, {m, k}),
              TensorView(w.data(), DType::F32, {n, k}), bias_v);
  CHECK(ktest::count_nan(out.data(), m * n) == 0);
  CHECK(ktest::rel_error(out, ref) <= 1e-5);
}

TEST_CASE("matmul reads and writes slices of wider buffers") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t m = 5, n = 48, k = 64, a_width = 3 * k, out_width = n + 40, out_col = 24;
  // a is the middle third of a [M, 3K] buffer; out the columns [24, 72) of an [M, 88] one.
  std::vector<float> a_buf = ktest::random_floats(rng, m * a_width), w = ktest::random_floats(rng, n * k);
  std::vector<float> bias = ktest::random_floats(rng, n);
  std::vector<float> out_buf = ktest::poisoned(m * out_width);
  cpu::matmul(ktest::column_slice(out_buf.data(), m, out_width, out_col, n),
              ktest::column_slice(a_buf.data(), m, a_width, k, k), TensorView(w.data(), DType::F32, {n, k}),
              TensorView(bias.data(), DType::F32, {n}));

  const std::vector<double> ref = reference(a_buf.data() + k, a_width, w, bias.data(), m, n, k);
  std::vector<float> got;
  int64_t touched = 0;  // the columns around the slice must be left alone
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < out_width; ++j) {
      const float v = out_buf[i * out_width + j];
      if (j >= out_col && j < out_col + n)
        got.push_back(v);
      else
        touched += !std::isnan(v);
    }
  }
  CHECK(touched == 0);
  CHECK(ktest::count_nan(got.data(), m * n) == 0);
  CHECK(ktest::rel_error(got, ref) <= 1e-5);
}

TEST_CASE("matmul rejects bad arguments") {
  std::mt19937_64 rng(4);
  std::vector<float> a = ktest::random_floats(rng, 4 * 8), w = ktest::random_floats(rng, 6 * 8);
  std::vector<float> out = ktest::poisoned(4 * 6);
  const TensorView a_v(a.data(), DType::F32, {4, 8}), w_v(w.data(), DType::F32, {6, 8});
  const TensorView out_v(out.data(), DType::F32, {4, 6});

  STEM_CHECK_ERROR(cpu::matmul(out_v, a_v, TensorView(w.data(), DType::F32, {8, 6}), {}), "must be [N,K] with K = 8");
  STEM_CHECK_ERROR(cpu::matmul(TensorView(out.data(), DType::F32, {6, 4}), a_v, w_v, {}), "must be [4,6]");
  STEM_CHECK_ERROR(cpu::matmul(out_v, a_v, w_v, TensorView(w.data(), DType::F32, {5})), "bias dimension 0 must be 6");
  STEM_CHECK_ERROR(cpu::matmul(out_v, a_v, TensorView(w.data(), DType::BF16, {6, 8}), {}), "w must be f32");
  STEM_CHECK_ERROR(cpu::matmul(out_v, TensorView(a.data(), DType::F32, {32}), w_v, {}), "a must have 2 dims");
  CHECK(ktest::count_nan(out.data(), 4 * 6) == 4 * 6);  // nothing was written
}
