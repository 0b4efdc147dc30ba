#include "kernels/cpu/stem_plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

struct Cache {
  const float *k, *v;
  const int32_t* page_table;
  int64_t max_pages, page_size, kv_heads, head_dim;
  int64_t offset(int64_t s, int64_t p, int64_t g) const {
    const int64_t page = page_table[s * max_pages + p / page_size];
    return ((page * page_size + p % page_size) * kv_heads + g) * head_dim;
  }
};

// One sequence's pooled keys and value-norm logs, for key blocks 0 .. n_key_blocks − 1.
//   kp[j][g][t·D + e] = Σ_{r<R} k[jB + rS + t][g][e]        (positions ≥ kv_len count as 0)
//   u[g][n] = log(max_{s<S} ‖v[nS + s][g]‖₂ + ε)             (groups with a position < kv_len)
struct PooledKeys {
  int64_t n_key_blocks = 0, n_groups = 0;
  std::vector<double> kp, u;
};

PooledKeys pool_keys(const Cache& c, int64_t s, int64_t kv_len, int64_t n_key_blocks, const StemKernelParams& st) {
  const int64_t bs = st.block_size, stride = st.stride, d = c.head_dim, width = stride * d;
  PooledKeys pk;
  pk.n_key_blocks = n_key_blocks;
  pk.n_groups = (std::min(kv_len, n_key_blocks * bs) + stride - 1) / stride;
  pk.kp.assign(static_cast<size_t>(n_key_blocks * c.kv_heads * width), 0.0);
  pk.u.assign(static_cast<size_t>(c.kv_heads * pk.n_groups), 0.0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t j = 0; j < n_key_blocks; ++j)
    for (int64_t g = 0; g < c.kv_heads; ++g) {
      double* out = &pk.kp[static_cast<size_t>((j * c.kv_heads + g) * width)];
      for (int64_t p = j * bs; p < std::min((j + 1) * bs, kv_len); ++p) {
        const float* k = c.k + c.offset(s, p, g);
        double* acc = out + (p % stride) * d;  // t = (p − jB) mod S, since S divides B
        for (int64_t e = 0; e < d; ++e) acc[e] += k[e];
      }
    }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < c.kv_heads; ++g)
    for (int64_t n = 0; n < pk.n_groups; ++n) {
      double largest = 0;
      for (int64_t p = n * stride; p < std::min((n + 1) * stride, kv_len); ++p) {
        const float* v = c.v + c.offset(s, p, g);
        double sq = 0;
        for (int64_t e = 0; e < d; ++e) sq += double{v[e]} * v[e];
        largest = std::max(largest, std::sqrt(sq));
      }
      pk.u[static_cast<size_t>(g * pk.n_groups + n)] = std::log(largest + kStemValueEpsilon);
    }
  return pk;
}

// vb[j] for j ≤ block of one query block and KV head: z-scores of u over the groups the block can
// see (n < ceil(key_end / S)), mean with the unbiased std as torch's .std(), then λ·max(0, z)
// averaged over each key block's visible groups.
void value_bonus(const PooledKeys& pk, int64_t g, const StemQueryBlock& b, const StemKernelParams& st, float* bonus) {
  const int64_t groups = (b.key_end + st.stride - 1) / st.stride, per_block = st.block_size / st.stride;
  const double* u = &pk.u[static_cast<size_t>(g * pk.n_groups)];
  double mean = 0;
  for (int64_t n = 0; n < groups; ++n) mean += u[n];
  mean /= static_cast<double>(groups);
  double var = 0;
  for (int64_t n = 0; n < groups; ++n) var += (u[n] - mean) * (u[n] - mean);
  var = groups > 1 ? var / static_cast<double>(groups - 1) : 0.0;
  const double inv = 1.0 / (std::sqrt(var) + kStemValueEpsilon);
  for (int64_t j = 0; j <= b.block; ++j) {
    const int64_t first = j * per_block, count = std::min(per_block, groups - first);
    double sum = 0;
    for (int64_t n = first; n < first + count; ++n) sum += std::max(0.0, (u[n] - mean) * inv);
    bonus[j] = static_cast<float>(st.lambda * sum / static_cast<double>(count));
  }
}

}  // namespace

