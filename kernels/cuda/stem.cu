// Stem on the GPU: the host half of the plan (bookkeeping on host copies of the step's metadata),
// the launches, and stem_prefill. The kernels are in stem_estimate.cuh and stem_select.cuh.
#include "kernels/cuda/stem.cuh"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_prefill.cuh"
#include "kernels/cuda/stem_estimate.cuh"
#include "kernels/cuda/stem_select.cuh"

namespace stem::cuda {

using namespace stem_kernels;

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
// The longest estimate row the select kernel's shared memory takes (prompts up to 1M tokens).
constexpr int64_t kMaxKeyBlocks = 8192;

// The host half of a plan: every record the kernels read, and where each buffer sits.
struct Layout {
  std::vector<StemQueryBlock> blocks, sparse;  // attention order; estimate rows
  std::vector<int32_t> qblocks, qrow, qfirst;
  std::vector<Row> rows;
  std::vector<KeyJob> key_jobs;
  std::vector<StatsJob> stats;
  std::vector<Tile> tiles;
  int64_t n_kp = 0, u_total = 0, p_total = 0, slots = 0, capacity = 0, cols = 0, stat_chunks = 0, max_stat_chunks = 0;
  // Byte offsets in the plan's memory.
  size_t qblocks_at = 0, qrow_at, qfirst_at, rows_at, jobs_at, stats_at, tiles_at, meta_end;
  size_t offsets_at, indices_at, sizes_at, slots_at, qp_at, qp_lo_at, kp_at, kp_lo_at, u_at, p1_at, p2_at, chunk_sums_at,
      estimate_at, total;
};

template <typename T>
void put(std::vector<unsigned char>& meta, size_t at, const std::vector<T>& v) {
  if (!v.empty()) std::memcpy(meta.data() + at, v.data(), v.size() * sizeof(T));
}

Layout make_layout(std::vector<StemQueryBlock> all, const StemBatch& host, int64_t q_heads, int64_t kv_heads,
                   int64_t head_dim, const StemKernelParams& st) {
  Layout l;
  const int64_t bs = st.block_size, stride = st.stride;
  // Estimate rows: the sparse blocks, already grouped by sequence in ascending i.
  std::vector<int32_t> row_of(all.size(), -1);
  for (size_t b = 0; b < all.size(); ++b)
    if (all[b].sparse) {
      row_of[b] = static_cast<int32_t>(l.sparse.size());
      l.sparse.push_back(all[b]);
    }
  // Attention order: longest lists first, so that the persistent grid's tail is short.
  std::vector<size_t> order(all.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return all[a].list_bound > all[b].list_bound; });
  l.rows.resize(l.sparse.size());
  for (size_t at = 0; at < order.size(); ++at) {
    const StemQueryBlock& b = all[order[at]];
    l.blocks.push_back(b);
    l.qblocks.push_back(b.seq);
    l.qblocks.push_back(b.block);
    l.qrow.push_back(row_of[order[at]]);
    l.qfirst.push_back(b.first_key);
    if (row_of[order[at]] >= 0) l.rows[row_of[order[at]]].item_base = static_cast<int32_t>(at * q_heads);
    l.capacity += int64_t{b.list_bound} * q_heads;
  }
  // Per sequence with sparse rows: its key blocks, value groups and GEMM tiles.
  for (size_t r0 = 0; r0 < l.sparse.size();) {
    const int32_t s = l.sparse[r0].seq;
    size_t r1 = r0;
    while (r1 < l.sparse.size() && l.sparse[r1].seq == s) ++r1;
    const int64_t key_blocks = l.sparse[r1 - 1].block + 1;
    const int64_t groups = (std::min<int64_t>(host.kv_lens[s], key_blocks * bs) + stride - 1) / stride;
    const int32_t kp_base = static_cast<int32_t>(l.n_kp), u_base = static_cast<int32_t>(l.u_total),
                  p_base = static_cast<int32_t>(l.p_total);
    for (int64_t j = 0; j < key_blocks; ++j)
      l.key_jobs.push_back({s, static_cast<int32_t>(j), static_cast<int32_t>(kp_base + j), u_base});
    const int64_t chunks = (groups + kScanThreads - 1) / kScanThreads;
    l.stats.push_back({static_cast<int32_t>(groups), u_base, p_base, static_cast<int32_t>(l.stat_chunks)});
    l.stat_chunks += chunks;
    l.max_stat_chunks = std::max(l.max_stat_chunks, chunks);
    for (size_t r = r0; r < r1; ++r) {
      Row& row = l.rows[r];
      const StemQueryBlock& b = l.sparse[r];
      row.seq = s;
      row.block = b.block;
      row.budget = b.budget;
      row.key_end = b.key_end;
      row.bound = b.list_bound;
      row.slot_base = static_cast<int32_t>(l.slots);
      row.kp_base = kp_base;
      row.u_base = u_base;
      row.p_base = p_base;
      l.slots += int64_t{b.list_bound} * q_heads;
    }
    for (size_t a = r0; a < r1; a += kGemmTile) {
      const int32_t rows = static_cast<int32_t>(std::min<size_t>(kGemmTile, r1 - a));
      const int64_t last = l.sparse[a + rows - 1].block;
      for (int64_t col0 = 0; col0 <= last; col0 += kGemmTile)
        l.tiles.push_back({static_cast<int32_t>(a), rows, static_cast<int32_t>(col0),
                           static_cast<int32_t>(std::min<int64_t>(kGemmTile, last + 1 - col0)), kp_base, 0, 0, 0});
    }
    l.n_kp += key_blocks;
    l.u_total += groups;
    l.p_total += groups + 1;
    l.cols = std::max(l.cols, (key_blocks + 3) / 4 * 4);
    r0 = r1;
  }
  STEM_CHECK(l.cols <= kMaxKeyBlocks, "stem_plan: a prompt of ", l.cols, " blocks is past the ", kMaxKeyBlocks,
             " blocks (", kMaxKeyBlocks * bs, " tokens) the selection kernel holds");
  const int64_t items = static_cast<int64_t>(l.blocks.size()) * q_heads;
  STEM_CHECK(l.capacity < (int64_t{1} << 31) && l.slots < (int64_t{1} << 31) && items < (int64_t{1} << 30),
             "stem_plan: the step's block lists do not fit 32-bit offsets");

