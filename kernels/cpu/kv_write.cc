#include "kernels/cpu/kv_write.h"

#include <algorithm>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

void kv_write(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
              const TensorView& slots) {
  check_packed(k_cache, "kv_write k_cache", DType::F32, 4);
  check_packed(v_cache, "kv_write v_cache", DType::F32, 4);
  check_rows(k, "kv_write k", DType::F32, 3);
  check_rows(v, "kv_write v", DType::F32, 3);
  check_packed(slots, "kv_write slots", DType::I32, 1);
  for (int d = 0; d < 4; ++d)
    STEM_CHECK(v_cache.shape[d] == k_cache.shape[d], "kv_write: v_cache ", v_cache.str(), " must match k_cache ",
               k_cache.str());
  const int64_t tokens = k.shape[0], kv_heads = k_cache.shape[2], head_dim = k_cache.shape[3];
  check_dim(k, "kv_write k", 1, kv_heads, "KV heads, as in k_cache");
  check_dim(k, "kv_write k", 2, head_dim, "head_dim, as in k_cache");
  for (int d = 0; d < 3; ++d) STEM_CHECK(v.shape[d] == k.shape[d], "kv_write: v ", v.str(), " must match k ", k.str());
  check_dim(slots, "kv_write slots", 0, tokens, "tokens, as in k");

  // Validate first so that a bad slot leaves the cache untouched.
  const int64_t n_slots = k_cache.shape[0] * k_cache.shape[1];
  const int32_t* slot = slots.ptr<int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    STEM_CHECK(slot[t] >= 0 && slot[t] < n_slots, "kv_write: slot ", slot[t], " of token ", t,
               " is outside the cache's [0,", n_slots, ") (", k_cache.shape[0], " pages of ", k_cache.shape[1], ")");

  // A slot is one [Hkv, D] row of the cache seen as [P * page_size, Hkv * D].
  const int64_t row = kv_heads * head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(k.ptr<float>() + t * row_stride(k), row, k_cache.ptr<float>() + slot[t] * row);
    std::copy_n(v.ptr<float>() + t * row_stride(v), row, v_cache.ptr<float>() + slot[t] * row);
  }
}

}  // namespace stem::cpu
