#include "kernels/cpu/swiglu.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

double silu(double x) { return x / (1 + std::exp(-x)); }

}  // namespace

TEST_CASE("swiglu computes silu(gate) * up") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // The last shape is big enough for the kernel to use its thread pool.
  const auto [tokens, inter] = GENERATE(table<int64_t, int64_t>({{1, 96}, {7, 96}, {7, 1536}, {64, 4096}}));
  std::vector<float> gate = ktest::random_floats(rng, tokens * inter, 6.f),
                     up = ktest::random_floats(rng, tokens * inter);
  std::vector<double> ref;
  for (size_t i = 0; i < gate.size(); ++i) ref.push_back(silu(gate[i]) * up[i]);
  const TensorView gate_v(gate.data(), DType::F32, {tokens, inter}), up_v(up.data(), DType::F32, {tokens, inter});

  SECTION("into a fresh buffer") {
    std::vector<float> out = ktest::poisoned(tokens * inter);
    cpu::swiglu(TensorView(out.data(), DType::F32, {tokens, inter}), gate_v, up_v);
    CHECK(ktest::count_nan(out.data(), tokens * inter) == 0);
    CHECK(ktest::rel_error(out, ref) <= 1e-5);
  }
  SECTION("over gate") {
    cpu::swiglu(gate_v, gate_v, up_v);
    CHECK(ktest::rel_error(gate, ref) <= 1e-5);
  }
}

TEST_CASE("swiglu reads the halves of a fused gate_up output") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t tokens = 5, inter = 128;
  std::vector<float> gate_up = ktest::random_floats(rng, tokens * 2 * inter, 6.f);
  std::vector<double> ref;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < inter; ++j)
      ref.push_back(silu(gate_up[t * 2 * inter + j]) * gate_up[t * 2 * inter + inter + j]);
  std::vector<float> out = ktest::poisoned(tokens * inter);
  cpu::swiglu(TensorView(out.data(), DType::F32, {tokens, inter}),
              ktest::column_slice(gate_up.data(), tokens, 2 * inter, 0, inter),
              ktest::column_slice(gate_up.data(), tokens, 2 * inter, inter, inter));
  CHECK(ktest::count_nan(out.data(), tokens * inter) == 0);
  CHECK(ktest::rel_error(out, ref) <= 1e-5);
}

TEST_CASE("swiglu stays finite for extreme gates") {
  std::vector<float> gate = {-1000.f, -90.f, 0.5f, 90.f}, up = {2.f, 2.f, 2.f, 2.f}, out = ktest::poisoned(4);
  cpu::swiglu(TensorView(out.data(), DType::F32, {1, 4}), TensorView(gate.data(), DType::F32, {1, 4}),
              TensorView(up.data(), DType::F32, {1, 4}));
  CHECK(out[0] == 0.f);
  CHECK(std::abs(out[1]) < 1e-30f);
  CHECK(out[2] == Approx(2 * silu(0.5)));
  CHECK(out[3] == Approx(180.f));
}

TEST_CASE("swiglu rejects bad arguments") {
  std::vector<float> a(24, 1.f), b(24, 1.f), out = ktest::poisoned(24);
  const TensorView a_v(a.data(), DType::F32, {4, 6}), b_v(b.data(), DType::F32, {4, 6});
  STEM_CHECK_ERROR(
      cpu::swiglu(TensorView(out.data(), DType::F32, {4, 6}), a_v, TensorView(b.data(), DType::F32, {6, 4})),
      "up f32[6,4] and out f32[4,6] must have the same shape");
  STEM_CHECK_ERROR(cpu::swiglu(TensorView(out.data(), DType::F32, {3, 8}), a_v, b_v), "gate f32[4,6] and out");
  STEM_CHECK_ERROR(
      cpu::swiglu(TensorView(out.data(), DType::F32, {4, 6}), TensorView(a.data(), DType::F16, {4, 6}), b_v),
      "gate must be f32");
  STEM_CHECK_ERROR(cpu::swiglu(TensorView(out.data(), DType::F32, {24}), a_v, b_v), "out must have 2 dims");
}