  const int64_t width = stride * head_dim, n_rows = static_cast<int64_t>(l.sparse.size());
  size_t at = 0;
  auto section = [&](size_t bytes) {
    const size_t here = at;
    at = align_up(at + bytes);
    return here;
  };
  l.qblocks_at = section(l.qblocks.size() * 4);
  l.qrow_at = section(l.qrow.size() * 4);
  l.qfirst_at = section(l.qfirst.size() * 4);
  l.rows_at = section(l.rows.size() * sizeof(Row));
  l.jobs_at = section(l.key_jobs.size() * sizeof(KeyJob));
  l.stats_at = section(l.stats.size() * sizeof(StatsJob));
  l.tiles_at = section(l.tiles.size() * sizeof(Tile));
  l.meta_end = at;
  l.offsets_at = section(static_cast<size_t>(items + 1) * 4);
  l.indices_at = section(static_cast<size_t>(std::max<int64_t>(l.capacity, 1)) * 4);
  l.sizes_at = section(static_cast<size_t>(items) * 4);
  l.slots_at = section(static_cast<size_t>(l.slots) * 4);
  l.qp_at = section(static_cast<size_t>(n_rows * q_heads * width) * 2);
  l.qp_lo_at = section(static_cast<size_t>(n_rows * q_heads * width) * 2);
  l.kp_at = section(static_cast<size_t>(l.n_kp * kv_heads * width) * 2);
  l.kp_lo_at = section(static_cast<size_t>(l.n_kp * kv_heads * width) * 2);
  l.u_at = section(static_cast<size_t>(kv_heads * l.u_total) * 4);
  l.p1_at = section(static_cast<size_t>(kv_heads * l.p_total) * 8);
  l.p2_at = section(static_cast<size_t>(kv_heads * l.p_total) * 8);
  l.chunk_sums_at = section(static_cast<size_t>(kv_heads * l.stat_chunks) * 16);
  l.estimate_at = section(static_cast<size_t>(n_rows * q_heads * l.cols) * 4);
  l.total = at;
  return l;
}

