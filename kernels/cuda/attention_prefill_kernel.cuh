// The block-sparse prefill kernel (FA2-style): a CTA of four warps owns one (query block of 128
// rows, query head); each warp owns 32 rows (two m16 tiles, so every K/V fragment it reads from
// shared memory feeds two MMAs). Q stays in shared memory; K/V arrive in 64-key tiles through a
// two-stage cp.async pipeline from the paged cache; scores and the output accumulate in fp32
// registers with an online (running max) softmax in the log2 domain.
#pragma once
#include <cmath>

#include "kernels/cuda/attention_mma.cuh"

namespace stem::cuda::attn {

struct PrefillParams {
  bf16* out;
  const bf16* q;
  PagedKv kv;
  const int32_t* kv_lens;
  const int32_t* query_start;
  const int32_t* qblocks;       // [n_qblocks, 2]: (sequence, query block)
  const int32_t* qblock_count;  // device count of qblocks (router), or nullptr: n_qblocks is exact
  int32_t* work_counter;        // zeroed before the launch; CTAs take items from it
  const int32_t* block_offsets;  // nullptr: dense causal lists
  const int32_t* block_indices;
  int64_t q_stride, out_stride;  // elements between consecutive tokens' rows
  int32_t n_qblocks, q_heads, group, list_cap, window;
  float scale_log2;  // scale · log2(e): scores go straight to exp2
};

// Shared memory: the Q tile, two stages of K and V tiles, then the CTA's block list.
template <int D>
constexpr int prefill_smem_bytes(int list_cap) {
  return (kBlock * D + 4 * kTileKeys * D) * 2 + ((list_cap * 4 + 15) / 16) * 16;
}

// One 64-key tile for one warp's 32 rows: S = Q·Kᵀ, mask, online softmax, O += P·V.
// pos0: the absolute position of the warp's first row.
template <int D>
__device__ __forceinline__ void attend_tile(float (&o)[2][D / 8][4], float (&row_max)[2][2], float (&row_sum)[2][2],
                                            uint32_t q_base, uint32_t k_base, uint32_t v_base, int warp, int lane,
                                            int k0, int pos0, bool need_mask, int window, float scale_log2) {
  float s[2][8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.f;

#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      ldmatrix_x4(a[mt], q_base + tile_offset<D>(warp * 32 + mt * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
    for (int nn = 0; nn < 4; ++nn) {
      uint32_t b[4];
      ldmatrix_x4(b, k_base + tile_offset<D>(nn * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma_bf16(s[mt][2 * nn], a[mt], b[0], b[1]);
        mma_bf16(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
      }
    }
  }

  if (need_mask) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qpos = pos0 + mt * 16 + (lane >> 2) + ((e >> 1) << 3);
          const int kpos = k0 + n * 8 + ((lane & 3) << 1) + (e & 1);
          if (kpos > qpos || (window > 0 && qpos - kpos >= window)) s[mt][n][e] = -INFINITY;
        }
  }

  // Online softmax: each thread holds rows lane/4 and lane/4 + 8 of each m tile (hf picks one);
  // the four threads of a quad share a row. Sums stay per thread until the end. The running max
  // is lazy: exponents are taken against a max that may trail the true one by up to
  // kRescaleSlack (weights up to 2^8, harmless in fp32), so the output accumulator (128 registers)
  // is rescaled only when some row of the warp outgrows that, which after the first tiles is rare.
  constexpr float kRescaleSlack = 8.f;
  float tile_max[2][2];
  bool grow = false;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * hf], s[mt][n][2 * hf + 1]));
      tile_max[mt][hf] = quad_max(mx) * scale_log2;
      grow |= tile_max[mt][hf] > row_max[mt][hf] + kRescaleSlack;  // −inf rows: any finite max grows
    }
  if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float new_max = fmaxf(row_max[mt][hf], tile_max[mt][hf]);
        // A row that has seen no visible key yet keeps max −inf; subtracting 0 keeps exp2 finite.
        const float alpha = fast_exp2(row_max[mt][hf] - (new_max == -INFINITY ? 0.f : new_max));
        row_max[mt][hf] = new_max;
        row_sum[mt][hf] *= alpha;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          o[mt][dn][2 * hf] *= alpha;
          o[mt][dn][2 * hf + 1] *= alpha;
        }
      }
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float base = row_max[mt][hf] == -INFINITY ? 0.f : row_max[mt][hf];
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
          const float pv = fast_exp2(fmaf(s[mt][n][e], scale_log2, -base));
          s[mt][n][e] = pv;
          sum += pv;
        }
      row_sum[mt][hf] += sum;
    }

  // O += P·V: the score fragment of keys 16kk..16kk+15 is already the A fragment's layout.
