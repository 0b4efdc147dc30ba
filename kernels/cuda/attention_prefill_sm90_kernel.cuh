// The Hopper (sm_90a) block-sparse prefill kernel for head dim 128: warp-specialised, wgmma + TMA.
//
// A CTA of three warpgroups runs on a persistent grid and takes (query block, head) items from the
// same atomic counter as the mma.sync kernel (attention_prefill_kernel.cuh), in the plan's order.
//  * Warpgroup 0 is the producer; one or two warps of it do the work (40 registers, setmaxnreg).
//    Per item the first loads the 128×128 Q tile with TMA, then for every listed key block one K
//    tile (128 keys × 128 dims) into a ring of C::kKStages slots, and one V tile into a ring of
//    C::kVStages — or the second warp loads the V tiles (C::kSplitV). The cache is paged, so a
//    tile is one TMA box per page per 64-column half (lane i of the warp copies page i), each
//    completing on the slot's mbarrier; K and V slots are freed separately.
//  * Warpgroups 1 and 2 are consumers (attention_prefill_sm90_consumer.cuh), 64 query rows each,
//    232 registers: S = Q·Kᵀ with wgmma m64n128k16 (both operands in shared memory), mask and
//    online softmax in registers, then O += P·V with P in registers as wgmma's A operand. While
//    one consumer does its softmax the other's GEMMs keep the tensor cores busy; the pipelined
//    schedules also overlap a consumer's own softmax with its previous P·V, and ping-pong makes
//    the two take turns at the GEMMs.
// Shared tiles use TMA's 128-byte swizzle: [rows][64] column halves of 128-byte rows, which is the
// layout wgmma's descriptors name (K-major for Q and K, MN-major for V).
// Cache slots past kv_len may hold anything (NaN): their scores are replaced by −inf (a select,
// never arithmetic), and the V rows past kv_len are zeroed in shared memory before P·V, since
// 0 · NaN would still be NaN.
#pragma once
#include "kernels/cuda/attention_prefill_sm90_consumer.cuh"
#include "kernels/cuda/attention_prefill_sm90_layout.cuh"

