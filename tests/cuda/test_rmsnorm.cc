#include "kernels/cpu/rmsnorm.h"
#include "kernels/cuda/rmsnorm.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

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

std::vector<float> cpu_rmsnorm(std::vector<float> x, std::vector<float> w, int64_t tokens, int64_t hidden) {
  std::vector<float> out(x.size());
  cpu::rmsnorm(TensorView(out.data(), DType::F32, {tokens, hidden}), TensorView(x.data(), DType::F32, {tokens, hidden}),
               TensorView(w.data(), DType::F32, {hidden}), kEps);
  return out;
}

std::string label(const char* op, int64_t tokens, int64_t hidden, const char* how) {
  return std::string(op) + " T=" + std::to_string(tokens) + " H=" + std::to_string(hidden) + " " + how;
}

}  // namespace

TEST_CASE("cuda rmsnorm matches the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [tokens, hidden] =
      GENERATE(table<int64_t, int64_t>({{1, 576}, {7, 576}, {300, 576}, {1, 4096}, {7, 4096}, {300, 4096}}));
  INFO("tokens " << tokens << " hidden " << hidden);
  const int64_t n = tokens * hidden;
  const std::vector<float> w = gpu_test::random_bf16_values(rng, hidden, 2.f);
  auto d_w = gpu_test::upload_bf16(w);
  const TensorView w_v = d_w->view(DType::BF16, {hidden});
  DeviceBuffer d_out(static_cast<size_t>(n) * 2);
  d_out.poison();
  const TensorView out_v = d_out.view(DType::BF16, {tokens, hidden});

  SECTION("f32 x (the residual stream) into bf16 out") {
    const std::vector<float> x = random_rows(rng, tokens, hidden);
    auto d_x = gpu_test::upload(x);
    cuda::rmsnorm(out_v, d_x->view(DType::F32, {tokens, hidden}), w_v, kEps);
    STEM_CHECK_CLOSE(label("rmsnorm", tokens, hidden, "x=f32"), gpu_test::download_f32(d_out, DType::BF16, n),
                     cpu_rmsnorm(x, w, tokens, hidden), gpu_test::kBf16Tolerance);
  }
  SECTION("bf16 x, in place") {
    const std::vector<float> x = gpu_test::round_to_bf16(random_rows(rng, tokens, hidden));
    auto d_x = gpu_test::upload_bf16(x);
    const TensorView x_v = d_x->view(DType::BF16, {tokens, hidden});
    cuda::rmsnorm(x_v, x_v, w_v, kEps);
    STEM_CHECK_CLOSE(label("rmsnorm", tokens, hidden, "x=bf16 in-place"), gpu_test::download_f32(*d_x, DType::BF16, n),
                     cpu_rmsnorm(x, w, tokens, hidden), gpu_test::kBf16Tolerance);
  }
  SECTION("f32 x as a slice of a wider buffer") {
    const int64_t width = 3 * hidden;
    const std::vector<float> wide = random_rows(rng, tokens, width);
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < hidden; ++j) x[t * hidden + j] = wide[t * width + hidden + j];
    auto d_wide = gpu_test::upload(wide);
    cuda::rmsnorm(out_v, gpu_test::column_slice(*d_wide, DType::F32, tokens, width, hidden, hidden), w_v, kEps);
    STEM_CHECK_CLOSE(label("rmsnorm", tokens, hidden, "x=f32 strided"), gpu_test::download_f32(d_out, DType::BF16, n),
                     cpu_rmsnorm(x, w, tokens, hidden), gpu_test::kBf16Tolerance);
  }
}