void check_stem_cuda(const StemKernelParams& st, int64_t head_dim) {
  check_stem_kernel_params(st);
  STEM_CHECK(st.block_size == kAttentionBlock, "stem (CUDA): block size must be ", kAttentionBlock,
             " (the attention kernel's), got ", st.block_size);
  const int64_t threads = st.stride * head_dim / 8;
  STEM_CHECK(threads >= 32 && threads <= 1024, "stem (CUDA): stride ", st.stride, " with head dim ", head_dim,
             " gives ", threads, " pooling threads; they must be 32 to 1024 (stride ≥ ", 256 / head_dim, ")");
  // The GEMM reads K = S·D in chunks of 64 (always so once the pooling threads fit).
  STEM_CHECK(st.stride * head_dim % 64 == 0, "stem (CUDA): stride · head dim must be a multiple of 64");
}

// *skipped += causal − listed, where listed is the lists' total (the offsets' last entry).
__global__ void count_skipped_kernel(const int32_t* listed, long long causal, long long* skipped) {
  *skipped += causal - *listed;
}

// Launch 5 for one selector (select_kernel's template argument).
template <StemSelector kSelector>
void launch_select(dim3 grid, int smem, cudaStream_t stream, const Params& p) {
  attn::allow_smem(reinterpret_cast<const void*>(&select_kernel<kSelector>), smem, "stem_plan");
  select_kernel<kSelector><<<grid, kSelectThreads, smem, stream>>>(p);
  STEM_CUDA_CHECK_LAUNCH();
}

}  // namespace

// Builds plans and launches them; a friend of StemPlan.
struct StemPlanner {
  // The step's part: the layout of the query blocks' records, their upload and the memory that the
  // layers' launches fill.
  static StemPlan prepare(std::vector<StemQueryBlock> blocks, const StemBatch& host, int64_t hq, int64_t hkv,
                          int64_t d, const StemKernelParams& st, cudaStream_t stream) {
    Layout l = make_layout(std::move(blocks), host, hq, hkv, d, st);
    std::vector<unsigned char> meta(l.meta_end);
    put(meta, l.qblocks_at, l.qblocks);
    put(meta, l.qrow_at, l.qrow);
    put(meta, l.qfirst_at, l.qfirst);
    put(meta, l.rows_at, l.rows);
    put(meta, l.jobs_at, l.key_jobs);
    put(meta, l.stats_at, l.stats);
    put(meta, l.tiles_at, l.tiles);

    StemPlan plan;
    plan.stream_ = stream;
    StemPlan::Sections& at = plan.at_;
    at.q_heads = hq;
    at.kv_heads = hkv;
    at.head_dim = d;
    at.cols = l.cols;
    at.capacity = l.capacity;
    at.u_stride = l.u_total;
    at.p_stride = l.p_total;
    at.n_rows = static_cast<int32_t>(l.rows.size());
    at.n_key_jobs = static_cast<int32_t>(l.key_jobs.size());
    at.n_stats = static_cast<int32_t>(l.stats.size());
    at.stat_chunks = static_cast<int32_t>(l.stat_chunks);
    at.max_stat_chunks = static_cast<int32_t>(l.max_stat_chunks);
    at.n_tiles = static_cast<int32_t>(l.tiles.size());
    at.qblocks = l.qblocks_at;
    at.qrow = l.qrow_at;
    at.qfirst = l.qfirst_at;
    at.rows = l.rows_at;
    at.jobs = l.jobs_at;
    at.stats = l.stats_at;
    at.tiles = l.tiles_at;
    at.offsets = l.offsets_at;
    at.indices = l.indices_at;
    at.sizes = l.sizes_at;
    at.slots = l.slots_at;
    at.qp = l.qp_at;
    at.qp_lo = l.qp_lo_at;
    at.kp = l.kp_at;
    at.kp_lo = l.kp_lo_at;
    at.u = l.u_at;
    at.p1 = l.p1_at;
    at.p2 = l.p2_at;
    at.chunk_sums = l.chunk_sums_at;
    at.estimate = l.estimate_at;
    CUDA_CHECK(cudaMallocAsync(&plan.memory_, l.total, stream));
    plan.blocks_ = std::move(l.blocks);
    plan.sparse_ = std::move(l.sparse);
    // Pageable memory: the copy is staged before the call returns, and no device work is waited for.
    if (!meta.empty()) CUDA_CHECK(cudaMemcpyAsync(plan.memory_, meta.data(), meta.size(), cudaMemcpyHostToDevice, stream));
    return plan;
  }

