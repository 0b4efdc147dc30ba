#include "kernels/cpu/rope.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

double pow_inv(double theta, int64_t i, int64_t dim) { return 1.0 / std::pow(theta, double(2 * i) / double(dim)); }

void check_close(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("i " << i << " got " << got[i] << " want " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= tol * std::abs(want[i]));
  }
}

}  // namespace

TEST_CASE("rope_inv_freq without scaling and with linear scaling") {
  const int64_t dim = GENERATE(64, 128);
  const double theta = GENERATE(10000.0, 1000000.0);
  std::vector<double> plain;
  for (int64_t i = 0; i < dim / 2; ++i) plain.push_back(pow_inv(theta, i, dim));
  check_close(cpu::rope_inv_freq(dim, theta, {}), plain, 1e-6);

  cpu::RopeScaling linear{cpu::RopeScaling::Kind::Linear, 4.0};
  std::vector<double> slowed = plain;
  for (double& f : slowed) f /= 4.0;
  check_close(cpu::rope_inv_freq(dim, theta, linear), slowed, 1e-6);
}

TEST_CASE("rope_inv_freq with Llama 3.1's scaling") {
  // Llama 3.1 8B's config: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
  const cpu::RopeScaling llama3{cpu::RopeScaling::Kind::Llama3, 8.0, 1.0, 4.0, 8192};
  const std::vector<float> got = cpu::rope_inv_freq(128, 500000.0, llama3);

  // The documented rule, by hand: with wavelen = 2π / f,
  //   wavelen < 8192/4 = 2048   keep f;
  //   wavelen > 8192/1 = 8192   f / 8;
  //   otherwise, s = (8192 / wavelen - 1) / (4 - 1), f' = (1 - s) f / 8 + s f.
  std::vector<double> want;
  int kept = 0, slowed = 0, blended = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const double f = pow_inv(500000.0, i, 128), wavelen = 2 * 3.14159265358979323846 / f;
    if (wavelen < 2048) {
      want.push_back(f);
      ++kept;
    } else if (wavelen > 8192) {
      want.push_back(f / 8);
      ++slowed;
    } else {
      const double s = (8192 / wavelen - 1) / 3;
      want.push_back((1 - s) * f / 8 + s * f);
      ++blended;
    }
  }
  // All three bands are exercised (wavelen crosses 2048 near i = 29 and 8192 near i = 35).
  CHECK(kept > 20);
  CHECK(slowed > 20);
  CHECK(blended >= 4);
  check_close(got, want, 2e-6);
  CHECK(got[0] == 1.0f);
  // Spot values worked out with a calculator: i = 63 is 500000^(-126/128) / 8.
  CHECK(got[63] == Approx(std::pow(500000.0, -126.0 / 128.0) / 8).epsilon(1e-6));
}

TEST_CASE("rope_inv_freq rejects odd head_dim") {
  STEM_CHECK_ERROR(cpu::rope_inv_freq(63, 10000.0, {}), "head_dim must be positive and even");
}

TEST_CASE("rope rotates q and k like HF's rotate_half") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // 256 tokens are enough for the kernel to use its thread pool.
  const int64_t dim = GENERATE(64, 128), tokens = GENERATE(7, 256);
  const int64_t q_heads = 8, k_heads = 2;
  INFO("head_dim " << dim << " tokens " << tokens);
  std::vector<int32_t> positions = {0, 5, 1, 131071, 4096, 77, 32000};  // out of order and far
  while (static_cast<int64_t>(positions.size()) < tokens) positions.push_back(static_cast<int32_t>(rng() % 200000));
  const std::vector<float> inv_freq =
      cpu::rope_inv_freq(dim, 500000.0, {cpu::RopeScaling::Kind::Llama3, 8.0, 1.0, 4.0, 8192});

  // q and k are slices of a fused qkv buffer [T, (Hq + 2 Hk) D], as the forward pass lays them out.
  const int64_t width = (q_heads + 2 * k_heads) * dim;
  std::vector<float> qkv = ktest::random_floats(rng, tokens * width);
  const std::vector<float> before = qkv;
  TensorView q(qkv.data(), DType::F32, {tokens, q_heads, dim}),
      k(qkv.data() + q_heads * dim, DType::F32, {tokens, k_heads, dim});
  q.stride[0] = k.stride[0] = width;
  cpu::rope(q, k, TensorView(positions.data(), DType::I32, {tokens}),
            TensorView(const_cast<float*>(inv_freq.data()), DType::F32, {dim / 2}));

  // Reference: the fp32 angle the spec prescribes, then cos/sin and the rotation in double.
  std::vector<double> want(before.begin(), before.end());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < q_heads + k_heads; ++h) {
      const int64_t base = t * width + h * dim;
      for (int64_t i = 0; i < dim / 2; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        const double c = std::cos(double{angle}), s = std::sin(double{angle});
        const double x1 = before[base + i], x2 = before[base + i + dim / 2];
        want[base + i] = x1 * c - x2 * s;
        want[base + i + dim / 2] = x2 * c + x1 * s;
      }
    }
  }
  CHECK(ktest::count_nan(qkv.data(), tokens * width) == 0);
  CHECK(ktest::rel_error(qkv, want) <= 1e-5);
  // v, the last Hk heads of each row, is not touched; position 0 (token 0) is the identity.
  int64_t changed = 0;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = (t == 0 ? 0 : (q_heads + k_heads) * dim); j < width; ++j)
      changed += qkv[t * width + j] != before[t * width + j];
  CHECK(changed == 0);
}

TEST_CASE("rope rejects bad arguments") {
  std::mt19937_64 rng(3);
  std::vector<float> q = ktest::random_floats(rng, 2 * 4 * 16), k = ktest::random_floats(rng, 2 * 2 * 16);
  std::vector<int32_t> pos = {0, 1};
  std::vector<float> freq = cpu::rope_inv_freq(16, 10000.0, {});
  const TensorView q_v(q.data(), DType::F32, {2, 4, 16}), k_v(k.data(), DType::F32, {2, 2, 16});
  const TensorView pos_v(pos.data(), DType::I32, {2}), freq_v(freq.data(), DType::F32, {8});

  STEM_CHECK_ERROR(cpu::rope(q_v, k_v, TensorView(pos.data(), DType::I64, {1}), freq_v), "positions must be i32");
  STEM_CHECK_ERROR(cpu::rope(q_v, k_v, pos_v, TensorView(freq.data(), DType::F32, {4})), "head_dim / 2");
  STEM_CHECK_ERROR(cpu::rope(q_v, TensorView(k.data(), DType::F32, {2, 4, 8}), pos_v, freq_v), "head_dim, as in q");
  STEM_CHECK_ERROR(cpu::rope(q_v, TensorView(k.data(), DType::F32, {1, 2, 16}), pos_v, freq_v), "tokens, as in q");
  STEM_CHECK_ERROR(cpu::rope(TensorView(q.data(), DType::F32, {2, 8, 7}), k_v, pos_v, freq_v), "must be even");
  STEM_CHECK_ERROR(cpu::rope(q_v, q_v, pos_v, freq_v), "different tensors");
  STEM_CHECK_ERROR(cpu::rope(q_v, TensorView(k.data(), DType::BF16, {2, 2, 16}), pos_v, freq_v), "k must be f32");
}
