#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/swiglu.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

TEST_CASE("cuda swiglu matches the CPU twin on a fused gate_up buffer") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // SmolLM2-135M's and Llama-3.1-8B's intermediate sizes.
  const auto [tokens, inter] =
      GENERATE(table<int64_t, int64_t>({{1, 1536}, {7, 1536}, {300, 1536}, {1, 14336}, {7, 14336}, {300, 14336}}));
  const bool over_gate = GENERATE(false, true);
  INFO("tokens " << tokens << " intermediate " << inter << " out over gate " << over_gate);

  // [T, 2I]: gate in the first half of each row, up in the second, as a fused projection writes them.
  const int64_t width = 2 * inter, n = tokens * inter;
  std::vector<float> gate_up = ktest::random_floats(rng, tokens * width, 6.f);
  gate_up[0] = -100.f;  // e^100 overflows f32: silu must come out -0, not NaN
  gate_up[1] = 100.f;
  gate_up = gpu_test::round_to_bf16(gate_up);

  std::vector<float> ref(static_cast<size_t>(n)), host = gate_up;
  cpu::swiglu(TensorView(ref.data(), DType::F32, {tokens, inter}),
              ktest::column_slice(host.data(), tokens, width, 0, inter),
              ktest::column_slice(host.data(), tokens, width, inter, inter));

  auto d_gate_up = gpu_test::upload_bf16(gate_up);
  DeviceBuffer d_out(static_cast<size_t>(n) * 2);
  d_out.poison();
  const TensorView gate = gpu_test::column_slice(*d_gate_up, DType::BF16, tokens, width, 0, inter);
  const TensorView up = gpu_test::column_slice(*d_gate_up, DType::BF16, tokens, width, inter, inter);
  cuda::swiglu(over_gate ? gate : d_out.view(DType::BF16, {tokens, inter}), gate, up);

  std::vector<float> out;
  if (over_gate) {
    const std::vector<float> all = gpu_test::download_f32(*d_gate_up, DType::BF16, tokens * width);
    for (int64_t t = 0; t < tokens; ++t)
      out.insert(out.end(), all.begin() + t * width, all.begin() + t * width + inter);
  } else {
    out = gpu_test::download_f32(d_out, DType::BF16, n);
  }
  STEM_CHECK_CLOSE("swiglu T=" + std::to_string(tokens) + " I=" + std::to_string(inter) +
                       (over_gate ? " out-over-gate" : " fresh-out"),
                   out, ref, gpu_test::kBf16Tolerance);
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda swiglu rejects bad arguments") {
  alignas(16) static uint16_t a[4 * 64], b[4 * 64], c[4 * 64];
  alignas(16) static float f32s[4 * 64];
  const TensorView out(a, DType::BF16, {4, 64}), gate(b, DType::BF16, {4, 64}), up(c, DType::BF16, {4, 64});

  STEM_CHECK_ERROR(cuda::swiglu(TensorView(f32s, DType::F32, {4, 64}), gate, up), "out must be bf16");
  STEM_CHECK_ERROR(cuda::swiglu(out, TensorView(f32s, DType::F32, {4, 64}), up), "gate must be bf16");
  STEM_CHECK_ERROR(cuda::swiglu(out, gate, TensorView(c, DType::BF16, {4, 32})), "same shape");
  STEM_CHECK_ERROR(cuda::swiglu(out, gate, TensorView(c, DType::BF16, {256})), "up must have 2 dims");
  STEM_CHECK_ERROR(cuda::swiglu(TensorView(a, DType::BF16, {4, 60}), TensorView(b, DType::BF16, {4, 60}),
                                TensorView(c, DType::BF16, {4, 60})),
                   "multiple of 8");
  TensorView odd_stride = gate;
  odd_stride.shape[1] = 56;
  odd_stride.stride[0] = 60;
  STEM_CHECK_ERROR(cuda::swiglu(TensorView(a, DType::BF16, {4, 56}), odd_stride, TensorView(c, DType::BF16, {4, 56})),
                   "row stride must be a multiple of 8");
}