#pragma unroll
  for (int kk = 0; kk < kTileKeys / 16; ++kk) {
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_base + tile_offset<D>(kk * 16 + (lane & 15), 2 * dn + (lane >> 4)));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma_bf16(o[mt][2 * dn], a[mt], b[0], b[1]);
        mma_bf16(o[mt][2 * dn + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// One (query block, head) work item.
template <int D>
__device__ __forceinline__ void prefill_item(const PrefillParams& p, int qb, int h, unsigned char* smem) {
  constexpr int kChunks = D / 8;
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_k = s_q + kBlock * D;          // [2][kTileKeys·D]
  bf16* s_v = s_k + 2 * kTileKeys * D;   // [2][kTileKeys·D]
  int* s_list = reinterpret_cast<int*>(s_v + 2 * kTileKeys * D);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int seq = p.qblocks[2 * qb], blk = p.qblocks[2 * qb + 1];
  const int kv_len = p.kv_lens[seq];
  const int row_begin = p.query_start[seq];
  const int first_pos = kv_len - (p.query_start[seq + 1] - row_begin);  // position of the first row
  const int q_lo = max(blk * kBlock, first_pos), q_hi = min(blk * kBlock + kBlock, kv_len);
  if (q_lo >= q_hi) return;  // a block outside this step's rows: nothing to write
  const int g = h / p.group;

  int count, j_first = 0;
  const int32_t* list = nullptr;
  if (p.block_offsets != nullptr) {
    const int at = qb * p.q_heads + h, begin = p.block_offsets[at];
    count = p.block_offsets[at + 1] - begin;
    list = p.block_indices + begin;
  } else {
    j_first = p.window > 0 ? max(0, q_lo - p.window + 1) / kBlock : 0;
    count = blk - j_first + 1;
  }
  count = max(0, min(count, p.list_cap));
  for (int t = tid; t < count; t += kThreads) s_list[t] = list != nullptr ? __ldg(list + t) : j_first + t;

  // The Q tile; rows outside [q_lo, q_hi) are zeros and never written back.
  for (int r = tid / kChunks; r < kBlock; r += kThreads / kChunks) {
    const int pos = blk * kBlock + r, chunk = tid % kChunks;
    const bool valid = pos >= q_lo && pos < q_hi;
    const bf16* src = valid ? p.q + static_cast<int64_t>(row_begin + pos - first_pos) * p.q_stride + h * D + chunk * 8 : p.q;
    cp_async_16(smem_u32(s_q) + tile_offset<D>(r, chunk), src, valid);
  }
  cp_async_commit();
  __syncthreads();  // s_list

  const int n_tiles = 2 * count;
  const int32_t* table_row = p.kv.page_table + static_cast<int64_t>(seq) * p.kv.max_pages;
  auto tile_k0 = [&](int t) { return s_list[t >> 1] * kBlock + (t & 1) * kTileKeys; };
  KvTileLoader<D> loader(tid);
  if (n_tiles > 0) {
    loader.fetch_page(p.kv, table_row, tile_k0(0), kv_len);
    loader.issue(p.kv, table_row, g, tile_k0(0), kv_len, s_k, s_v);
  }
  cp_async_commit();
  if (n_tiles > 1) loader.fetch_page(p.kv, table_row, tile_k0(1), kv_len);

  // The warp's valid rows are positions [warp_lo, warp_hi]; a tile none of them sees is skipped.
  const int pos0 = blk * kBlock + warp * 32;
  const int warp_lo = max(pos0, q_lo), warp_hi = min(pos0 + 32, q_hi) - 1;

  float o[2][D / 8][4], row_max[2][2], row_sum[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dn][e] = 0.f;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      row_max[mt][hf] = -INFINITY;
      row_sum[mt][hf] = 0.f;
    }
  }

  for (int t = 0; t < n_tiles; ++t) {
    const int k0 = tile_k0(t), stage = t & 1;
    if (t + 1 < n_tiles) {
      const int next = (t + 1) & 1;
      loader.issue(p.kv, table_row, g, tile_k0(t + 1), kv_len, s_k + next * kTileKeys * D, s_v + next * kTileKeys * D);
    }
    cp_async_commit();
    if (t + 2 < n_tiles) loader.fetch_page(p.kv, table_row, tile_k0(t + 2), kv_len);
    cp_async_wait<1>();  // everything but the tile just issued
    __syncthreads();
    const bool visible = warp_lo <= warp_hi && k0 <= warp_hi &&
                         (p.window <= 0 || k0 + kTileKeys - 1 > warp_lo - p.window);
    if (visible) {
      const bool need_mask = k0 + kTileKeys - 1 > warp_lo || (p.window > 0 && warp_hi - k0 >= p.window);
      attend_tile<D>(o, row_max, row_sum, smem_u32(s_q), smem_u32(s_k + stage * kTileKeys * D),
                     smem_u32(s_v + stage * kTileKeys * D), warp, lane, k0, pos0, need_mask, p.window, p.scale_log2);
    }
    __syncthreads();  // the stage is refilled by the next iteration's issue
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float l = quad_sum(row_sum[mt][hf]);
      const float inv = l > 0.f ? 1.f / l : 0.f;  // an empty list gives zeros, not NaN
      const int pos = pos0 + mt * 16 + (lane >> 2) + hf * 8;
      if (pos < q_lo || pos >= q_hi) continue;
      bf16* dst = p.out + static_cast<int64_t>(row_begin + pos - first_pos) * p.out_stride + h * D + ((lane & 3) << 1);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<uint32_t*>(dst + dn * 8) = pack_bf16(o[mt][dn][2 * hf] * inv, o[mt][dn][2 * hf + 1] * inv);
    }
}

// Work items are (query block, head), heads fastest so that the heads sharing a KV head run side
// by side and share K/V through L2. The grid is persistent (a wave of CTAs) and each CTA takes the
// next item from a zeroed counter: that keeps the plan's longest-first order exactly and balances
// the tail, which measured 10% faster than one CTA per item at 128K (the hardware's CTA order is
// not the plan's). The router's count of items is known only on the device, which this also serves.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) prefill_kernel(const __grid_constant__ PrefillParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int next_item;
  const int n_qblocks = p.qblock_count != nullptr ? min(*p.qblock_count, p.n_qblocks) : p.n_qblocks;
  const int n_items = n_qblocks * p.q_heads;
  for (;;) {
    if (threadIdx.x == 0) next_item = atomicAdd(p.work_counter, 1);
    __syncthreads();
    const int item = next_item;
    if (item >= n_items) return;
    prefill_item<D>(p, item / p.q_heads, item % p.q_heads, smem);
    __syncthreads();  // next_item and shared memory are reused by the next item
  }
}

}  // namespace stem::cuda::attn
