#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

// About a millisecond of single-thread work.
constexpr int64_t kParallelMacs = int64_t{1} << 22;

struct CacheGeometry {
  const float* k;
  const float* v;
  const int32_t* page_table;
  int64_t max_pages, page_size, kv_heads, head_dim;

  // Where position p of sequence s, KV head g starts in either cache.
  int64_t offset(int64_t s, int64_t p, int64_t g) const {
    const int64_t page = page_table[s * max_pages + p / page_size];
    return ((page * page_size + p % page_size) * kv_heads + g) * head_dim;
  }
};

// Checks the step's metadata against the cache before any thread reads through it, and maps
// every query row to its sequence.
std::vector<int32_t> check_metadata(int64_t tokens, int64_t pages, const CacheGeometry& c, int64_t seqs,
                                    const int32_t* kv_len, const int32_t* start) {
  STEM_CHECK(start[0] == 0, "paged_attention: query_start[0] must be 0, got ", start[0]);
  STEM_CHECK(start[seqs] == tokens, "paged_attention: query_start[", seqs, "] must be the ", tokens,
             " query rows, got ", start[seqs]);
  std::vector<int32_t> row_seq(static_cast<size_t>(tokens));
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t rows = int64_t{start[s + 1]} - start[s];
    STEM_CHECK(rows >= 0 && start[s + 1] <= tokens, "paged_attention: query_start must rise from 0 to ", tokens,
               " without decreasing, but sequence ", s, " spans [", start[s], ",", start[s + 1], ")");
    STEM_CHECK(kv_len[s] >= rows, "paged_attention: sequence ", s, " has ", rows, " query rows but only kv_len ",
               kv_len[s], " (the new tokens must be in the cache)");
    STEM_CHECK(kv_len[s] <= c.max_pages * c.page_size, "paged_attention: sequence ", s, " has kv_len ", kv_len[s],
               " over its page table's ", c.max_pages, " pages of ", c.page_size);
    const int64_t used_pages = (int64_t{kv_len[s]} + c.page_size - 1) / c.page_size;
    for (int64_t i = 0; i < used_pages; ++i) {
      const int32_t page = c.page_table[s * c.max_pages + i];
      STEM_CHECK(page >= 0 && page < pages, "paged_attention: page_table[", s, "][", i, "] = ", page,
                 " is outside the cache's ", pages, " pages");
    }
    std::fill(row_seq.begin() + start[s], row_seq.begin() + start[s + 1], static_cast<int32_t>(s));
  }
  return row_seq;
}

// One query row and head over cache positions [first, last] of sequence s, in two passes: the
// scores and their max, then exp-weights and the weighted sum of values.
void attend(float* out, const float* q, const CacheGeometry& c, int64_t s, int64_t g, int64_t first, int64_t last,
            float scale, float* scores, float* acc) {
  const int64_t d = c.head_dim;
  float max_score = -INFINITY;
  for (int64_t p = first; p <= last; ++p) {
    const float* k = c.k + c.offset(s, p, g);
    float dot = 0.f;
    for (int64_t i = 0; i < d; ++i) dot += q[i] * k[i];
    scores[p - first] = dot * scale;
    max_score = std::max(max_score, scores[p - first]);
  }
  std::fill_n(acc, d, 0.f);
  float sum = 0.f;
  for (int64_t p = first; p <= last; ++p) {
    const float weight = std::exp(scores[p - first] - max_score);
    sum += weight;
    const float* v = c.v + c.offset(s, p, g);
    for (int64_t i = 0; i < d; ++i) acc[i] += weight * v[i];
  }
  // The diagonal position is always visible, so sum >= 1.
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i] / sum;
}

}  // namespace

