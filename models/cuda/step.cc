#include "models/cuda/step.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "kernels/check.h"

namespace stem {

namespace {
// Sections start on 128-byte boundaries: whole cache lines for each kernel's first read.
int64_t align32(int64_t n) { return (n + 31) / 32 * 32; }

// Narrowest page table a graph is captured for: below this the width costs nothing anyway.
constexpr int64_t kMinGraphPages = 16;
}  // namespace

StepLayout StepLayout::make(int64_t tokens, int64_t seqs, int64_t max_pages, int64_t rows) {
  StepLayout l;
  l.tokens = tokens;
  l.seqs = seqs;
  l.max_pages = max_pages;
  l.rows = rows;
  int64_t at = 0;
  auto section = [&at](int64_t n) {
    const int64_t start = at;
    at += align32(n);
    return start;
  };
  l.tokens_at = section(tokens);
  l.positions_at = section(tokens);
  l.slots_at = section(tokens);
  l.query_start_at = section(seqs + 1);
  l.kv_lens_at = section(seqs);
  l.page_table_at = section(seqs * max_pages);
  l.logit_rows_at = section(rows);
  l.total = at;
  return l;
}

StepLayout StepLayout::with_stage(int64_t pages) const {
  StepLayout l = *this;
  l.stage_pages = pages;
  l.stage_pages_at = l.total;
  l.stage_table_at = l.stage_pages_at + align32(pages);
  l.unstaged_at = l.stage_table_at + align32(seqs * max_pages);
  l.total = l.unstaged_at + align32(seqs);
  return l;
}

GraphKey graph_key_for(const ForwardBatch& b, const std::vector<int32_t>& batch_sizes) {
  const int64_t S = b.num_seqs();
  if (batch_sizes.empty() || b.num_tokens() != S || static_cast<int64_t>(b.logit_rows.size()) != S) return {};
  for (int64_t s = 0; s < S; ++s)
    if (b.query_start[s] != s || b.logit_rows[s] != s) return {};
  const auto it = std::lower_bound(batch_sizes.begin(), batch_sizes.end(), static_cast<int32_t>(S));
  if (it == batch_sizes.end()) return {};
  const int64_t pages = std::max<int64_t>(kMinGraphPages, std::bit_ceil(static_cast<uint64_t>(std::max(b.max_pages, 1))));
  return GraphKey{*it, pages};
}

void fill_step(const ForwardBatch& b, const StepLayout& l, int32_t* host) {
  const int64_t T = b.num_tokens(), S = b.num_seqs(), R = static_cast<int64_t>(b.logit_rows.size());
  STEM_CHECK(l.tokens >= T && l.seqs >= S && l.max_pages >= b.max_pages && l.rows >= R &&
                 l.tokens - T == l.seqs - S,
             "step layout [", l.tokens, " tokens, ", l.seqs, " seqs] cannot hold a batch of ", T, " tokens, ", S,
             " seqs");
  std::memset(host, 0, static_cast<size_t>(l.total) * sizeof(int32_t));
  std::copy(b.tokens.begin(), b.tokens.end(), host + l.tokens_at);
  std::copy(b.positions.begin(), b.positions.end(), host + l.positions_at);
  std::copy(b.slots.begin(), b.slots.end(), host + l.slots_at);
  std::fill(host + l.slots_at + T, host + l.slots_at + l.tokens, -1);
  int32_t* qs = host + l.query_start_at;
  std::copy(b.query_start.begin(), b.query_start.end(), qs);
  for (int64_t s = S + 1; s <= l.seqs; ++s) qs[s] = qs[s - 1] + 1;
  std::copy(b.kv_lens.begin(), b.kv_lens.end(), host + l.kv_lens_at);
  std::fill(host + l.kv_lens_at + S, host + l.kv_lens_at + l.seqs, 1);
  for (int64_t s = 0; s < S; ++s)
    std::copy_n(b.page_table.begin() + s * b.max_pages, b.max_pages, host + l.page_table_at + s * l.max_pages);
  int32_t* rows = host + l.logit_rows_at;
  std::copy(b.logit_rows.begin(), b.logit_rows.end(), rows);
  for (int64_t r = R; r < l.rows; ++r) rows[r] = static_cast<int32_t>(r);
}

void fill_stage(const cpu::KvStagePlan& plan, const StepLayout& l, int32_t* host) {
  STEM_CHECK(static_cast<int64_t>(plan.pages.size()) == l.stage_pages &&
                 static_cast<int64_t>(plan.page_table.size()) == l.seqs * l.max_pages &&
                 static_cast<int64_t>(plan.unstaged.size()) == l.seqs,
             "the staging plan (", plan.pages.size(), " pages) does not match the step layout");
  std::copy(plan.pages.begin(), plan.pages.end(), host + l.stage_pages_at);
  std::copy(plan.page_table.begin(), plan.page_table.end(), host + l.stage_table_at);
  std::copy(plan.unstaged.begin(), plan.unstaged.end(), host + l.unstaged_at);
}

}  // namespace stem
