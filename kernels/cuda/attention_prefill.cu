// Block-sparse flash-attention prefill: the kernels (the attention kernel itself lives in
// attention_prefill_kernel.cuh), then the host helpers that build block lists and the launchers.
#include "kernels/cuda/attention_prefill.cuh"

#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_prefill_kernel.cuh"
#include "kernels/cuda/attention_prefill_sm90.cuh"

namespace stem::cuda {
namespace attn {

// The router's plan: lists the query blocks of every sequence with more than min_rows rows (the
// others go to the decode kernel), latest block first within a sequence, and zeroes the prefill
// kernel's work counter. One CTA; a scan per kThreads sequences places each sequence's blocks.
__global__ void __launch_bounds__(kThreads) list_query_blocks_kernel(const int32_t* kv_lens, const int32_t* query_start,
                                                                     int seqs, int min_rows, int32_t* qblocks,
                                                                     int32_t* count, int32_t* work_counter,
                                                                     int capacity) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  int running = 0;
  for (int base = 0; base < seqs; base += kThreads) {
    const int s = base + static_cast<int>(threadIdx.x);
    int n_blocks = 0, last = 0;
    if (s < seqs) {
      const int rows = query_start[s + 1] - query_start[s], kv_len = kv_lens[s];
      if (rows > min_rows) {
        last = (kv_len - 1) / kBlock;
        n_blocks = last - (kv_len - rows) / kBlock + 1;
      }
    }
    int offset = 0, total = 0;
    Scan(temp).ExclusiveSum(n_blocks, offset, total);
    for (int k = 0; k < n_blocks; ++k) {
      const int at = running + offset + k;
      if (at < capacity) {
        qblocks[2 * at] = s;
        qblocks[2 * at + 1] = last - k;
      }
    }
    running += total;
    __syncthreads();  // temp is reused by the next scan
  }
  if (threadIdx.x == 0) {
    *count = min(running, capacity);
    *work_counter = 0;
  }
}

namespace {

// Fills the kernel's parameters shared by both prefill entry points.
PrefillParams prefill_params(const AttentionShape& s, const TensorView& out, const TensorView& q,
                             const TensorView& kv_lens, const TensorView& query_start) {
  PrefillParams p{};
  p.out = out.ptr<bf16>();
  p.q = q.ptr<const bf16>();
  p.kv = s.kv;
  p.kv_lens = kv_lens.ptr<const int32_t>();
  p.query_start = query_start.ptr<const int32_t>();
  p.q_stride = s.q_stride;
  p.out_stride = s.out_stride;
  p.q_heads = static_cast<int32_t>(s.q_heads);
  p.group = static_cast<int32_t>(s.q_heads / s.kv_heads);
  // A list holds distinct blocks of one sequence, so no more than the page table covers.
  p.list_cap = static_cast<int32_t>((int64_t{s.kv.max_pages} * s.kv.page_size + kBlock - 1) / kBlock);
  p.window = s.window;
  p.scale_log2 = s.scale_log2;
  return p;
}

// A persistent grid: as many CTAs as fit the device at once (or fewer, for few items).
template <int D>
void launch_prefill(const PrefillParams& p, cudaStream_t stream, const char* op) {
  const int smem = prefill_smem_bytes<D>(p.list_cap);
  allow_smem(reinterpret_cast<const void*>(&prefill_kernel<D>), smem, op);
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, prefill_kernel<D>, kThreads, smem));
  const int64_t wave = int64_t{std::max(1, per_sm)} * multiprocessors();
  const int64_t grid = std::min<int64_t>(int64_t{p.n_qblocks} * p.q_heads, wave);
  if (grid == 0) return;
  prefill_kernel<D><<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(p);
  STEM_CUDA_CHECK_LAUNCH();
}

// Hopper with head dim 128 takes the wgmma/TMA kernel; everything else the mma.sync one.
void launch_prefill(const AttentionShape& s, const PrefillParams& p, cudaStream_t stream, const char* op) {
  if (sm90::use_prefill_sm90(s))
    sm90::launch_prefill_sm90(s, p, stream, op);
  else if (s.head_dim == 64)
    launch_prefill<64>(p, stream, op);
  else
    launch_prefill<128>(p, stream, op);
}

}  // namespace
}  // namespace attn

std::vector<int32_t> prefill_query_blocks(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start) {
  STEM_CHECK(query_start.size() == kv_lens.size() + 1, "prefill_query_blocks: query_start has ", query_start.size(),
             " entries for ", kv_lens.size(), " sequences (needs sequences + 1)");
  std::vector<int32_t> blocks;
  for (size_t s = 0; s < kv_lens.size(); ++s) {
    const int64_t rows = int64_t{query_start[s + 1]} - query_start[s];
    STEM_CHECK(rows >= 0 && kv_lens[s] >= rows, "prefill_query_blocks: sequence ", s, " has ", rows,
               " query rows and kv_len ", kv_lens[s]);
    if (rows == 0) continue;
    for (int64_t i = (kv_lens[s] - rows) / kAttentionBlock; i <= (kv_lens[s] - 1) / kAttentionBlock; ++i) {
      blocks.push_back(static_cast<int32_t>(s));
      blocks.push_back(static_cast<int32_t>(i));
    }
  }
  // Latest blocks have the longest causal lists: running them first evens out the tail.
  std::vector<size_t> order(blocks.size() / 2);
  for (size_t b = 0; b < order.size(); ++b) order[b] = b;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return blocks[2 * a + 1] > blocks[2 * b + 1]; });
  std::vector<int32_t> sorted;
  sorted.reserve(blocks.size());
  for (size_t b : order) {
    sorted.push_back(blocks[2 * b]);
    sorted.push_back(blocks[2 * b + 1]);
  }
  return sorted;
}

