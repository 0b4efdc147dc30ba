// A step's metadata (token ids, positions, KV slots, sequence bounds, page tables, logit rows) as
// one int32 buffer: gathered on the host in pinned memory, moved by one cudaMemcpyAsync, read by
// the kernels from fixed offsets. A decode graph reads its metadata from the offsets it was captured
// with, so the layout depends only on the step's padded shape, never on the values.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_fp8.h"
#include "models/backend.h"

namespace stem {

struct StepLayout {
  int64_t tokens = 0, seqs = 0, max_pages = 0, rows = 0;  // T, S, page-table width, logit rows
  int64_t tokens_at = 0, positions_at = 0, slots_at = 0, query_start_at = 0, kv_lens_at = 0, page_table_at = 0,
          logit_rows_at = 0, total = 0;  // offsets and size, in int32 elements

  // FP8 KV cache, eager steps with prefill rows (with_stage): the staging plan's sections
  // (kernels/cpu/kv_fp8.h KvStagePlan): pages [stage_pages], the staged page table [seqs, max_pages]
  // and the unstaged flags [seqs], after the batch's.
  int64_t stage_pages = 0, stage_pages_at = 0, stage_table_at = 0, unstaged_at = 0;

  static StepLayout make(int64_t tokens, int64_t seqs, int64_t max_pages, int64_t rows);
  // This layout with the staging sections of a plan of `pages` pages appended.
  StepLayout with_stage(int64_t pages) const;
};

// The shape a decode step runs at when it replays a graph: the batch padded to the next captured
// size, the page table widened to the next power of two (the decode kernel sizes its split of long
// contexts from that width, so one graph serves every context up to it).
struct GraphKey {
  int64_t batch = 0, pages = 0;
  auto operator<=>(const GraphKey&) const = default;
};

// The graph a batch can replay, or batch == 0 when it must run eagerly: every sequence has exactly
// one new token, the logit rows are 0..S-1 in order, and S fits the largest captured size.
GraphKey graph_key_for(const ForwardBatch& b, const std::vector<int32_t>& batch_sizes);

// Writes b's metadata into host[0, layout.total). When the layout is larger than the batch (a
// padded decode step), the extra sequences get one token each (id 0, position 0, KV slot -1, which
// kv_write skips), a kv_len of 1 and page 0 (read, never written), and their rows' logits are
// computed and ignored: rows never mix in any op, so padding cannot change the real rows.
void fill_step(const ForwardBatch& b, const StepLayout& layout, int32_t* host);
// Writes a staging plan into its sections of host (layout from with_stage).
void fill_stage(const cpu::KvStagePlan& plan, const StepLayout& layout, int32_t* host);

}  // namespace stem