std::vector<int32_t> stem_top_k(std::span<const float> scores, int64_t k) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t keep = static_cast<size_t>(std::clamp<int64_t>(k, 0, static_cast<int64_t>(scores.size())));
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  order.resize(keep);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<int32_t> stem_threshold_select(std::span<const float> scores, double tau) {
  if (scores.empty()) return {};
  const double largest = *std::max_element(scores.begin(), scores.end());
  std::vector<double> mass(scores.size());
  double total = 0;
  for (size_t j = 0; j < scores.size(); ++j) total += (mass[j] = std::exp(double{scores[j]} - largest));
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  const double target = tau * total;
  double kept = 0;
  size_t count = 0;
  while (count < order.size() && (count == 0 || kept < target)) kept += mass[order[count++]];
  order.resize(count);
  std::sort(order.begin(), order.end());
  return order;
}

StemPlan stem_plan(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   std::span<const StemQueryBlock> blocks, float scale, const StemKernelParams& params,
                   StemScores* scores) {
  check_rows(q, "stem_plan q", DType::F32, 3);
  check_packed(k_cache, "stem_plan k_cache", DType::F32, 4);
  check_packed(v_cache, "stem_plan v_cache", DType::F32, 4);
  check_packed(page_table, "stem_plan page_table", DType::I32, 2);
  check_packed(kv_lens, "stem_plan kv_lens", DType::I32, 1);
  check_packed(query_start, "stem_plan query_start", DType::I32, 1);
  const int64_t q_heads = q.shape[1], d = q.shape[2], kv_heads = k_cache.shape[2], seqs = page_table.shape[0];
  check_dim(k_cache, "stem_plan k_cache", 3, d, "head_dim, as in q");
  STEM_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, "stem_plan: ", q_heads, " q heads over ", kv_heads, " KV heads");
  check_dim(kv_lens, "stem_plan kv_lens", 0, seqs, "sequences");
  check_dim(query_start, "stem_plan query_start", 0, seqs + 1, "sequences + 1");
  const Cache cache{k_cache.ptr<float>(), v_cache.ptr<float>(), page_table.ptr<int32_t>(), page_table.shape[1],
                    k_cache.shape[1], kv_heads, d};
  const std::span<const int32_t> lens(kv_lens.ptr<int32_t>(), static_cast<size_t>(seqs)),
      starts(query_start.ptr<int32_t>(), static_cast<size_t>(seqs + 1));
  STEM_CHECK(starts[seqs] == q.shape[0], "stem_plan: query_start ends at ", starts[seqs], ", q has ", q.shape[0], " rows");
  for (int64_t s = 0; s < seqs; ++s) {
    STEM_CHECK(lens[s] <= cache.max_pages * cache.page_size, "stem_plan: sequence ", s, " has kv_len ", lens[s],
               " past its page table");
    for (int64_t i = 0; i * cache.page_size < lens[s]; ++i) {
      const int32_t page = cache.page_table[s * cache.max_pages + i];
      STEM_CHECK(page >= 0 && page < k_cache.shape[0], "stem_plan: page_table[", s, "][", i, "] = ", page);
    }
  }
  check_stem_kernel_params(params);
  check_stem_query_blocks(blocks, lens, starts, params);

  const int64_t bs = params.block_size, stride = params.stride, per_block = bs / stride, width = stride * d;
  const int64_t group = q_heads / kv_heads;
  const double factor = double{scale} / static_cast<double>(stride * per_block * per_block);
  std::vector<size_t> sparse;
  int64_t cols = 0;
  for (size_t b = 0; b < blocks.size(); ++b)
    if (blocks[b].sparse) {
      sparse.push_back(b);
      cols = std::max<int64_t>(cols, blocks[b].block + 1);
    }
  const int64_t rows = static_cast<int64_t>(sparse.size());
  std::vector<float> logit(static_cast<size_t>(rows * q_heads * cols), 0.f),
      bonus(static_cast<size_t>(rows * kv_heads * cols), 0.f);
  std::vector<std::vector<int32_t>> chosen(static_cast<size_t>(rows * q_heads));

  // Sparse blocks of a sequence are consecutive: pool its keys once for all of them. Sink and
  // window alone (None) need no scores: they stay zeros.
  const bool scored = params.selector != StemSelector::None;
  for (int64_t r0 = 0; scored && r0 < rows;) {
    const int32_t s = blocks[sparse[r0]].seq;
    int64_t r1 = r0;
    while (r1 < rows && blocks[sparse[r1]].seq == s) ++r1;
    const PooledKeys pk = pool_keys(cache, s, lens[s], blocks[sparse[r1 - 1]].block + 1, params);
    const int64_t first_pos = lens[s] - (starts[s + 1] - starts[s]);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 0; h < q_heads; ++h) {
        const StemQueryBlock& b = blocks[sparse[r]];
        // Qp_t = Σ_{r<R} q[iB + rS + S−1−t]: position p lands in t = S − 1 − (p − iB) mod S.
        std::vector<double> qp(static_cast<size_t>(width), 0.0);
        for (int64_t p = int64_t{b.block} * bs; p < b.key_end; ++p) {
          const float* qr = q.ptr<float>() + (starts[s] + p - first_pos) * row_stride(q) + h * d;
          double* acc = &qp[static_cast<size_t>((stride - 1 - p % stride) * d)];
          for (int64_t e = 0; e < d; ++e) acc[e] += qr[e];
        }
        float* out = &logit[static_cast<size_t>((r * q_heads + h) * cols)];
        for (int64_t j = 0; j <= b.block; ++j) {
          const double* kp = &pk.kp[static_cast<size_t>((j * kv_heads + h / group) * width)];
          double dot = 0;
          for (int64_t x = 0; x < width; ++x) dot += qp[x] * kp[x];
          out[j] = static_cast<float>(dot * factor);
        }
      }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < kv_heads; ++g)
        value_bonus(pk, g, blocks[sparse[r]], params, &bonus[static_cast<size_t>((r * kv_heads + g) * cols)]);
    r0 = r1;
  }

