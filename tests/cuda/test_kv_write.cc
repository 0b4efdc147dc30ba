#include <algorithm>
#include <numeric>

#include "kernels/cpu/kv_write.h"
#include "kernels/cuda/kv_write.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

TensorView heads_slice(void* base, DType dtype, int64_t tokens, int64_t width, int64_t col0, int64_t heads,
                       int64_t head_dim) {
  TensorView v(static_cast<char*>(base) + col0 * static_cast<int64_t>(dtype_size(dtype)), dtype,
               {tokens, heads, head_dim});
  v.stride[0] = width;
  return v;
}

// `tokens` distinct slots of the cache, in random order (as pages come from a free list).
std::vector<int32_t> random_slots(std::mt19937_64& rng, int64_t tokens, int64_t n_slots) {
  std::vector<int32_t> all(static_cast<size_t>(n_slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<size_t>(tokens));
  return all;
}

}  // namespace

TEST_CASE("cuda kv_write puts k and v into the same cache slots as the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [kv_heads, head_dim] = GENERATE(table<int64_t, int64_t>({{3, 64}, {8, 128}}));
  const int64_t tokens = GENERATE(1, 7, 300);
  const bool with_bad_slots = GENERATE(false, true);
  INFO("tokens " << tokens << " kv heads " << kv_heads << " head_dim " << head_dim << " bad slots " << with_bad_slots);
  const int64_t q_heads = 4 * kv_heads, page_size = 16, pages = (2 * tokens + page_size - 1) / page_size;
  const int64_t row = kv_heads * head_dim, cache_elems = pages * page_size * row;

  // k and v are slices of a fused qkv buffer; the caches start full of other (random) entries,
  // which must survive wherever no token was written.
  const int64_t width = (q_heads + 2 * kv_heads) * head_dim;
  const std::vector<float> qkv = gpu_test::random_bf16_values(rng, tokens * width);
  std::vector<float> k_cache = gpu_test::random_bf16_values(rng, cache_elems);
  std::vector<float> v_cache = gpu_test::random_bf16_values(rng, cache_elems);
  std::vector<int32_t> slots = random_slots(rng, tokens, pages * page_size);
  auto d_qkv = gpu_test::upload_bf16(qkv);
  auto d_k_cache = gpu_test::upload_bf16(k_cache);
  auto d_v_cache = gpu_test::upload_bf16(v_cache);
  if (with_bad_slots) {  // the device kernel skips these; the CPU twin would refuse them
    slots[0] = -1;
    if (tokens > 1) slots[1] = static_cast<int32_t>(pages * page_size);
  }
  auto d_slots = gpu_test::upload(slots);
  cuda::kv_write(
      d_k_cache->view(DType::BF16, {pages, page_size, kv_heads, head_dim}),
      d_v_cache->view(DType::BF16, {pages, page_size, kv_heads, head_dim}),
      heads_slice(d_qkv->get(), DType::BF16, tokens, width, q_heads * head_dim, kv_heads, head_dim),
      heads_slice(d_qkv->get(), DType::BF16, tokens, width, (q_heads + kv_heads) * head_dim, kv_heads, head_dim),
      d_slots->view(DType::I32, {tokens}));

  // The CPU twin on the tokens with valid slots only.
  std::vector<float> host_qkv = qkv;
  std::vector<int32_t> good_slots;
  std::vector<float> good_qkv;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0 || slots[t] >= pages * page_size) continue;
    good_slots.push_back(slots[t]);
    good_qkv.insert(good_qkv.end(), host_qkv.begin() + t * width, host_qkv.begin() + (t + 1) * width);
  }
  const auto good = static_cast<int64_t>(good_slots.size());
  if (good > 0)
    cpu::kv_write(
        TensorView(k_cache.data(), DType::F32, {pages, page_size, kv_heads, head_dim}),
        TensorView(v_cache.data(), DType::F32, {pages, page_size, kv_heads, head_dim}),
        heads_slice(good_qkv.data(), DType::F32, good, width, q_heads * head_dim, kv_heads, head_dim),
        heads_slice(good_qkv.data(), DType::F32, good, width, (q_heads + kv_heads) * head_dim, kv_heads, head_dim),
        TensorView(good_slots.data(), DType::I32, {good}));

  const std::string what = "kv_write T=" + std::to_string(tokens) + " Hkv=" + std::to_string(kv_heads) +
                           " D=" + std::to_string(head_dim) + (with_bad_slots ? " bad-slots" : "");
  const std::vector<float> k_out = gpu_test::download_f32(*d_k_cache, DType::BF16, cache_elems);
  const std::vector<float> v_out = gpu_test::download_f32(*d_v_cache, DType::BF16, cache_elems);
  STEM_CHECK_CLOSE(what + " k", k_out, k_cache, 0.0);  // a copy: exact
  STEM_CHECK_CLOSE(what + " v", v_out, v_cache, 0.0);
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda kv_write rejects bad arguments") {
  alignas(16) static uint16_t kc[2 * 4 * 2 * 64], vc[2 * 4 * 2 * 64], k[3 * 2 * 64], v[3 * 2 * 64];
  alignas(16) static float f32s[2 * 4 * 2 * 64];
  alignas(16) static int32_t slots[3];
  const TensorView kc_v(kc, DType::BF16, {2, 4, 2, 64}), vc_v(vc, DType::BF16, {2, 4, 2, 64});
  const TensorView k_v(k, DType::BF16, {3, 2, 64}), v_v(v, DType::BF16, {3, 2, 64});
  const TensorView s_v(slots, DType::I32, {3});

  STEM_CHECK_ERROR(cuda::kv_write(TensorView(f32s, DType::F32, {2, 4, 2, 64}), vc_v, k_v, v_v, s_v),
                   "k_cache must be bf16");
  STEM_CHECK_ERROR(cuda::kv_write(kc_v, vc_v, TensorView(f32s, DType::F32, {3, 2, 64}), v_v, s_v), "k must be bf16");
  STEM_CHECK_ERROR(cuda::kv_write(kc_v, vc_v, k_v, v_v, TensorView(slots, DType::I64, {1})), "slots must be i32");
  STEM_CHECK_ERROR(cuda::kv_write(kc_v, TensorView(vc, DType::BF16, {4, 2, 2, 64}), k_v, v_v, s_v),
                   "must match k_cache");
  STEM_CHECK_ERROR(cuda::kv_write(kc_v, vc_v, TensorView(k, DType::BF16, {3, 1, 128}), v_v, s_v), "KV heads");
  STEM_CHECK_ERROR(cuda::kv_write(kc_v, vc_v, k_v, v_v, TensorView(slots, DType::I32, {2})), "tokens, as in k");
  STEM_CHECK_ERROR(cuda::kv_write(TensorView(kc + 1, DType::BF16, {2, 4, 2, 64}), vc_v, k_v, v_v, s_v),
                   "16-byte boundary");
}
