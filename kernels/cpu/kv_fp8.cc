#include "kernels/cpu/kv_fp8.h"

#include <string>
#include <tuple>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/rows.h"

namespace stem::cpu {

void check_fp8_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k_scale,
                        const TensorView& v_scale, const char* op) {
  const std::string o(op);
  check_packed(k_cache, (o + " k_cache").c_str(), DType::F8E4M3, 4);
  check_packed(v_cache, (o + " v_cache").c_str(), DType::F8E4M3, 4);
  check_packed(k_scale, (o + " k_scale").c_str(), DType::F32, 3);
  check_packed(v_scale, (o + " v_scale").c_str(), DType::F32, 3);
  for (int d = 0; d < 4; ++d)
    STEM_CHECK(v_cache.shape[d] == k_cache.shape[d], op, ": v_cache ", v_cache.str(), " must match k_cache ",
               k_cache.str());
  for (int d = 0; d < 3; ++d)
    STEM_CHECK(k_scale.shape[d] == k_cache.shape[d] && v_scale.shape[d] == k_cache.shape[d], op, ": scales ",
               k_scale.str(), " and ", v_scale.str(), " must be [P, page_size, Hkv] of k_cache ", k_cache.str());
}

void kv_write_fp8(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k_scale,
                  const TensorView& v_scale, const TensorView& k, const TensorView& v, const TensorView& slots) {
  check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, "kv_write_fp8");
  check_rows(k, "kv_write_fp8 k", DType::F32, 3);
  check_rows(v, "kv_write_fp8 v", DType::F32, 3);
  check_packed(slots, "kv_write_fp8 slots", DType::I32, 1);
  const int64_t tokens = k.shape[0], kv_heads = k_cache.shape[2], head_dim = k_cache.shape[3];
  check_dim(k, "kv_write_fp8 k", 1, kv_heads, "KV heads, as in k_cache");
  check_dim(k, "kv_write_fp8 k", 2, head_dim, "head_dim, as in k_cache");
  for (int d = 0; d < 3; ++d)
    STEM_CHECK(v.shape[d] == k.shape[d], "kv_write_fp8: v ", v.str(), " must match k ", k.str());
  check_dim(slots, "kv_write_fp8 slots", 0, tokens, "tokens, as in k");
  const int64_t n_slots = k_cache.shape[0] * k_cache.shape[1];
  const int32_t* slot = slots.ptr<int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    STEM_CHECK(slot[t] >= 0 && slot[t] < n_slots, "kv_write_fp8: slot ", slot[t], " of token ", t,
               " is outside the cache's [0,", n_slots, ") (", k_cache.shape[0], " pages of ", k_cache.shape[1], ")");
  const int64_t row = kv_heads * head_dim;
  for (int64_t t = 0; t < tokens; ++t)
    for (auto [x, codes, scales] : {std::tuple{&k, &k_cache, &k_scale}, {&v, &v_cache, &v_scale}}) {
      // Token t's heads are one [Hkv, D] block of rows, each quantized on its own.
      const TensorView in(x->ptr<float>() + t * row_stride(*x), DType::F32, {kv_heads, head_dim});
      quantize_rows_fp8(TensorView(codes->ptr<uint8_t>() + slot[t] * row, DType::F8E4M3, {kv_heads, head_dim}),
                        TensorView(scales->ptr<float>() + slot[t] * kv_heads, DType::F32, {kv_heads}), in);
    }
}

void rope_kv_write_fp8(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                       const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& k_scale, const TensorView& v_scale, const TensorView& slots) {
  rope(q, k, positions, inv_freq);
  kv_write_fp8(k_cache, v_cache, k_scale, v_scale, k, v, slots);
}

KvStagePlan stage_kv_pages(const std::vector<int32_t>& page_table, int32_t max_pages,
                           const std::vector<int32_t>& kv_lens, const std::vector<int32_t>& query_start,
                           int32_t page_size, int64_t min_rows, const std::vector<uint8_t>& also) {
  const auto S = static_cast<int64_t>(kv_lens.size());
  STEM_CHECK(page_size > 0 && max_pages >= 0 && static_cast<int64_t>(page_table.size()) == S * max_pages &&
                 static_cast<int64_t>(query_start.size()) == S + 1,
             "stage_kv_pages: a page table of ", page_table.size(), " entries, ", S, " sequences, ",
             query_start.size(), " query starts");
  STEM_CHECK(also.empty() || static_cast<int64_t>(also.size()) == S, "stage_kv_pages: ", also.size(),
             " flags for ", S, " sequences");
  KvStagePlan plan;
  plan.page_table.assign(page_table.size(), 0);
  plan.unstaged.assign(static_cast<size_t>(S), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t rows = query_start[s + 1] - query_start[s];
    if (rows == 0) continue;
    if (rows <= min_rows && (also.empty() || also[s] == 0)) {
      plan.unstaged[s] = 1;
      continue;
    }
    const int64_t used = (int64_t{kv_lens[s]} + page_size - 1) / page_size;
    STEM_CHECK(used <= max_pages, "stage_kv_pages: sequence ", s, " has kv_len ", kv_lens[s], " in ", max_pages,
               " pages");
    for (int64_t p = 0; p < used; ++p) {
      plan.page_table[s * max_pages + p] = static_cast<int32_t>(plan.pages.size());
      plan.pages.push_back(page_table[s * max_pages + p]);
    }
  }
  return plan;
}

void dequantize_kv_pages(const TensorView& k_out, const TensorView& v_out, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& k_scale, const TensorView& v_scale,
                         const TensorView& pages) {
  check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, "dequantize_kv_pages");
  check_packed(k_out, "dequantize_kv_pages k_out", DType::F32, 4);
  check_packed(v_out, "dequantize_kv_pages v_out", DType::F32, 4);
  check_packed(pages, "dequantize_kv_pages pages", DType::I32, 1);
  const int64_t N = pages.shape[0], P = k_cache.shape[0];
  for (const TensorView* o : {&k_out, &v_out}) {
    STEM_CHECK(o->shape[0] >= N, "dequantize_kv_pages: ", o->str(), " has fewer than ", N, " pages");
    for (int d = 1; d < 4; ++d)
      STEM_CHECK(o->shape[d] == k_cache.shape[d], "dequantize_kv_pages: ", o->str(), " must have k_cache ",
                 k_cache.str(), "'s pages");
  }
  const int32_t* page = pages.ptr<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    STEM_CHECK(page[i] >= 0 && page[i] < P, "dequantize_kv_pages: page ", page[i], " is outside the cache's ", P);
  const int64_t rows = k_cache.shape[1] * k_cache.shape[2], D = k_cache.shape[3];  // a page's (token, head) rows
#pragma omp parallel for if (N * rows * D >= (1 << 18))
  for (int64_t i = 0; i < N; ++i)
    for (auto [out, codes, scales] : {std::tuple{&k_out, &k_cache, &k_scale}, {&v_out, &v_cache, &v_scale}})
      dequantize_rows_fp8(TensorView(out->ptr<float>() + i * rows * D, DType::F32, {rows, D}),
                          TensorView(codes->ptr<uint8_t>() + page[i] * rows * D, DType::F8E4M3, {rows, D}),
                          TensorView(scales->ptr<float>() + page[i] * rows, DType::F32, {rows}));
}

}  // namespace stem::cpu