#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < q_heads; ++h) {
      const StemQueryBlock& b = blocks[sparse[r]];
      std::vector<float> score(static_cast<size_t>(b.block + 1));
      for (int64_t j = 0; j <= b.block; ++j)
        score[j] = logit[(r * q_heads + h) * cols + j] + bonus[(r * kv_heads + h / group) * cols + j];
      std::vector<char> keep(score.size(), 0);
      if (params.selector == StemSelector::TopK)
        for (int32_t j : stem_top_k(score, b.budget)) keep[j] = 1;
      else if (params.selector == StemSelector::Threshold)
        for (int32_t j : stem_threshold_select(score, params.threshold)) keep[j] = 1;
      else if (params.selector == StemSelector::Adaptive) {
        // Both are prefixes of the ranking by (score desc, j asc): the shorter one.
        std::vector<int32_t> kept = stem_threshold_select(score, params.threshold);
        if (static_cast<int64_t>(kept.size()) > b.budget) kept = stem_top_k(score, b.budget);
        for (int32_t j : kept) keep[j] = 1;
      }
      for (int64_t j = 0; j < std::min<int64_t>(params.sink_blocks, b.block + 1); ++j) keep[j] = 1;
      for (int64_t j = std::max<int64_t>(0, b.block - params.window_blocks + 1); j <= b.block; ++j) keep[j] = 1;
      std::vector<int32_t>& list = chosen[static_cast<size_t>(r * q_heads + h)];
      for (int64_t j = 0; j <= b.block; ++j)
        if (keep[j]) list.push_back(static_cast<int32_t>(j));
    }

  StemPlan plan;
  plan.q_heads = q_heads;
  plan.block_size = bs;
  plan.block_offsets.push_back(0);
  int64_t row = 0;
  for (const StemQueryBlock& b : blocks) {
    plan.qblocks.push_back(b.seq);
    plan.qblocks.push_back(b.block);
    for (int64_t h = 0; h < q_heads; ++h) {
      if (b.sparse) {
        const std::vector<int32_t>& list = chosen[static_cast<size_t>(row * q_heads + h)];
        plan.block_indices.insert(plan.block_indices.end(), list.begin(), list.end());
      } else {
        for (int32_t j = b.first_key; j <= b.block; ++j) plan.block_indices.push_back(j);
      }
      plan.block_offsets.push_back(static_cast<int32_t>(plan.block_indices.size()));
    }
    row += b.sparse ? 1 : 0;
  }
  if (scores) {
    scores->blocks.clear();
    for (size_t b : sparse) scores->blocks.push_back(blocks[b]);
    scores->q_heads = q_heads;
    scores->kv_heads = kv_heads;
    scores->cols = cols;
    scores->logit = std::move(logit);
    scores->bonus = std::move(bonus);
  }
  return plan;
}

}  // namespace stem::cpu
