// The device-side description of a Stem plan (kernels/cuda/stem.cuh): per-row, per-job and per-tile
// records the host lays out and uploads in one copy, and the parameter block every Stem kernel
// takes. Plain structs, no device code, so stem.cu's host half fills them.
#pragma once
#include <cstdint>

namespace stem::cuda::stem_kernels {

// A sparse query block ("row" of the estimate): rows are grouped by sequence, ascending block.
struct Row {
  int32_t seq, block, budget, key_end;
  int32_t bound;      // list capacity per head
  int32_t slot_base;  // its lists' scratch: slots[slot_base + h·bound ..]
  int32_t kp_base;    // pooled-key row of its sequence's key block 0
  int32_t u_base;     // its sequence's value-norm logs: u[g·u_stride + u_base + n]
  int32_t p_base;     // its sequence's prefix sums: p1[g·p_stride + p_base + c] = Σ_{n<c} u
  int32_t item_base;  // b·Hq, b its index in the attention's qblocks
};

// A key block to pool: pooled keys land in kp row kp_row, value logs at u_base + n.
struct KeyJob {
  int32_t seq, block, kp_row, u_base;
};

// One sequence's value statistics: prefix sums over its n_groups value-norm logs.
struct StatsJob {
  int32_t n_groups, u_base, p_base, chunk_base;  // chunk_base: its first chunk in chunk_sums
};

// A tile of the estimate GEMM: estimate rows [row0, row0 + rows) of one sequence against key
// blocks [col0, col0 + cols) of it, whose pooled keys start at kp row kp_base.
struct Tile {
  int32_t row0, rows, col0, cols, kp_base, pad0, pad1, pad2;
};

struct Params {
  // The step's inputs.
  const void* q;  // bf16 [T, Hq, D], rows q_stride apart
  const void* k_cache;
  const void* v_cache;
  const int32_t* page_table;
  const int32_t* kv_lens;
  const int32_t* query_start;
  int64_t q_stride;
  int32_t max_pages, page_size, q_heads, kv_heads, head_dim, group;
  int32_t block, stride, per_block;  // B, S, R = B / S
  float factor;                      // scale / (S·R²)
  float lambda;
  int32_t sinks, window;
  double threshold;  // StemSelector::Threshold: the softmax mass each row keeps
  // The host's layout.
  const Row* rows;
  const KeyJob* key_jobs;
  const StatsJob* stats_jobs;
  const Tile* tiles;
  const int32_t* qblocks;  // [n_qblocks, 2], attention order
  const int32_t* qrow;     // [n_qblocks]: estimate row, or −1 for a dense block
  const int32_t* qfirst;   // [n_qblocks]: a dense block's first key block
  int32_t n_rows, n_key_jobs, n_stats, n_tiles, n_qblocks;
  int32_t stat_chunks, max_stat_chunks;  // value-statistics chunks: all of them, the most of one job
  int32_t cols;                // estimate row length (longest causal row, a multiple of 4)
  int64_t u_stride, p_stride;  // per KV head
  // Scratch and outputs.
  // Pooled vectors as bf16 pairs hi + lo (hi = bf16(x), lo = bf16(x − hi)): the GEMM's tensor-core
  // inputs, together 16 significant bits.
  void* qp_hi;      // bf16 [n_rows, Hq, S·D]
  void* qp_lo;
  void* kp_hi;      // bf16 [key blocks, Hkv, S·D]
  void* kp_lo;
  float* u;         // [Hkv, u_stride]
  double* p1;       // [Hkv, p_stride]
  double* p2;
  double* chunk_sums;  // [Hkv, stat_chunks, 2]: each chunk's Σ u and Σ u²
  float* estimate;  // [n_rows, Hq, cols]
  int32_t* sizes;   // [n_qblocks·Hq]
  int32_t* slots;
  int32_t* offsets;  // [n_qblocks·Hq + 1]
  int32_t* indices;
};

}  // namespace stem::cuda::stem_kernels