  // One layer's part: the estimate, the selection and the lists, written into the plan's memory.
  static void launch(const StemPlan& plan, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                     const attn::AttentionShape& shape, float scale, const StemKernelParams& st, cudaStream_t stream,
                     cudaEvent_t estimated) {
    const int64_t hq = shape.q_heads, hkv = shape.kv_heads, d = shape.head_dim;
    const StemPlan::Sections& at = plan.at_;
    STEM_CHECK(hq == at.q_heads && hkv == at.kv_heads && d == at.head_dim, "stem: the step was planned for ",
               at.q_heads, "/", at.kv_heads, " heads of ", at.head_dim, ", the layer has ", hq, "/", hkv, " heads of ",
               d);
    unsigned char* base = static_cast<unsigned char*>(plan.memory_);
    Params p{};
    p.q = q.data;
    p.k_cache = k_cache.data;
    p.v_cache = v_cache.data;
    p.page_table = page_table.ptr<const int32_t>();
    p.kv_lens = kv_lens.ptr<const int32_t>();
    p.query_start = query_start.ptr<const int32_t>();
    p.q_stride = shape.q_stride;
    p.max_pages = shape.kv.max_pages;
    p.page_size = shape.kv.page_size;
    p.q_heads = static_cast<int32_t>(hq);
    p.kv_heads = static_cast<int32_t>(hkv);
    p.head_dim = static_cast<int32_t>(d);
    p.group = static_cast<int32_t>(hq / hkv);
    p.block = static_cast<int32_t>(st.block_size);
    p.stride = static_cast<int32_t>(st.stride);
    p.per_block = static_cast<int32_t>(st.block_size / st.stride);
    p.factor = static_cast<float>(double{scale} / static_cast<double>(st.stride * p.per_block * p.per_block));
    p.lambda = static_cast<float>(st.lambda);
    p.sinks = static_cast<int32_t>(std::min<int64_t>(st.sink_blocks, 1 << 30));
    p.window = static_cast<int32_t>(std::min<int64_t>(st.window_blocks, 1 << 30));
    p.threshold = st.threshold;
    p.rows = reinterpret_cast<const Row*>(base + at.rows);
    p.key_jobs = reinterpret_cast<const KeyJob*>(base + at.jobs);
    p.stats_jobs = reinterpret_cast<const StatsJob*>(base + at.stats);
    p.tiles = reinterpret_cast<const Tile*>(base + at.tiles);
    p.qblocks = reinterpret_cast<const int32_t*>(base + at.qblocks);
    p.qrow = reinterpret_cast<const int32_t*>(base + at.qrow);
    p.qfirst = reinterpret_cast<const int32_t*>(base + at.qfirst);
    p.n_rows = at.n_rows;
    p.n_key_jobs = at.n_key_jobs;
    p.n_stats = at.n_stats;
    p.stat_chunks = at.stat_chunks;
    p.max_stat_chunks = at.max_stat_chunks;
    p.n_tiles = at.n_tiles;
    p.n_qblocks = static_cast<int32_t>(plan.blocks_.size());
    p.cols = static_cast<int32_t>(at.cols);
    p.u_stride = at.u_stride;
    p.p_stride = at.p_stride;
    p.qp_hi = base + at.qp;
    p.qp_lo = base + at.qp_lo;
    p.kp_hi = base + at.kp;
    p.kp_lo = base + at.kp_lo;
    p.u = reinterpret_cast<float*>(base + at.u);
    p.p1 = reinterpret_cast<double*>(base + at.p1);
    p.p2 = reinterpret_cast<double*>(base + at.p2);
    p.chunk_sums = reinterpret_cast<double*>(base + at.chunk_sums);
    p.estimate = reinterpret_cast<float*>(base + at.estimate);
    p.sizes = reinterpret_cast<int32_t*>(base + at.sizes);
    p.slots = reinterpret_cast<int32_t*>(base + at.slots);
    p.offsets = reinterpret_cast<int32_t*>(base + at.offsets);
    p.indices = reinterpret_cast<int32_t*>(base + at.indices);

    const unsigned pool_threads = static_cast<unsigned>(st.stride * d / 8);
    // Sink and window alone (StemSelector::None) read no scores: no estimate.
    if (p.n_rows > 0 && st.selector != StemSelector::None) {
      pool_queries_kernel<<<dim3(p.n_rows, p.q_heads), pool_threads, 0, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
      pool_keys_kernel<<<dim3(p.n_key_jobs, p.kv_heads), pool_threads, 0, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
      const dim3 stats_grid(static_cast<unsigned>(p.max_stat_chunks), static_cast<unsigned>(p.n_stats),
                            static_cast<unsigned>(p.kv_heads));
      value_chunks_kernel<<<stats_grid, kScanThreads, 0, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
      value_prefix_kernel<<<stats_grid, kScanThreads, 0, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
      attn::allow_smem(reinterpret_cast<const void*>(&estimate_gemm_kernel), kGemmSmemBytes, "stem_plan");
      estimate_gemm_kernel<<<dim3(p.n_tiles, p.q_heads), kGemmThreads, kGemmSmemBytes, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
    }
    if (estimated) CUDA_CHECK(cudaEventRecord(estimated, stream));
    if (p.n_rows > 0) {
      const int smem = select_smem_bytes(p.cols);
      const dim3 grid(p.n_rows, p.kv_heads);
      if (st.selector == StemSelector::TopK) {
        launch_select<StemSelector::TopK>(grid, smem, stream, p);
      } else if (st.selector == StemSelector::Threshold) {
        launch_select<StemSelector::Threshold>(grid, smem, stream, p);
      } else if (st.selector == StemSelector::Adaptive) {
        launch_select<StemSelector::Adaptive>(grid, smem, stream, p);
      } else {
        launch_select<StemSelector::None>(grid, smem, stream, p);
      }
    }
    const int64_t items = int64_t{p.n_qblocks} * p.q_heads;
    if (items > 0) {
      list_offsets_kernel<<<static_cast<unsigned>((items + kOffsetThreads - 1) / kOffsetThreads), kOffsetThreads, 0,
                            stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
      write_lists_kernel<<<static_cast<unsigned>((items + 7) / 8), 256, 0, stream>>>(p);
      STEM_CUDA_CHECK_LAUNCH();
    }
  }
};