namespace stem::cuda::sm90 {

#if STEM_SM90A_DEVICE

// The producer warp(s). Per item: the Q tile, then each listed key block's K and V tiles into the
// ring (lane i copies page i of a block; one TMA box per page per 64-column half). role 0 takes
// the items from the work counter and loads Q and K (and V, unless C::kSplitV); role 1 (kSplitV)
// follows the items the consumers are given and loads their V tiles.
template <class C>
__device__ __forceinline__ void producer(const PrefillParams& p, const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                         const CUtensorMap* tm_v, uint32_t smem, const typename C::Bars& bars,
                                         ItemInfo* s_info, int* s_tile_block, int role) {
  using L = typename C::Layout;
  const int lane = threadIdx.x & 31;
  const int n_qblocks = p.qblock_count != nullptr ? min(*p.qblock_count, p.n_qblocks) : p.n_qblocks;
  const int n_items = n_qblocks * p.q_heads;
  const int page_size = p.kv.page_size, log2_page = p.kv.log2_page;
  const int pages_per_block = kBlock >> log2_page;  // ≤ 16: page_size ≥ 8 on this path
  int k_iter = 0, v_iter = 0, q_iter = 0;

  // The Q tile and item record of buffer q_iter % kQBuffers, once the consumers are done with the
  // item that used it last.
  auto load_q = [&](const ItemInfo& info) {
    const int b = q_iter % C::kQBuffers;
    mbar_wait(bars.q_empty(b), ((q_iter / C::kQBuffers) & 1) ^ 1);
    if (lane == 0) {
      s_info[b] = info;
      if (info.item < 0) {
        mbar_arrive(bars.q_full(b));
      } else {
        mbar_arrive_expect_tx(bars.q_full(b), kTileBytes);
        const uint32_t q_dst = smem + L::kQ + b * kTileBytes;
        tma_load_3d(q_dst, tm_q, bars.q_full(b), 0, info.h, info.q_row0);
        tma_load_3d(q_dst + kHalfBytes, tm_q, bars.q_full(b), 64, info.h, info.q_row0);
      }
    }
    ++q_iter;
  };
  // Key block j of the tile, and this lane's page of it as a cache row. Pages wholly past kv_len
  // are not in the page table: they copy slot row 0 instead (any real row; the consumers mask and
  // zero what lies past kv_len).
  struct TileSrc {
    int j, row;
  };
  auto tile_src = [&](const ItemInfo& info, int t) {
    TileSrc src{info.list_at >= 0 ? __ldg(p.block_indices + info.list_at + t) : info.j_first + t, 0};
    const int tok = src.j * kBlock + lane * page_size;
    if (lane < pages_per_block && tok < info.kv_len)
      src.row = __ldg(p.kv.page_table + static_cast<int64_t>(info.seq) * p.kv.max_pages + (tok >> log2_page))
                << log2_page;
    return src;
  };
  auto issue_k = [&](const TileSrc& src, int g) {
    const int stage = k_iter % C::kKStages;
    mbar_wait(bars.empty_k(stage), ((k_iter / C::kKStages) & 1) ^ 1);
    if (lane == 0) {
      s_tile_block[stage] = src.j;
      mbar_arrive_expect_tx(bars.full_k(stage), kTileBytes);
    }
    __syncwarp();
    if (lane < pages_per_block) {
      const uint32_t dst = smem + L::kK + stage * kTileBytes + lane * page_size * 128;
      tma_load_3d(dst, tm_k, bars.full_k(stage), 0, g, src.row);
      tma_load_3d(dst + kHalfBytes, tm_k, bars.full_k(stage), 64, g, src.row);
    }
    ++k_iter;
  };
  auto issue_v = [&](const TileSrc& src, int g) {
    const int stage = v_iter % C::kVStages;
    mbar_wait(bars.empty_v(stage), ((v_iter / C::kVStages) & 1) ^ 1);
    if (lane == 0) mbar_arrive_expect_tx(bars.full_v(stage), kTileBytes);
    __syncwarp();
    if (lane < pages_per_block) {
      const uint32_t dst = smem + L::kV + stage * kTileBytes + lane * page_size * 128;
      tma_load_3d(dst, tm_v, bars.full_v(stage), 0, g, src.row);
      tma_load_3d(dst + kHalfBytes, tm_v, bars.full_v(stage), 64, g, src.row);
    }
    ++v_iter;
  };

  if (role == 1) {  // the V warp (kSplitV): the items as the consumers see them, V tiles only
    for (int q_seen = 0;; ++q_seen) {
      const int b = q_seen % C::kQBuffers;
      mbar_wait(bars.q_full(b), (q_seen / C::kQBuffers) & 1);
      const ItemInfo info = s_info[b];
      if (info.item < 0) return;
      const int g = info.h / p.group;
      for (int t = 0; t < info.count; ++t) issue_v(tile_src(info, t), g);
    }
  }
  for (;;) {
    int item = 0;
    if (lane == 0) item = atomicAdd(p.work_counter, 1);
    item = __shfl_sync(0xffffffffu, item, 0);
    if (item >= n_items) {
      load_q(ItemInfo{-1, 0, 0, 0, 0, 0, 0, 0, 0, -1, 0});
      return;
    }
    const int qb = item / p.q_heads, h = item % p.q_heads;
    const int seq = p.qblocks[2 * qb], blk = p.qblocks[2 * qb + 1];
    const int kv_len = p.kv_lens[seq], row_begin = p.query_start[seq];
    const int first_pos = kv_len - (p.query_start[seq + 1] - row_begin);
    const int q_lo = max(blk * kBlock, first_pos), q_hi = min(blk * kBlock + kBlock, kv_len);
    if (q_lo >= q_hi) continue;  // a block outside this step's rows: nobody waits for it
    int count, j_first = 0, list_at = -1;
    if (p.block_offsets != nullptr) {
      const int at = qb * p.q_heads + h;
      list_at = p.block_offsets[at];
      count = p.block_offsets[at + 1] - list_at;
    } else {
      j_first = p.window > 0 ? max(0, q_lo - p.window + 1) / kBlock : 0;
      count = blk - j_first + 1;
    }
    count = max(0, min(count, p.list_cap));
    const ItemInfo info{item, h,   blk, q_lo,    q_hi, kv_len, count, row_begin + blk * kBlock - first_pos,
                        seq,  list_at, j_first};
    const int g = h / p.group;
    load_q(info);
    for (int t = 0; t < count; ++t) {
      const TileSrc src = tile_src(info, t);
      issue_k(src, g);
      if constexpr (!C::kSplitV) issue_v(src, g);
    }
  }
}

#endif  // STEM_SM90A_DEVICE

// The grid is persistent: one CTA per SM (the tiles take 197 to 225 KB of shared memory).
template <class C>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_sm90_kernel(const __grid_constant__ PrefillParams p, const __grid_constant__ CUtensorMap tm_q,
                        const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v) {
#if STEM_SM90A_DEVICE
  using L = typename C::Layout;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t smem = (raw + 1023) & ~1023u;
  unsigned char* base = smem_raw + (smem - raw);
  const typename C::Bars bars{smem + L::kBars};
  auto* s_info = reinterpret_cast<ItemInfo*>(base + L::kInfo);
  auto* s_tile_block = reinterpret_cast<int*>(base + L::kTileBlock);
  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kKStages; ++s) {
      mbar_init(bars.full_k(s), 1);
      mbar_init(bars.empty_k(s), kConsumerWarps);
    }
    for (int s = 0; s < C::kVStages; ++s) {
      mbar_init(bars.full_v(s), 1);
      mbar_init(bars.empty_v(s), kConsumerWarps);
    }
    for (int b = 0; b < C::kQBuffers; ++b) {
      mbar_init(bars.q_full(b), 1);
      mbar_init(bars.q_empty(b), kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to the TMA unit
    tma_prefetch_descriptor(&tm_q);
    tma_prefetch_descriptor(&tm_k);
    tma_prefetch_descriptor(&tm_v);
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    regs_decrease<kProducerRegs>();
    const int warp = threadIdx.x / 32;
    if (warp == 0 || (C::kSplitV && warp == 1)) producer<C>(p, &tm_q, &tm_k, &tm_v, smem, bars, s_info, s_tile_block, warp);
  } else {
    regs_increase<kConsumerRegs>();
    consumer<C>(p, smem, bars, s_info, s_tile_block);
  }
#endif
}

}  // namespace stem::cuda::sm90
