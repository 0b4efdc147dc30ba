// Shared by the Stem CPU tests: a step of paged attention inputs in f32 (random values, shuffled
// pages, NaN in every cache slot no sequence owns) with each sequence's whole prompt length, and
// the calls and references the tests make on it. The query blocks are classified by the policy
// (models/stem_policy.h), as the backends do, and handed to the planner.
#pragma once
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/stem_attention.h"
#include "models/stem_policy.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

namespace stem::stem_test {

struct Seq {
  int32_t kv_len, rows;  // rows: this step's queries, the newest `rows` tokens of the sequence
};

struct Step {
  int64_t q_heads, kv_heads, dim, page_size, pages = 0, max_pages = 0, tokens = 0;
  std::vector<Seq> seqs;
  std::vector<std::vector<float>> k_logical, v_logical;  // [s]: [kv_len, Hkv, D]
  std::vector<float> q, k_cache, v_cache;
  std::vector<int32_t> page_table, kv_lens, query_start, prompt_lens;

  Step(std::mt19937_64& rng, int64_t hq, int64_t hkv, int64_t d, int64_t ps, std::vector<Seq> s,
       std::vector<int32_t> prompts, float q_scale = 1.f)
      : q_heads(hq), kv_heads(hkv), dim(d), page_size(ps), seqs(std::move(s)), prompt_lens(std::move(prompts)) {
    for (const Seq& seq : seqs) {
      max_pages = std::max(max_pages, (seq.kv_len + ps - 1) / ps + 1);
      pages += (seq.kv_len + ps - 1) / ps;
      tokens += seq.rows;
    }
    pages += 3;
    const int64_t slot = kv_heads * dim;
    k_cache = ktest::poisoned(pages * page_size * slot);
    v_cache = ktest::poisoned(pages * page_size * slot);
    std::vector<int32_t> order(static_cast<size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    page_table.assign(seqs.size() * max_pages, -1);
    size_t next = 0;
    query_start.push_back(0);
    for (size_t si = 0; si < seqs.size(); ++si) {
      kv_lens.push_back(seqs[si].kv_len);
      query_start.push_back(query_start.back() + seqs[si].rows);
      k_logical.push_back(ktest::random_floats(rng, seqs[si].kv_len * slot));
      v_logical.push_back(ktest::random_floats(rng, seqs[si].kv_len * slot));
      for (int64_t i = 0; i * ps < seqs[si].kv_len; ++i) page_table[si * max_pages + i] = order[next++];
      for (int64_t p = 0; p < seqs[si].kv_len; ++p) {
        const int64_t at = (page_table[si * max_pages + p / ps] * ps + p % ps) * slot;
        std::copy_n(k_logical[si].begin() + p * slot, slot, k_cache.begin() + at);
        std::copy_n(v_logical[si].begin() + p * slot, slot, v_cache.begin() + at);
      }
    }
    q = ktest::random_floats(rng, tokens * q_heads * dim, q_scale);
  }

  int64_t n_seqs() const { return static_cast<int64_t>(seqs.size()); }
  static TensorView view(std::vector<float>& x, std::initializer_list<int64_t> dims) {
    return TensorView(x.data(), DType::F32, dims);
  }
  TensorView cache_view(std::vector<float>& c) { return TensorView(c.data(), DType::F32, {pages, page_size, kv_heads, dim}); }
  TensorView table_view() { return TensorView(page_table.data(), DType::I32, {n_seqs(), max_pages}); }
  TensorView lens_view() { return TensorView(kv_lens.data(), DType::I32, {n_seqs()}); }
  TensorView starts_view() { return TensorView(query_start.data(), DType::I32, {n_seqs() + 1}); }
  // The step's query blocks as the policy classifies them.
  std::vector<StemQueryBlock> blocks(const StemSettings& st, int64_t window = 0) const {
    return stem_query_blocks(kv_lens, query_start, prompt_lens, window, st);
  }

  cpu::StemPlan plan(float scale, const StemSettings& st, cpu::StemScores* scores = nullptr, int64_t window = 0) {
    return cpu::stem_plan(view(q, {tokens, q_heads, dim}), cache_view(k_cache), cache_view(v_cache), table_view(),
                          lens_view(), starts_view(), blocks(st, window), scale, st, scores);
  }
  std::vector<float> stem(float scale, const StemSettings& st, int64_t window) {
    std::vector<float> out = ktest::poisoned(tokens * q_heads * dim);
    cpu::stem_prefill(view(out, {tokens, q_heads, dim}), view(q, {tokens, q_heads, dim}), cache_view(k_cache),
                      cache_view(v_cache), table_view(), lens_view(), starts_view(), blocks(st, window), scale, window,
                      st);
    return out;
  }
  std::vector<float> dense(float scale, int64_t window) {
    std::vector<float> out = ktest::poisoned(tokens * q_heads * dim);
    cpu::paged_attention(view(out, {tokens, q_heads, dim}), view(q, {tokens, q_heads, dim}), cache_view(k_cache),
                         cache_view(v_cache), table_view(), lens_view(), starts_view(), scale, window);
    return out;
  }

  // Softmax attention in double over logical positions, restricted to the plan's lists: the row at
  // position pos of query block (s, i), head h sees key p iff p ≤ pos and p's block is listed.
  std::vector<double> block_reference(const cpu::StemPlan& plan, float scale) const {
    std::vector<double> out(static_cast<size_t>(tokens * q_heads * dim), NAN);
    const int64_t slot = kv_heads * dim, group = q_heads / kv_heads, bs = plan.block_size;
    for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
      const int64_t s = plan.qblocks[2 * b], i = plan.qblocks[2 * b + 1];
      const int64_t first_pos = kv_lens[s] - seqs[s].rows;
      for (int64_t h = 0; h < q_heads; ++h) {
        const auto list = plan.list(b, h);
        for (int64_t pos = std::max(i * bs, first_pos); pos < std::min((i + 1) * bs, int64_t{kv_lens[s]}); ++pos) {
          const int64_t r = query_start[s] + pos - first_pos;
          std::vector<double> score;
          std::vector<int64_t> keys;
          for (int32_t j : list)
            for (int64_t p = j * bs; p < (j + 1) * bs && p <= pos; ++p) {
              double dot = 0;
              for (int64_t e = 0; e < dim; ++e)
                dot += double{q[(r * q_heads + h) * dim + e]} * k_logical[s][p * slot + (h / group) * dim + e];
              score.push_back(dot * scale);
              keys.push_back(p);
            }
          double* o = &out[(r * q_heads + h) * dim];
          std::fill_n(o, dim, 0.0);
          if (keys.empty()) continue;
          const double mx = *std::max_element(score.begin(), score.end());
          double sum = 0;
          for (double& x : score) sum += (x = std::exp(x - mx));
          for (size_t x = 0; x < keys.size(); ++x)
            for (int64_t e = 0; e < dim; ++e) o[e] += score[x] / sum * v_logical[s][keys[x] * slot + (h / group) * dim + e];
        }
      }
    }
    return out;
  }
};

using Lists = std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>>;  // (block i, head h) → list

// Plans rows [begin, end) of sequence 0 of `step` (whose cache holds the whole prompt) as one
// step with kv_len = end, and returns its lists by (i, h), with the sparse blocks in *sparse.
inline Lists plan_chunk(Step& step, int32_t begin, int32_t end, float scale, const StemSettings& st,
                        std::map<int32_t, bool>* sparse = nullptr) {
  std::vector<int32_t> lens = {end}, starts = {0, end - begin}, prompts = {step.prompt_lens[0]};
  TensorView table(step.page_table.data(), DType::I32, {1, step.max_pages});
  const TensorView q = Step::view(step.q, {step.tokens, step.q_heads, step.dim}).rows(begin, end);
  cpu::StemScores scores;
  const cpu::StemPlan plan = cpu::stem_plan(
      q, step.cache_view(step.k_cache), step.cache_view(step.v_cache), table, TensorView(lens.data(), DType::I32, {1}),
      TensorView(starts.data(), DType::I32, {2}), stem_query_blocks(lens, starts, prompts, 0, st), scale, st, &scores);
  Lists lists;
  for (int64_t b = 0; b < plan.n_qblocks(); ++b)
    for (int64_t h = 0; h < step.q_heads; ++h) {
      const auto list = plan.list(b, h);
      lists[{plan.qblocks[2 * b + 1], static_cast<int32_t>(h)}] = std::vector<int32_t>(list.begin(), list.end());
    }
  if (sparse)
    for (const StemQueryBlock& b : scores.blocks) (*sparse)[b.block] = true;
  return lists;
}

}  // namespace stem::stem_test
