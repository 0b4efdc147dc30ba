#include "kernels/cpu/stem_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

void block_sparse_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                            const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                            const TensorView& query_start, const StemPlan& plan, float scale, int64_t sliding_window) {
  check_rows(out, "block_sparse_attention out", DType::F32, 3);
  check_rows(q, "block_sparse_attention q", DType::F32, 3);
  check_packed(k_cache, "block_sparse_attention k_cache", DType::F32, 4);
  check_packed(v_cache, "block_sparse_attention v_cache", DType::F32, 4);
  check_packed(page_table, "block_sparse_attention page_table", DType::I32, 2);
  const int64_t q_heads = q.shape[1], d = q.shape[2], kv_heads = k_cache.shape[2];
  for (int i = 0; i < 3; ++i)
    STEM_CHECK(out.shape[i] == q.shape[i], "block_sparse_attention: out ", out.str(), " must match q ", q.str());
  check_dim(k_cache, "block_sparse_attention k_cache", 3, d, "head_dim, as in q");
  STEM_CHECK(plan.q_heads == q_heads && plan.block_size > 0, "block_sparse_attention: plan for ", plan.q_heads,
             " heads, q has ", q_heads);
  STEM_CHECK(plan.block_offsets.size() == static_cast<size_t>(plan.n_qblocks() * q_heads + 1),
             "block_sparse_attention: block_offsets needs n_qblocks·Hq + 1 entries");
  const int64_t group = q_heads / kv_heads, bs = plan.block_size, page_size = k_cache.shape[1];
  const int64_t max_pages = page_table.shape[1];
  const int32_t *lens = kv_lens.ptr<int32_t>(), *starts = query_start.ptr<int32_t>(), *table = page_table.ptr<int32_t>();
  const float *kc = k_cache.ptr<float>(), *vc = v_cache.ptr<float>();
  auto offset = [&](int64_t s, int64_t p, int64_t g) {
    return ((table[s * max_pages + p / page_size] * page_size + p % page_size) * kv_heads + g) * d;
  };

#pragma omp parallel
  {
    std::vector<float> scores, acc(static_cast<size_t>(d)), query(static_cast<size_t>(d));
    std::vector<int64_t> keys;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < plan.n_qblocks(); ++b)
      for (int64_t h = 0; h < q_heads; ++h) {
        const int64_t s = plan.qblocks[2 * b], i = plan.qblocks[2 * b + 1];
        const int64_t rows = starts[s + 1] - starts[s], first_pos = lens[s] - rows;
        std::vector<int32_t> list(plan.list(b, h).begin(), plan.list(b, h).end());
        std::sort(list.begin(), list.end());
        for (int64_t pos = std::max(i * bs, first_pos); pos < std::min((i + 1) * bs, int64_t{lens[s]}); ++pos) {
          keys.clear();
          for (int32_t j : list)
            for (int64_t p = int64_t{j} * bs; p < (j + 1) * bs && p <= pos; ++p)
              if (sliding_window <= 0 || pos - p < sliding_window) keys.push_back(p);
          const int64_t r = starts[s] + pos - first_pos;
          float* o = out.ptr<float>() + r * row_stride(out) + h * d;
          std::copy_n(q.ptr<float>() + r * row_stride(q) + h * d, d, query.data());
          if (keys.empty()) {
            std::fill_n(o, d, 0.f);
            continue;
          }
          // As paged_attention's attend(): scores and their max, then weights and the weighted values.
          scores.resize(keys.size());
          float max_score = -INFINITY;
          for (size_t x = 0; x < keys.size(); ++x) {
            const float* k = kc + offset(s, keys[x], h / group);
            float dot = 0.f;
            for (int64_t e = 0; e < d; ++e) dot += query[e] * k[e];
            scores[x] = dot * scale;
            max_score = std::max(max_score, scores[x]);
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          float sum = 0.f;
          for (size_t x = 0; x < keys.size(); ++x) {
            const float weight = std::exp(scores[x] - max_score);
            sum += weight;
            const float* v = vc + offset(s, keys[x], h / group);
            for (int64_t e = 0; e < d; ++e) acc[e] += weight * v[e];
          }
          for (int64_t e = 0; e < d; ++e) o[e] = acc[e] / sum;
        }
      }
  }
}

void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  std::span<const StemQueryBlock> blocks, float scale, int64_t sliding_window,
                  const StemKernelParams& params) {
  const StemPlan plan = stem_plan(q, k_cache, v_cache, page_table, kv_lens, query_start, blocks, scale, params);
  block_sparse_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, plan, scale, sliding_window);
}

}  // namespace stem::cpu