StemPlan::~StemPlan() {
  if (memory_) cudaFreeAsync(memory_, stream_);
}
StemPlan::StemPlan(StemPlan&& other) noexcept { *this = std::move(other); }
StemPlan& StemPlan::operator=(StemPlan&& other) noexcept {
  if (this != &other) {
    if (memory_) cudaFreeAsync(memory_, stream_);
    memory_ = std::exchange(other.memory_, nullptr);
    stream_ = other.stream_;
    blocks_ = std::move(other.blocks_);
    sparse_ = std::move(other.sparse_);
    at_ = other.at_;
  }
  return *this;
}

TensorView StemPlan::qblocks() const {
  if (blocks_.empty()) return TensorView();
  return TensorView(static_cast<unsigned char*>(memory_) + at_.qblocks, DType::I32, {n_qblocks(), 2});
}
TensorView StemPlan::block_offsets() const {
  if (blocks_.empty()) return TensorView();
  return TensorView(static_cast<unsigned char*>(memory_) + at_.offsets, DType::I32, {n_qblocks() * at_.q_heads + 1});
}
TensorView StemPlan::block_indices() const {
  if (blocks_.empty()) return TensorView();
  return TensorView(static_cast<unsigned char*>(memory_) + at_.indices, DType::I32, {std::max<int64_t>(at_.capacity, 1)});
}
TensorView StemPlan::estimate() const {
  if (sparse_.empty()) return TensorView();
  return TensorView(static_cast<unsigned char*>(memory_) + at_.estimate, DType::F32,
                    {static_cast<int64_t>(sparse_.size()), at_.q_heads, at_.cols});
}

namespace {

void check_host(const StemBatch& host, int64_t seqs, const StemKernelParams& params) {
  STEM_CHECK(static_cast<int64_t>(host.kv_lens.size()) == seqs && static_cast<int64_t>(host.query_start.size()) == seqs + 1,
             "stem: the host copies hold ", host.kv_lens.size(), " kv_lens and ", host.query_start.size(),
             " query_start for ", seqs, " sequences");
  check_stem_query_blocks(host.blocks, host.kv_lens, host.query_start, params);
}

}  // namespace

