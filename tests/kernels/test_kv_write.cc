#include <algorithm>

#include "kernels/cpu/kv_write.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

TEST_CASE("kv_write scatters k and v rows to their slots") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t pages = 6, page_size = 4, kv_heads = 2, dim = GENERATE(64, 128);
  const int64_t cache_numel = pages * page_size * kv_heads * dim, row = kv_heads * dim;
  // Two sequences: one's chunk runs over a page boundary into a page out of order, the other
  // decodes one token in the middle of page 0.
  std::vector<int32_t> slots = {5 * 4 + 2, 5 * 4 + 3, 1 * 4 + 0, 1 * 4 + 1, 0 * 4 + 2};
  const int64_t tokens = static_cast<int64_t>(slots.size());

  // k and v as slices of a fused qkv buffer [T, (Hq + 2 Hkv) D] with Hq = 4.
  const int64_t width = (4 + 2 * kv_heads) * dim;
  std::vector<float> qkv = ktest::random_floats(rng, tokens * width);
  TensorView k(qkv.data() + 4 * dim, DType::F32, {tokens, kv_heads, dim});
  TensorView v(qkv.data() + (4 + kv_heads) * dim, DType::F32, {tokens, kv_heads, dim});
  k.stride[0] = v.stride[0] = width;

  std::vector<float> k_cache = ktest::poisoned(cache_numel), v_cache = ktest::poisoned(cache_numel);
  cpu::kv_write(TensorView(k_cache.data(), DType::F32, {pages, page_size, kv_heads, dim}),
                TensorView(v_cache.data(), DType::F32, {pages, page_size, kv_heads, dim}), k, v,
                TensorView(slots.data(), DType::I32, {tokens}));

  // Each written slot holds its token's rows exactly; every other slot is still NaN.
  int64_t wrong = 0, written = 0;
  for (int64_t slot = 0; slot < pages * page_size; ++slot) {
    const auto hit = std::find(slots.begin(), slots.end(), slot);
    const int64_t token = hit == slots.end() ? -1 : hit - slots.begin();
    for (int64_t j = 0; j < row; ++j) {
      const float kc = k_cache[slot * row + j], vc = v_cache[slot * row + j];
      if (token < 0) {
        wrong += !std::isnan(kc) + !std::isnan(vc);
      } else {
        ++written;
        wrong += (kc != qkv[token * width + 4 * dim + j]) + (vc != qkv[token * width + (4 + kv_heads) * dim + j]);
      }
    }
  }
  CHECK(written == tokens * row);
  CHECK(wrong == 0);
}

TEST_CASE("kv_write rejects bad slots and shapes") {
  const int64_t pages = 3, page_size = 4, kv_heads = 2, dim = 8;
  std::vector<float> k_cache = ktest::poisoned(pages * page_size * kv_heads * dim);
  std::vector<float> v_cache = ktest::poisoned(pages * page_size * kv_heads * dim);
  std::vector<float> k(2 * kv_heads * dim, 1.f), v(2 * kv_heads * dim, 2.f);
  std::vector<int32_t> slots = {1, 7};
  const TensorView kc(k_cache.data(), DType::F32, {pages, page_size, kv_heads, dim});
  const TensorView vc(v_cache.data(), DType::F32, {pages, page_size, kv_heads, dim});
  const TensorView k_v(k.data(), DType::F32, {2, kv_heads, dim}), v_v(v.data(), DType::F32, {2, kv_heads, dim});
  const TensorView slots_v(slots.data(), DType::I32, {2});

  SECTION("a slot past the cache, with nothing written") {
    slots[1] = 12;
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, k_v, v_v, slots_v), "slot 12 of token 1");
    CHECK(ktest::count_nan(k_cache.data(), int64_t(k_cache.size())) == int64_t(k_cache.size()));
  }
  SECTION("a negative slot") {
    slots[0] = -1;
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, k_v, v_v, slots_v), "slot -1 of token 0");
  }
  SECTION("shapes and dtypes") {
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, k_v, v_v, TensorView(slots.data(), DType::I64, {1})), "slots must be i32");
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, TensorView(k.data(), DType::F32, {2, 4, 4}), v_v, slots_v), "KV heads");
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, k_v, TensorView(v.data(), DType::F32, {1, kv_heads, dim}), slots_v),
                     "must match k");
    STEM_CHECK_ERROR(
        cpu::kv_write(kc, TensorView(v_cache.data(), DType::F32, {pages, page_size, 1, 2 * dim}), k_v, v_v, slots_v),
        "must match k_cache");
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, k_v, v_v, TensorView(slots.data(), DType::I32, {1})), "tokens, as in k");
    STEM_CHECK_ERROR(cpu::kv_write(kc, vc, TensorView(k.data(), DType::BF16, {2, kv_heads, dim}), v_v, slots_v),
                     "k must be f32");
  }
}
