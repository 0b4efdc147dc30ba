#include "kernels/cpu/rmsnorm.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

constexpr float kEps = 1e-5f;

// Rows of very different magnitudes, so that eps matters for the small ones.
std::vector<float> random_rows(std::mt19937_64& rng, int64_t tokens, int64_t hidden) {
  std::vector<float> x = ktest::random_floats(rng, tokens * hidden);
  const float scales[] = {1.f, 0.003f, 7.f, 0.1f};
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < hidden; ++j) x[t * hidden + j] *= scales[t % 4];
  return x;
}

// x * 1/sqrt(mean(x^2) + eps) * weight in double; x has row stride `stride`.
std::vector<double> reference(const float* x, int64_t stride, const std::vector<float>& w, int64_t tokens,
                              int64_t hidden) {
  std::vector<double> ref;
  for (int64_t t = 0; t < tokens; ++t) {
    double sum_sq = 0;
    for (int64_t j = 0; j < hidden; ++j) sum_sq += double{x[t * stride + j]} * x[t * stride + j];
    const double inv = 1 / std::sqrt(sum_sq / hidden + kEps);
    for (int64_t j = 0; j < hidden; ++j) ref.push_back(x[t * stride + j] * inv * w[j]);
  }
  return ref;
}

}  // namespace

TEST_CASE("rmsnorm matches HF Llama's formula") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // The last shape is big enough for the kernel to use its thread pool.
  const auto [tokens, hidden] =
      GENERATE(table<int64_t, int64_t>({{1, 64}, {9, 64}, {1, 2048}, {9, 2048}, {160, 2048}}));
  INFO("tokens " << tokens << " hidden " << hidden);
  std::vector<float> x = random_rows(rng, tokens, hidden), w = ktest::random_floats(rng, hidden, 2.f);
  const TensorView w_v(w.data(), DType::F32, {hidden});

  SECTION("into a fresh buffer") {
    std::vector<float> out = ktest::poisoned(tokens * hidden);
    cpu::rmsnorm(TensorView(out.data(), DType::F32, {tokens, hidden}),
                 TensorView(x.data(), DType::F32, {tokens, hidden}), w_v, kEps);
    CHECK(ktest::count_nan(out.data(), tokens * hidden) == 0);
    CHECK(ktest::rel_error(out, reference(x.data(), hidden, w, tokens, hidden)) <= 1e-5);
  }
  SECTION("in place") {
    const std::vector<double> ref = reference(x.data(), hidden, w, tokens, hidden);
    const TensorView x_v(x.data(), DType::F32, {tokens, hidden});
    cpu::rmsnorm(x_v, x_v, w_v, kEps);
    CHECK(ktest::rel_error(x, ref) <= 1e-5);
  }
  SECTION("x as a slice of a wider buffer") {
    const int64_t width = hidden * 3;
    std::vector<float> buf = random_rows(rng, tokens, width);
    std::vector<float> out = ktest::poisoned(tokens * hidden);
    cpu::rmsnorm(TensorView(out.data(), DType::F32, {tokens, hidden}),
                 ktest::column_slice(buf.data(), tokens, width, hidden, hidden), w_v, kEps);
    CHECK(ktest::rel_error(out, reference(buf.data() + hidden, width, w, tokens, hidden)) <= 1e-5);
  }
}

TEST_CASE("add_rmsnorm adds into the residual, then normalises it") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [tokens, hidden] = GENERATE(table<int64_t, int64_t>({{6, 64}, {6, 1000}, {128, 2048}}));
  std::vector<float> residual = random_rows(rng, tokens, hidden), x = random_rows(rng, tokens, hidden);
  std::vector<float> w = ktest::random_floats(rng, hidden, 2.f);
  std::vector<float> sum(residual.size());
  std::vector<double> sum_ref(residual.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    sum[i] = residual[i] + x[i];  // fp32, as the kernel adds
    sum_ref[i] = double{residual[i]} + x[i];
  }
  const std::vector<double> ref = reference(sum.data(), hidden, w, tokens, hidden);
  const TensorView res_v(residual.data(), DType::F32, {tokens, hidden}), x_v(x.data(), DType::F32, {tokens, hidden});
  const TensorView w_v(w.data(), DType::F32, {hidden});

  SECTION("into a fresh buffer") {
    std::vector<float> out = ktest::poisoned(tokens * hidden);
    cpu::add_rmsnorm(TensorView(out.data(), DType::F32, {tokens, hidden}), res_v, x_v, w_v, kEps);
    CHECK(ktest::count_nan(out.data(), tokens * hidden) == 0);
    CHECK(ktest::rel_error(out, ref) <= 1e-5);
  }
  SECTION("over x") {
    cpu::add_rmsnorm(x_v, res_v, x_v, w_v, kEps);
    CHECK(ktest::rel_error(x, ref) <= 1e-5);
  }
  CHECK(ktest::rel_error(residual, sum_ref) <= 1e-6);
}

TEST_CASE("rmsnorm rejects bad arguments") {
  std::mt19937_64 rng(2);
  std::vector<float> x = ktest::random_floats(rng, 4 * 32), w = ktest::random_floats(rng, 32);
  std::vector<float> out = ktest::poisoned(4 * 32);
  const TensorView x_v(x.data(), DType::F32, {4, 32}), out_v(out.data(), DType::F32, {4, 32});
  const TensorView w_v(w.data(), DType::F32, {32});

  STEM_CHECK_ERROR(cpu::rmsnorm(out_v, x_v, TensorView(w.data(), DType::F32, {16}), kEps), "weight");
  STEM_CHECK_ERROR(cpu::rmsnorm(out_v, TensorView(x.data(), DType::BF16, {4, 32}), w_v, kEps), "x must be f32");
  STEM_CHECK_ERROR(cpu::rmsnorm(TensorView(out.data(), DType::F32, {2, 64}), x_v, w_v, kEps), "same shape");
  STEM_CHECK_ERROR(cpu::rmsnorm(out_v, TensorView(x.data(), DType::F32, {128}), w_v, kEps), "x must have 2 dims");
  STEM_CHECK_ERROR(cpu::rmsnorm(out_v, x_v, TensorView{}, kEps), "weight is empty");
  STEM_CHECK_ERROR(cpu::add_rmsnorm(out_v, TensorView(out.data(), DType::F32, {4, 16}), x_v, w_v, kEps), "residual");
  STEM_CHECK_ERROR(cpu::add_rmsnorm(out_v, out_v, x_v, w_v, kEps), "must not alias residual");
  TensorView overlapping = x_v;
  overlapping.stride[0] = 8;  // rows of 32 that overlap each other
  STEM_CHECK_ERROR(cpu::rmsnorm(out_v, overlapping, w_v, kEps), "row stride 8");
}