void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                     float scale, int64_t sliding_window) {
  check_rows(out, "paged_attention out", DType::F32, 3);
  check_rows(q, "paged_attention q", DType::F32, 3);
  check_packed(k_cache, "paged_attention k_cache", DType::F32, 4);
  check_packed(v_cache, "paged_attention v_cache", DType::F32, 4);
  check_packed(page_table, "paged_attention page_table", DType::I32, 2);
  check_packed(kv_lens, "paged_attention kv_lens", DType::I32, 1);
  check_packed(query_start, "paged_attention query_start", DType::I32, 1);
  for (int d = 0; d < 3; ++d)
    STEM_CHECK(out.shape[d] == q.shape[d], "paged_attention: out ", out.str(), " must match q ", q.str());
  for (int d = 0; d < 4; ++d)
    STEM_CHECK(v_cache.shape[d] == k_cache.shape[d], "paged_attention: v_cache ", v_cache.str(), " must match k_cache ",
               k_cache.str());
  const int64_t tokens = q.shape[0], q_heads = q.shape[1], head_dim = q.shape[2];
  const int64_t kv_heads = k_cache.shape[2], seqs = page_table.shape[0];
  check_dim(k_cache, "paged_attention k_cache", 3, head_dim, "head_dim, as in q");
  STEM_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, "paged_attention: q has ", q_heads,
             " heads, not a multiple of the cache's ", kv_heads, " KV heads");
  STEM_CHECK(k_cache.shape[1] > 0, "paged_attention: page_size must be positive, got ", k_cache.str());
  check_dim(kv_lens, "paged_attention kv_lens", 0, seqs, "sequences, the rows of page_table");
  check_dim(query_start, "paged_attention query_start", 0, seqs + 1, "sequences + 1");
  STEM_CHECK(sliding_window >= 0, "paged_attention: sliding_window must be >= 0 (0 = none), got ", sliding_window);

  const CacheGeometry cache{.k = k_cache.ptr<float>(),
                            .v = v_cache.ptr<float>(),
                            .page_table = page_table.ptr<int32_t>(),
                            .max_pages = page_table.shape[1],
                            .page_size = k_cache.shape[1],
                            .kv_heads = kv_heads,
                            .head_dim = head_dim};
  const int32_t* kv_len = kv_lens.ptr<int32_t>();
  const int32_t* start = query_start.ptr<int32_t>();
  const std::vector<int32_t> row_seq = check_metadata(tokens, k_cache.shape[0], cache, seqs, kv_len, start);
  const int64_t longest = seqs == 0 ? 0 : *std::max_element(kv_len, kv_len + seqs);
  const int64_t group = q_heads / kv_heads;

  // Waking the thread pool costs microseconds on an idle machine and whole scheduler slices on a
  // busy one, so small steps (a few decode rows) run on the calling thread.
  int64_t visible = 0;  // (row, cache position) pairs this step attends to, at most
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t span = sliding_window > 0 ? std::min<int64_t>(kv_len[s], sliding_window) : kv_len[s];
    visible += int64_t{start[s + 1] - start[s]} * span;
  }
  const bool parallel = visible * q_heads * head_dim >= kParallelMacs;

#pragma omp parallel if (parallel)
  {
    // Per thread: the row's scores, its output accumulator, and a copy of its query, which is
    // what lets out alias q.
    std::vector<float> scores(static_cast<size_t>(longest)), acc(static_cast<size_t>(head_dim)),
        query(static_cast<size_t>(head_dim));
#pragma omp for schedule(dynamic, 4)
    for (int64_t item = 0; item < tokens * q_heads; ++item) {
      const int64_t r = item / q_heads, h = item % q_heads, s = row_seq[static_cast<size_t>(r)];
      const int64_t pos = int64_t{kv_len[s]} - (start[s + 1] - start[s]) + (r - start[s]);
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, pos - sliding_window + 1) : 0;
      const float* q_row = q.ptr<float>() + r * row_stride(q) + h * head_dim;
      std::copy_n(q_row, head_dim, query.data());
      attend(out.ptr<float>() + r * row_stride(out) + h * head_dim, query.data(), cache, s, h / group, first, pos,
             scale, scores.data(), acc.data());
    }
  }
}

}  // namespace stem::cpu