TEST_CASE("cuda add_rmsnorm adds into the f32 residual, then normalises it into bf16") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [tokens, hidden] =
      GENERATE(table<int64_t, int64_t>({{1, 576}, {7, 576}, {300, 576}, {1, 4096}, {7, 4096}, {300, 4096}}));
  const bool over_x = GENERATE(false, true);
  INFO("tokens " << tokens << " hidden " << hidden << " out over x " << over_x);
  const int64_t n = tokens * hidden;
  std::vector<float> residual = random_rows(rng, tokens, hidden);
  const std::vector<float> x = gpu_test::round_to_bf16(random_rows(rng, tokens, hidden));
  const std::vector<float> w = gpu_test::random_bf16_values(rng, hidden, 2.f);

  auto d_res = gpu_test::upload(residual);
  auto d_x = gpu_test::upload_bf16(x);
  auto d_w = gpu_test::upload_bf16(w);
  DeviceBuffer d_out(static_cast<size_t>(n) * 2);
  d_out.poison();
  const TensorView x_v = d_x->view(DType::BF16, {tokens, hidden});
  const TensorView out_v = over_x ? x_v : d_out.view(DType::BF16, {tokens, hidden});
  cuda::add_rmsnorm(out_v, d_res->view(DType::F32, {tokens, hidden}), x_v, d_w->view(DType::BF16, {hidden}), kEps);

  std::vector<float> ref(static_cast<size_t>(n)), x_copy = x, w_copy = w;
  cpu::add_rmsnorm(
      TensorView(ref.data(), DType::F32, {tokens, hidden}), TensorView(residual.data(), DType::F32, {tokens, hidden}),
      TensorView(x_copy.data(), DType::F32, {tokens, hidden}), TensorView(w_copy.data(), DType::F32, {hidden}), kEps);
  const std::string what = label("add_rmsnorm", tokens, hidden, over_x ? "out-over-x" : "fresh-out");
  STEM_CHECK_CLOSE(what, gpu_test::download_f32(over_x ? *d_x : d_out, DType::BF16, n), ref, gpu_test::kBf16Tolerance);
  // The same f32 additions on both sides: the residual must agree to rounding, and stay f32.
  STEM_CHECK_CLOSE(what + " residual", d_res->download<float>(static_cast<size_t>(n)), residual, 1e-7);
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda rmsnorm rejects bad arguments") {
  alignas(16) static float f32s[4 * 64];
  alignas(16) static uint16_t halves[4 * 64], halves2[4 * 64], weights[64];
  const TensorView x(f32s, DType::F32, {4, 64}), out(halves, DType::BF16, {4, 64});
  const TensorView w(weights, DType::BF16, {64});

  STEM_CHECK_ERROR(cuda::rmsnorm(out, x, TensorView(f32s, DType::F32, {64}), kEps), "weight must be bf16");
  STEM_CHECK_ERROR(cuda::rmsnorm(TensorView(f32s, DType::F32, {4, 64}), x, w, kEps), "out must be bf16");
  STEM_CHECK_ERROR(cuda::rmsnorm(out, TensorView(f32s, DType::I32, {4, 64}), w, kEps), "x must be f32 or bf16");
  STEM_CHECK_ERROR(cuda::rmsnorm(out, x, TensorView(weights, DType::BF16, {32}), kEps), "weight");
  STEM_CHECK_ERROR(cuda::rmsnorm(TensorView(halves, DType::BF16, {2, 128}), x, w, kEps), "same shape");
  STEM_CHECK_ERROR(cuda::rmsnorm(out, x, TensorView{}, kEps), "weight is empty");
  STEM_CHECK_ERROR(cuda::rmsnorm(TensorView(halves, DType::BF16, {4, 60}), TensorView(f32s, DType::F32, {4, 60}),
                                 TensorView(weights, DType::BF16, {60}), kEps),
                   "multiple of 8");
  static std::vector<uint16_t> huge(40000);
  STEM_CHECK_ERROR(
      cuda::rmsnorm(TensorView(huge.data(), DType::BF16, {1, 40000}), TensorView(huge.data(), DType::BF16, {1, 40000}),
                    TensorView(huge.data(), DType::BF16, {40000}), kEps),
      "over the supported");

  const TensorView xb(halves2, DType::BF16, {4, 64});
  STEM_CHECK_ERROR(cuda::add_rmsnorm(out, TensorView(halves, DType::BF16, {4, 64}), xb, w, kEps),
                   "residual must be f32");
  STEM_CHECK_ERROR(cuda::add_rmsnorm(out, x, TensorView(f32s, DType::F32, {4, 64}), w, kEps), "x must be bf16");
  STEM_CHECK_ERROR(cuda::add_rmsnorm(out, TensorView(f32s, DType::F32, {4, 32}), xb, w, kEps), "residual");
  STEM_CHECK_ERROR(cuda::add_rmsnorm(TensorView(f32s, DType::BF16, {4, 64}), x, xb, w, kEps),
                   "must not alias residual");
}
