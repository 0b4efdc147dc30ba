#include "kernels/cpu/rope.h"
#include "kernels/cuda/rope.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

// A [tokens, heads, head_dim] view of columns starting at col0 of a [tokens, width] buffer.
TensorView heads_slice(void* base, DType dtype, int64_t tokens, int64_t width, int64_t col0, int64_t heads,
                       int64_t head_dim) {
  TensorView v(static_cast<char*>(base) + col0 * static_cast<int64_t>(dtype_size(dtype)), dtype,
               {tokens, heads, head_dim});
  v.stride[0] = width;
  return v;
}

struct RopeShape {
  int64_t q_heads, kv_heads, head_dim;
  double theta;
  cpu::RopeScaling scaling;
};

}  // namespace

TEST_CASE("cuda rope rotates q and k in place like the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  cpu::RopeScaling llama3;
  llama3.kind = cpu::RopeScaling::Kind::Llama3;
  llama3.factor = 8;
  // SmolLM2-135M (9 q heads over 3 KV heads, D 64) and Llama-3.1-8B (32 over 8, D 128, llama3 scaling).
  const RopeShape shape = GENERATE_COPY(RopeShape{9, 3, 64, 100000, {}}, RopeShape{32, 8, 128, 500000, llama3});
  const int64_t tokens = GENERATE(1, 7, 300);
  const int64_t hq = shape.q_heads, hkv = shape.kv_heads, d = shape.head_dim;
  INFO("tokens " << tokens << " q heads " << hq << " kv heads " << hkv << " head_dim " << d);

  // q and k are slices of a fused [T, (Hq + 2·Hkv)·D] qkv buffer, as the model produces them.
  const int64_t width = (hq + 2 * hkv) * d;
  const std::vector<float> qkv = gpu_test::random_bf16_values(rng, tokens * width, 3.f);
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  std::uniform_int_distribution<int32_t> pos(0, 131071);  // up to 128K: angles where sincosf must reduce
  for (int32_t& p : positions) p = pos(rng);
  const std::vector<float> inv_freq = cpu::rope_inv_freq(d, shape.theta, shape.scaling);

  std::vector<float> ref = qkv;
  std::vector<int32_t> pos_host = positions;
  std::vector<float> freq_host = inv_freq;
  cpu::rope(heads_slice(ref.data(), DType::F32, tokens, width, 0, hq, d),
            heads_slice(ref.data(), DType::F32, tokens, width, hq * d, hkv, d),
            TensorView(pos_host.data(), DType::I32, {tokens}), TensorView(freq_host.data(), DType::F32, {d / 2}));

  auto d_qkv = gpu_test::upload_bf16(qkv);
  auto d_pos = gpu_test::upload(positions);
  auto d_freq = gpu_test::upload(inv_freq);
  cuda::rope(heads_slice(d_qkv->get(), DType::BF16, tokens, width, 0, hq, d),
             heads_slice(d_qkv->get(), DType::BF16, tokens, width, hq * d, hkv, d), d_pos->view(DType::I32, {tokens}),
             d_freq->view(DType::F32, {d / 2}));
  const std::vector<float> out = gpu_test::download_f32(*d_qkv, DType::BF16, tokens * width);

  // Compare q and k; v (the last Hkv·D columns of each row) must be untouched.
  std::vector<float> out_qk, ref_qk;
  bool v_untouched = true;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < width; ++j) {
      const size_t i = static_cast<size_t>(t * width + j);
      if (j < (hq + hkv) * d) {
        out_qk.push_back(out[i]);
        ref_qk.push_back(ref[i]);
      } else {
        v_untouched = v_untouched && out[i] == qkv[i];
      }
    }
  STEM_CHECK_CLOSE("rope T=" + std::to_string(tokens) + " Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv) +
                       " D=" + std::to_string(d),
                   out_qk, ref_qk, gpu_test::kBf16Tolerance);
  CHECK(v_untouched);
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda rope rejects bad arguments") {
  alignas(16) static uint16_t q[4 * 4 * 64], k[4 * 2 * 64];
  alignas(16) static float f32s[4 * 4 * 64];
  alignas(16) static int32_t pos[4];
  const TensorView q_v(q, DType::BF16, {4, 4, 64}), k_v(k, DType::BF16, {4, 2, 64});
  const TensorView pos_v(pos, DType::I32, {4}), freq_v(f32s, DType::F32, {32});

  STEM_CHECK_ERROR(cuda::rope(TensorView(f32s, DType::F32, {4, 4, 64}), k_v, pos_v, freq_v), "rope q must be bf16");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, pos_v, TensorView(q, DType::BF16, {32})), "inv_freq must be f32");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, TensorView(pos, DType::I64, {2}), freq_v), "positions must be i32");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, pos_v, TensorView(f32s, DType::F32, {16})), "head_dim / 2");
  STEM_CHECK_ERROR(cuda::rope(q_v, TensorView(k, DType::BF16, {3, 2, 64}), pos_v, freq_v), "tokens, as in q");
  STEM_CHECK_ERROR(cuda::rope(q_v, q_v, pos_v, freq_v), "different tensors");
  STEM_CHECK_ERROR(cuda::rope(TensorView(q, DType::BF16, {4, 4, 40}), TensorView(k, DType::BF16, {4, 2, 40}), pos_v,
                              TensorView(f32s, DType::F32, {20})),
                   "multiple of 16");
}