StemPlan stem_plan(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                   const StemBatch& host, float scale, int64_t sliding_window, const StemKernelParams& settings,
                   cudaStream_t stream, cudaEvent_t estimated) {
  const attn::AttentionShape shape =
      attn::check_attention("stem_plan", q, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  check_stem_cuda(settings, shape.head_dim);
  check_host(host, shape.seqs, settings);
  StemPlan plan = StemPlanner::prepare({host.blocks.begin(), host.blocks.end()}, host, shape.q_heads, shape.kv_heads,
                                       shape.head_dim, settings, stream);
  StemPlanner::launch(plan, q, k_cache, v_cache, page_table, kv_lens, query_start, shape, scale, settings, stream,
                      estimated);
  return plan;
}

StemStep stem_step(const StemBatch& host, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                   const StemKernelParams& settings, cudaStream_t stream) {
  check_stem_cuda(settings, head_dim);
  const int64_t seqs = static_cast<int64_t>(host.kv_lens.size());
  check_host(host, seqs, settings);
  std::vector<StemQueryBlock> blocks(host.blocks.begin(), host.blocks.end());
  std::vector<char> has_sparse(static_cast<size_t>(seqs), 0);
  for (const StemQueryBlock& b : blocks) has_sparse[b.seq] |= b.sparse ? 1 : 0;
  StemStep step;
  step.seqs = seqs;
  if (std::none_of(has_sparse.begin(), has_sparse.end(), [](char x) { return x != 0; })) return step;
  step.dense = false;
  // Sequences with few rows and nothing sparse go to the decode kernel, the rest to the lists. The
  // decode kernel takes every sequence of 1..max_rows rows, so when one of those has a sparse block
  // (a tiny last chunk that completes a block), every row goes through the lists instead: the two
  // kernels must not both write rows that the other reads when out aliases q.
  const int64_t max_rows = decode_max_rows(q_heads, kv_heads);
  auto rows_of = [&](int64_t s) { return int64_t{host.query_start[s + 1]} - host.query_start[s]; };
  bool short_sparse = false;
  for (int64_t s = 0; s < seqs; ++s) {
    const bool short_seq = rows_of(s) >= 1 && rows_of(s) <= max_rows;
    step.decode |= short_seq && !has_sparse[s];
    short_sparse |= short_seq && has_sparse[s];
  }
  step.decode &= !short_sparse;
  if (step.decode)
    std::erase_if(blocks, [&](const StemQueryBlock& b) { return !has_sparse[b.seq] && rows_of(b.seq) <= max_rows; });
  // Every planned list against its causal blocks: a dense list holds them all (from the window's
  // first block), so only the sparse ones leave any out.
  for (const StemQueryBlock& b : blocks) step.causal += b.sparse ? int64_t{b.block} + 1 : int64_t{b.block} - b.first_key + 1;
  step.causal *= q_heads;
  step.plan = StemPlanner::prepare(std::move(blocks), host, q_heads, kv_heads, head_dim, settings, stream);
  return step;
}

void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  const StemStep& step, float scale, int64_t sliding_window, const StemKernelParams& settings,
                  cudaStream_t stream, long long* skipped) {
  const attn::AttentionShape shape =
      attn::check_attention("stem_prefill", out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale,
                            sliding_window);
  STEM_CHECK(step.seqs == shape.seqs, "stem_prefill: the step was planned for ", step.seqs, " sequences, the layer has ",
             shape.seqs);
  if (step.dense) {
    paged_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream);
    return;
  }
  if (step.decode)
    paged_decode(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window, stream);
  const StemPlan& plan = step.plan;
  StemPlanner::launch(plan, q, k_cache, v_cache, page_table, kv_lens, query_start, shape, scale, settings, stream,
                      nullptr);
  block_sparse_prefill(out, q, k_cache, v_cache, page_table, kv_lens, query_start, plan.qblocks(), plan.block_offsets(),
                       plan.block_indices(), scale, sliding_window, stream);
  if (skipped && plan.n_qblocks() > 0) {
    count_skipped_kernel<<<1, 1, 0, stream>>>(plan.block_offsets().ptr<int32_t>() + plan.n_qblocks() * shape.q_heads,
                                              step.causal, skipped);
    STEM_CUDA_CHECK_LAUNCH();
  }
}

void stem_prefill(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                  const StemBatch& host, float scale, int64_t sliding_window, const StemKernelParams& settings,
                  cudaStream_t stream, long long* skipped) {
  const attn::AttentionShape shape =
      attn::check_attention("stem_prefill", out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale,
                            sliding_window);
  check_host(host, shape.seqs, settings);
  const StemStep step = stem_step(host, shape.q_heads, shape.kv_heads, shape.head_dim, settings, stream);
  stem_prefill(out, q, k_cache, v_cache, page_table, kv_lens, query_start, step, scale, sliding_window, settings,
               stream, skipped);
}

}  // namespace stem::cuda