int64_t first_key_block(int64_t first_query_pos, int64_t sliding_window) {
  return sliding_window > 0 ? std::max<int64_t>(0, first_query_pos - sliding_window + 1) / kAttentionBlock : 0;
}

BlockSparsePlan dense_causal_plan(std::span<const int32_t> kv_lens, std::span<const int32_t> query_start,
                                  int64_t q_heads, int64_t sliding_window) {
  BlockSparsePlan plan;
  plan.qblocks = prefill_query_blocks(kv_lens, query_start);
  plan.block_offsets.push_back(0);
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int32_t s = plan.qblocks[2 * b], i = plan.qblocks[2 * b + 1];
    const int64_t first_pos = kv_lens[s] - (query_start[s + 1] - query_start[s]);
    const int64_t first = first_key_block(std::max<int64_t>(i * kAttentionBlock, first_pos), sliding_window);
    for (int64_t h = 0; h < q_heads; ++h) {
      for (int64_t j = first; j <= i; ++j) plan.block_indices.push_back(static_cast<int32_t>(j));
      plan.block_offsets.push_back(static_cast<int32_t>(plan.block_indices.size()));
    }
  }
  return plan;
}

void block_sparse_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                          const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                          const TensorView& query_start, const TensorView& qblocks, const TensorView& block_offsets,
                          const TensorView& block_indices, float scale, int64_t sliding_window, cudaStream_t stream) {
  constexpr const char* op = "block_sparse_prefill";
  const attn::AttentionShape s =
      attn::check_attention(op, out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  if (qblocks.empty()) return;  // no query block this step
  cpu::check_packed(qblocks, "block_sparse_prefill qblocks", DType::I32, 2);
  cpu::check_dim(qblocks, "block_sparse_prefill qblocks", 1, 2, "(sequence, query block) pairs");
  const int64_t n_qblocks = qblocks.shape[0];
  attn::PrefillParams p = attn::prefill_params(s, out, q, kv_lens, query_start);
  p.qblocks = qblocks.ptr<const int32_t>();
  p.n_qblocks = static_cast<int32_t>(n_qblocks);
  if (!block_offsets.empty()) {
    cpu::check_packed(block_offsets, "block_sparse_prefill block_offsets", DType::I32, 1);
    cpu::check_dim(block_offsets, "block_sparse_prefill block_offsets", 0, n_qblocks * s.q_heads + 1,
                   "query blocks x q heads + 1");
    p.block_offsets = block_offsets.ptr<const int32_t>();
    if (!block_indices.empty()) {
      cpu::check_packed(block_indices, "block_sparse_prefill block_indices", DType::I32, 1);
      p.block_indices = block_indices.ptr<const int32_t>();
    }
  }
  STEM_CHECK(n_qblocks * s.q_heads < (int64_t{1} << 31), op, ": ", n_qblocks, " query blocks x ", s.q_heads,
             " heads do not fit 32-bit work item numbers");
  // The work counter, stream-ordered like the launch (graph capture keeps both).
  int32_t* counter = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&counter), sizeof(int32_t), stream));
  try {
    CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(int32_t), stream));
    p.work_counter = counter;
    attn::launch_prefill(s, p, stream, op);
  } catch (...) {
    cudaFreeAsync(counter, stream);
    throw;
  }
  CUDA_CHECK(cudaFreeAsync(counter, stream));
}

namespace detail {

void dense_prefill_on_device(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                             const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                             const TensorView& query_start, int32_t* qblocks, int32_t* count, int64_t capacity,
                             int64_t min_rows, float scale, int64_t sliding_window, cudaStream_t stream) {
  constexpr const char* op = "paged_attention (prefill)";
  const attn::AttentionShape s =
      attn::check_attention(op, out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  if (capacity == 0) return;
  STEM_CHECK(capacity * s.q_heads < (int64_t{1} << 31), op, ": ", capacity, " query blocks x ", s.q_heads,
             " heads do not fit 32-bit work item numbers");
  attn::list_query_blocks_kernel<<<1, attn::kThreads, 0, stream>>>(
      kv_lens.ptr<const int32_t>(), query_start.ptr<const int32_t>(), static_cast<int>(s.seqs),
      static_cast<int>(min_rows), qblocks, count, count + 1, static_cast<int>(capacity));
  STEM_CUDA_CHECK_LAUNCH();
  attn::PrefillParams p = attn::prefill_params(s, out, q, kv_lens, query_start);
  p.qblocks = qblocks;
  p.qblock_count = count;
  p.work_counter = count + 1;
  p.n_qblocks = static_cast<int32_t>(capacity);
  attn::launch_prefill(s, p, stream, op);
}

}  // namespace detail
}  // namespace stem::cuda
