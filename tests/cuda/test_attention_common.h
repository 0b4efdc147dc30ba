// Shared by the CUDA attention tests: a step of paged attention inputs (random bf16 values, a
// shuffled page table, NaN in every cache slot no sequence owns) on the host and the device, and
// the references: the CPU twin, and a softmax restricted to block lists.
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_prefill.cuh"
#include "tests/cuda/gpu_test_util.h"

namespace stem::attn_test {

using gpu_test::DeviceBuffer;

struct Seq {
  int32_t kv_len, rows;  // rows: this step's queries, the newest `rows` tokens of the sequence
};

struct PagedStep {
  int64_t hq, hkv, d, page_size, pages = 0, max_pages = 0, tokens = 0, q_width;
  std::vector<Seq> seqs;
  std::vector<float> q, k_cache, v_cache;  // bf16 values; q is [T, q_width] with heads first
  std::vector<int32_t> page_table, kv_lens, query_start;
  std::unique_ptr<DeviceBuffer> d_q, d_k, d_v, d_table, d_lens, d_start, d_out;

  // q_width > Hq·D makes q a slice of wider rows (a fused qkv projection's output).
  PagedStep(std::mt19937_64& rng, int64_t q_heads, int64_t kv_heads, int64_t dim, int64_t ps, std::vector<Seq> s,
            float q_scale = 1.f, int64_t width = 0)
      : hq(q_heads), hkv(kv_heads), d(dim), page_size(ps), q_width(width ? width : q_heads * dim), seqs(std::move(s)) {
    int64_t needed = 0;
    for (const Seq& seq : seqs) {
      const int64_t n = (seq.kv_len + ps - 1) / ps;
      needed += n;
      max_pages = std::max(max_pages, n + 1);  // a padding entry per row, -1
      tokens += seq.rows;
    }
    pages = needed + 5;  // spare pages no sequence owns
    const int64_t slot = hkv * d;
    // Cache slots the kernels must never read are NaN: spare pages and each last page's tail.
    k_cache.assign(static_cast<size_t>(pages * ps * slot), NAN);
    v_cache.assign(k_cache.size(), NAN);
    std::vector<int32_t> order(static_cast<size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    page_table.assign(seqs.size() * max_pages, -1);
    size_t next = 0;
    query_start.push_back(0);
    for (size_t si = 0; si < seqs.size(); ++si) {
      kv_lens.push_back(seqs[si].kv_len);
      query_start.push_back(query_start.back() + seqs[si].rows);
      for (int64_t i = 0; i * ps < seqs[si].kv_len; ++i) page_table[si * max_pages + i] = order[next++];
      const std::vector<float> k = gpu_test::random_bf16_values(rng, seqs[si].kv_len * slot);
      const std::vector<float> v = gpu_test::random_bf16_values(rng, seqs[si].kv_len * slot);
      for (int64_t p = 0; p < seqs[si].kv_len; ++p) {
        const int64_t at = (page_table[si * max_pages + p / ps] * ps + p % ps) * slot;
        std::copy_n(k.begin() + p * slot, slot, k_cache.begin() + at);
        std::copy_n(v.begin() + p * slot, slot, v_cache.begin() + at);
      }
    }
    q = gpu_test::random_bf16_values(rng, tokens * q_width, q_scale);
    d_q = gpu_test::upload_bf16(q);
    d_k = gpu_test::upload_bf16(k_cache);
    d_v = gpu_test::upload_bf16(v_cache);
    d_table = gpu_test::upload(page_table);
    d_lens = gpu_test::upload(kv_lens);
    d_start = gpu_test::upload(query_start);
    d_out = std::make_unique<DeviceBuffer>(static_cast<size_t>(std::max<int64_t>(tokens, 1) * hq * d * 2));
  }

  int64_t out_size() const { return tokens * hq * d; }
  TensorView q_view() const {
    TensorView v(d_q->get(), DType::BF16, {tokens, hq, d});
    v.stride[0] = q_width;
    return v;
  }
  TensorView out_view() const { return d_out->view(DType::BF16, {tokens, hq, d}); }
  TensorView k_view() const { return d_k->view(DType::BF16, {pages, page_size, hkv, d}); }
  TensorView v_view() const { return d_v->view(DType::BF16, {pages, page_size, hkv, d}); }
  TensorView table_view() const { return d_table->view(DType::I32, {int64_t(seqs.size()), max_pages}); }
  TensorView lens_view() const { return d_lens->view(DType::I32, {int64_t(seqs.size())}); }
  TensorView start_view() const { return d_start->view(DType::I32, {int64_t(seqs.size()) + 1}); }

  std::vector<float> download_out() const { return gpu_test::download_f32(*d_out, DType::BF16, out_size()); }
  // The q rows (heads only, the fused row's tail dropped), as they are on the device now.
  std::vector<float> download_q_heads() const {
    const std::vector<float> all = gpu_test::download_f32(*d_q, DType::BF16, tokens * q_width);
    std::vector<float> heads(static_cast<size_t>(out_size()));
    for (int64_t t = 0; t < tokens; ++t) std::copy_n(all.begin() + t * q_width, hq * d, heads.begin() + t * hq * d);
    return heads;
  }

  // The CPU twin on the same (bf16) values.
  std::vector<float> reference(float scale, int64_t window) const {
    std::vector<float> qh(static_cast<size_t>(out_size())), out(qh.size(), NAN);
    for (int64_t t = 0; t < tokens; ++t) std::copy_n(q.begin() + t * q_width, hq * d, qh.begin() + t * hq * d);
    std::vector<float> kc = k_cache, vc = v_cache;
    std::vector<int32_t> table = page_table, lens = kv_lens, start = query_start;
    const int64_t s = static_cast<int64_t>(seqs.size());
    cpu::paged_attention(TensorView(out.data(), DType::F32, {tokens, hq, d}),
                         TensorView(qh.data(), DType::F32, {tokens, hq, d}),
                         TensorView(kc.data(), DType::F32, {pages, page_size, hkv, d}),
                         TensorView(vc.data(), DType::F32, {pages, page_size, hkv, d}),
                         TensorView(table.data(), DType::I32, {s, max_pages}), TensorView(lens.data(), DType::I32, {s}),
                         TensorView(start.data(), DType::I32, {s + 1}), scale, window);
    return out;
  }

  // Softmax attention (double) restricted to a plan's block lists: the row at position pos of
  // query block (s, i), head h sees key p iff p ≤ pos and p's block is on the list of (i, h).
  std::vector<float> block_reference(const cuda::BlockSparsePlan& plan, float scale) const {
    std::vector<float> out(static_cast<size_t>(out_size()), NAN);
    const int64_t slot = hkv * d, group = hq / hkv;
    for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
      const int32_t s = plan.qblocks[2 * b], i = plan.qblocks[2 * b + 1];
      const int64_t rows = query_start[s + 1] - query_start[s], first_pos = kv_lens[s] - rows;
      for (int64_t h = 0; h < hq; ++h) {
        std::vector<int64_t> keys;
        for (int32_t at = plan.block_offsets[b * hq + h]; at < plan.block_offsets[b * hq + h + 1]; ++at)
          for (int64_t p = int64_t{plan.block_indices[at]} * 128; p < (plan.block_indices[at] + 1) * 128LL; ++p)
            keys.push_back(p);
        for (int64_t pos = std::max<int64_t>(i * 128LL, first_pos); pos < std::min<int64_t>((i + 1) * 128LL, kv_lens[s]);
             ++pos) {
          const int64_t r = query_start[s] + pos - first_pos;
          const float* qv = &q[r * q_width + h * d];
          std::vector<double> score;
          std::vector<int64_t> seen;
          for (int64_t p : keys) {
            if (p > pos) continue;
            const int64_t at = (page_table[s * max_pages + p / page_size] * page_size + p % page_size) * slot +
                               (h / group) * d;
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) dot += double{qv[e]} * k_cache[at + e];
            score.push_back(dot * scale);
            seen.push_back(at);
          }
          float* o = &out[(r * hq + h) * d];
          std::fill_n(o, d, 0.f);
          if (score.empty()) continue;
          const double mx = *std::max_element(score.begin(), score.end());
          double sum = 0;
          for (double& x : score) sum += (x = std::exp(x - mx));
          for (int64_t e = 0; e < d; ++e) {
            double acc = 0;
            for (size_t k = 0; k < seen.size(); ++k) acc += score[k] * v_cache[seen[k] + e];
            o[e] = static_cast<float>(acc / sum);
          }
        }
      }
    }
    return out;
  }
};

// A plan's vectors on the device, and views of them.
struct DevicePlan {
  std::unique_ptr<DeviceBuffer> qblocks, offsets, indices;
  int64_t n_qblocks;
  explicit DevicePlan(const cuda::BlockSparsePlan& plan) : n_qblocks(plan.n_qblocks()) {
    qblocks = gpu_test::upload(plan.qblocks);
    offsets = gpu_test::upload(plan.block_offsets);
    if (!plan.block_indices.empty()) indices = gpu_test::upload(plan.block_indices);
  }
  TensorView qblocks_view() const { return qblocks->view(DType::I32, {n_qblocks, 2}); }
  TensorView offsets_view() const { return offsets->view(DType::I32, {int64_t(offsets->bytes() / 4)}); }
  TensorView indices_view() const {
    return indices ? indices->view(DType::I32, {int64_t(indices->bytes() / 4)}) : TensorView();
  }
};

inline float default_scale(int64_t d) { return 1.f / std::sqrt(static_cast<float>(d)); }

}  // namespace stem::attn_test
