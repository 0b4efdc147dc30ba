// The consumer warpgroups of the Hopper prefill kernel: 64 query rows each, S = Q·Kᵀ and O += P·V
// with wgmma, masking and the online softmax in registers.
//
// Fragments (wgmma m64n128 accumulator, per thread): s[4·j + e] is row 16·warp + lane/4 + 8·(e/2)
// of the warpgroup's 64, column 8·j + 2·(lane % 4) + e % 2. Two adjacent n8 blocks of that are
// exactly the A fragment of a k16 step, so P goes from the S accumulator to the P·V operand
// without leaving the thread.
#pragma once
#include <cmath>

#include "kernels/cuda/attention_prefill_sm90_layout.cuh"

namespace stem::cuda::sm90 {

#if STEM_SM90A_DEVICE

// Masks one 64×128 score fragment: keys after the row's position, or a window or more behind it.
// A select, never arithmetic: keys past kv_len may have read NaN.
__device__ __forceinline__ void mask_scores(float (&s)[64], int row_pos0, int k0, int lane, int window) {
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qpos = row_pos0 + (lane >> 2) + ((e >> 1) << 3);
      const int kpos = k0 + 8 * j + ((lane & 3) << 1) + (e & 1);
      if (kpos > qpos || (window > 0 && qpos - kpos >= window)) s[4 * j + e] = -INFINITY;
    }
}

// Online softmax over one tile, log2 domain, with the mma.sync kernel's lazy max: the running max
// may trail the true one by up to 2^8 before it moves, so O is rescaled only when a row of the warp
// outgrows it (after the first tiles, rarely). Leaves P in s and each row's tile sum in sum; when
// it returns true the caller must scale O and the running sums by alpha (it may do so later, once
// a P·V still reading O has finished).
__device__ __forceinline__ bool softmax_scores(float (&s)[64], float (&row_max)[2], float scale_log2,
                                               float (&alpha)[2], float (&sum)[2]) {
  constexpr float kRescaleSlack = 8.f;
  float tile_max[2];
  bool grow = false;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    // A tree, not a chain: 5 dependent steps instead of 16 (the softmax is latency-bound).
    float m[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) m[j] = fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]);
#pragma unroll
    for (int j = 0; j < 8; ++j) m[j] = fmaxf(m[j], m[j + 8]);
#pragma unroll
    for (int j = 0; j < 4; ++j) m[j] = fmaxf(m[j], m[j + 4]);
    m[0] = fmaxf(fmaxf(m[0], m[2]), fmaxf(m[1], m[3]));
    tile_max[hf] = attn::quad_max(m[0]) * scale_log2;
    grow |= tile_max[hf] > row_max[hf] + kRescaleSlack;  // a −inf max: any finite tile max grows it
    alpha[hf] = 1.f;
  }
  const bool any = __any_sync(0xffffffffu, grow);
  if (any) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float new_max = fmaxf(row_max[hf], tile_max[hf]);
      alpha[hf] = attn::fast_exp2(row_max[hf] - (new_max == -INFINITY ? 0.f : new_max));
      row_max[hf] = new_max;
    }
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float base = row_max[hf] == -INFINITY ? 0.f : row_max[hf];
    float acc[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: four short chains, not one long one
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
        const float pv = attn::fast_exp2(fmaf(s[4 * j + e], scale_log2, -base));
        s[4 * j + e] = pv;
        acc[(2 * j + e) & 3] += pv;
      }
    sum[hf] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  return any;
}

__device__ __forceinline__ void rescale(float (&o)[64], float (&row_sum)[2], const float (&alpha)[2], bool grow,
                                        const float (&sum)[2]) {
  if (grow) {
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * j + e] *= alpha[e >> 1];
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) row_sum[hf] = row_sum[hf] * alpha[hf] + sum[hf];
}

__device__ __forceinline__ void pack_p(const float (&s)[64], uint32_t (&a)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    a[kk][0] = attn::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    a[kk][1] = attn::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    a[kk][2] = attn::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    a[kk][3] = attn::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Zeroes the V rows at or past kv_len (row z0 on) of a stage, both column halves, then makes the
// zeros visible to this warpgroup's wgmma. Under the 128-byte swizzle a row keeps its 128 bytes in
// place, so whole rows are zeroed without unswizzling. Both consumers may do this for one stage;
// they write the same zeros.
__device__ __forceinline__ void zero_v_tail(uint32_t v_stage, int z0, int t128, int wg) {
  for (int c = t128; c < 2 * kBlock * 8; c += 128) {
    const int half = c >> 10, r = (c >> 3) & (kBlock - 1), piece = c & 7;
    if (r >= z0) {
      const uint32_t addr = v_stage + half * kHalfBytes + r * 128 + piece * 16;
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
    }
  }
  fence_proxy_async();
  named_barrier_sync(1 + wg, 128);
}

// Issues S = Q·Kᵀ (64 rows × 128 keys, k = 128 dims) as one wgmma group.
__device__ __forceinline__ void issue_qk(float (&s)[64], uint32_t q_base, uint32_t k_stage) {
  constexpr uint32_t kHi = desc_hi(1024);
  const uint32_t q_lo = desc_lo(q_base, 16), k_lo = desc_lo(k_stage, 16);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    const uint32_t col = (ks >> 2) * kHalfBytes + (ks & 3) * 32;
    wgmma_m64n128k16_ss(s, desc_make(desc_step(q_lo, col), kHi), desc_make(desc_step(k_lo, col), kHi), ks > 0);
  }
  wgmma_commit();
}

// Issues O += P·V (k = 128 keys) as one wgmma group.
__device__ __forceinline__ void issue_pv(float (&o)[64], uint32_t (&a)[8][4], uint32_t v_stage) {
  constexpr uint32_t kHi = desc_hi(1024);
  const uint32_t v_lo = desc_lo(v_stage, kHalfBytes);
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[kk][i])::"memory");
  reg_fence(o);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) wgmma_m64n128k16_rs(o, a[kk], desc_make(desc_step(v_lo, kk * 16 * 128), kHi));
  wgmma_commit();
}

// Where a consumer warpgroup is in one item.
struct ItemRows {
  int wg_lo, wg_hi;  // the valid positions among its 64 rows (empty when wg_lo > wg_hi)
  int row_pos0;      // position of this warp's first row
};

// A tile's key block, read once its K has landed.
__device__ __forceinline__ int tile_k0(const int* s_tile_block, int stage) { return s_tile_block[stage] * kBlock; }

// The ring slots (and the phases to wait for) of a consumer's iter-th tile: K and V rings may
// differ in depth.
struct Slot {
  int k, k_phase, v, v_phase;
};
template <class C>
__device__ __forceinline__ Slot slot_of(int iter) {
  return {iter % C::kKStages, (iter / C::kKStages) & 1, iter % C::kVStages, (iter / C::kVStages) & 1};
}

__device__ __forceinline__ bool needs_mask(const ItemRows& r, int k0, int window) {
  return k0 + kBlock - 1 > r.wg_lo || (window > 0 && r.wg_hi - k0 >= window);
}

// Hands a ring slot (or Q buffer) back: one arrival per consumer warp, after its reads are done.
__device__ __forceinline__ void release(uint32_t bar, int lane) {
  __syncwarp();
  if (lane == 0) mbar_arrive(bar);
}

// One item, GEMMs and softmax strictly in turn; tiles none of the rows see are skipped.
template <class C>
__device__ __forceinline__ void consume_serial(const PrefillParams& p, const ItemInfo& info, const ItemRows& r,
                                               uint32_t smem, uint32_t q_base, const typename C::Bars& bars,
                                               const int* s_tile_block, int& iter, float (&o)[64],
                                               float (&row_sum)[2], int t128, int wg) {
  using L = typename C::Layout;
  const int lane = t128 & 31;
  float row_max[2] = {-INFINITY, -INFINITY};
  for (int t = 0; t < info.count; ++t) {
    const Slot sl = slot_of<C>(iter++);
    mbar_wait(bars.full_k(sl.k), sl.k_phase);
    const int k0 = tile_k0(s_tile_block, sl.k);
    const bool visible =
        r.wg_lo <= r.wg_hi && k0 <= r.wg_hi && (p.window <= 0 || k0 + kBlock - 1 > r.wg_lo - p.window);
    const uint32_t v_stage = smem + L::kV + sl.v * kTileBytes;
    uint32_t a[8][4];
    if (visible) {
      float s[64];
      reg_fence(o);
      issue_qk(s, q_base, smem + L::kK + sl.k * kTileBytes);
      wgmma_wait<0>();
      reg_fence(s);
      release(bars.empty_k(sl.k), lane);
      if (needs_mask(r, k0, p.window)) mask_scores(s, r.row_pos0, k0, lane, p.window);
      float alpha[2], sum[2];
      const bool grow = softmax_scores(s, row_max, p.scale_log2, alpha, sum);
      rescale(o, row_sum, alpha, grow, sum);
      pack_p(s, a);
    } else {
      release(bars.empty_k(sl.k), lane);
    }
    // Every warp waits for V, seen or not: the slot goes back only once its copy has landed, or
    // the producer's next expect_tx would fall into this phase.
    mbar_wait(bars.full_v(sl.v), sl.v_phase);
    if (visible) {
      if (k0 + kBlock > info.kv_len) zero_v_tail(v_stage, info.kv_len - k0, t128, wg);
      issue_pv(o, a, v_stage);
      wgmma_wait<0>();
      reg_fence(o);
    }
    release(bars.empty_v(sl.v), lane);
  }
}

// The ping-pong turn between the two consumers (named barriers 3 and 4, both warpgroups counted):
// a consumer waits for its turn before issuing a batch of GEMMs and passes the turn on after.
// Consumer 1 hands consumer 0 the first turn; consumer 0 takes one last turn at exit, so every
// arrival is matched.
constexpr int kTurnBarrier = 3;
__device__ __forceinline__ void turn_wait(int wg) { named_barrier_sync(kTurnBarrier + wg, 256); }
__device__ __forceinline__ void turn_pass(int wg) { named_barrier_arrive(kTurnBarrier + (wg ^ 1), 256); }

// One item with S(t) issued ahead of P·V(t − 1): the softmax of tile t runs while the tensor cores
// do P·V(t − 1), and O is rescaled only after that has finished. Every tile is computed (a tile
// the rows do not see comes out all masked); a warpgroup without valid rows only keeps the ring
// (and the turns) moving. V rows past kv_len are zeroed whenever a tile holds them, since P = 0
// there still multiplies them. The first tile is peeled off so that every wgmma wait sits on a
// path all threads take: ptxas serialises the wgmmas (C7518) when it must add waits on divergent
// paths. With kTurns, each batch of GEMMs (S(0); S(t) with P·V(t − 1); the last P·V) is one turn.
template <class C>
__device__ __forceinline__ void consume_pipelined(const PrefillParams& p, const ItemInfo& info, const ItemRows& r,
                                                  uint32_t smem, uint32_t q_base, const typename C::Bars& bars,
                                                  const int* s_tile_block, int& iter, float (&o)[64],
                                                  float (&row_sum)[2], int t128, int wg) {
  constexpr bool kTurns = C::kSchedule == Schedule::kPingPong;
  using L = typename C::Layout;
  const int lane = t128 & 31;
  if (info.count == 0) return;
  if (r.wg_lo > r.wg_hi) {
    for (int t = 0; t < info.count; ++t) {
      const Slot sl = slot_of<C>(iter++);
      mbar_wait(bars.full_k(sl.k), sl.k_phase);
      release(bars.empty_k(sl.k), lane);
      mbar_wait(bars.full_v(sl.v), sl.v_phase);
      release(bars.empty_v(sl.v), lane);
      if constexpr (kTurns) {
        turn_wait(wg);
        turn_pass(wg);
      }
    }
    if constexpr (kTurns) {  // the turn of the last P·V
      turn_wait(wg);
      turn_pass(wg);
    }
    return;
  }
  float row_max[2] = {-INFINITY, -INFINITY};
  uint32_t a[8][4];
  // Tile 0: S, softmax, P; its P·V goes out with the next tile's S.
  Slot prev = slot_of<C>(iter++);
  mbar_wait(bars.full_k(prev.k), prev.k_phase);
  int prev_k0 = tile_k0(s_tile_block, prev.k);
  {
    float s[64];
    reg_fence(o);
    if constexpr (kTurns) turn_wait(wg);
    issue_qk(s, q_base, smem + L::kK + prev.k * kTileBytes);
    if constexpr (kTurns) turn_pass(wg);
    wgmma_wait<0>();
    reg_fence(s);
    release(bars.empty_k(prev.k), lane);
    if (needs_mask(r, prev_k0, p.window)) mask_scores(s, r.row_pos0, prev_k0, lane, p.window);
    float alpha[2], sum[2];
    const bool grow = softmax_scores(s, row_max, p.scale_log2, alpha, sum);
    rescale(o, row_sum, alpha, grow, sum);
    pack_p(s, a);
  }
  for (int t = 1; t < info.count; ++t) {
    const Slot sl = slot_of<C>(iter++);
    const uint32_t v_prev = smem + L::kV + prev.v * kTileBytes;
    mbar_wait(bars.full_v(prev.v), prev.v_phase);
    if (prev_k0 + kBlock > info.kv_len) zero_v_tail(v_prev, info.kv_len - prev_k0, t128, wg);
    mbar_wait(bars.full_k(sl.k), sl.k_phase);
    const int k0 = tile_k0(s_tile_block, sl.k);
    float s[64];
    reg_fence(o);
    if constexpr (kTurns) turn_wait(wg);
    issue_qk(s, q_base, smem + L::kK + sl.k * kTileBytes);
    issue_pv(o, a, v_prev);
    if constexpr (kTurns) turn_pass(wg);
    wgmma_wait<1>();  // S(t) done; P·V(t − 1) may still run
    reg_fence(s);
    release(bars.empty_k(sl.k), lane);
    if (needs_mask(r, k0, p.window)) mask_scores(s, r.row_pos0, k0, lane, p.window);
    float alpha[2], sum[2];
    const bool grow = softmax_scores(s, row_max, p.scale_log2, alpha, sum);
    wgmma_wait<0>();
    reg_fence(o);
    release(bars.empty_v(prev.v), lane);
    rescale(o, row_sum, alpha, grow, sum);
    pack_p(s, a);
    prev = sl;
    prev_k0 = k0;
  }
  const uint32_t v_prev = smem + L::kV + prev.v * kTileBytes;
  mbar_wait(bars.full_v(prev.v), prev.v_phase);
  if (prev_k0 + kBlock > info.kv_len) zero_v_tail(v_prev, info.kv_len - prev_k0, t128, wg);
  if constexpr (kTurns) turn_wait(wg);
  issue_pv(o, a, v_prev);
  if constexpr (kTurns) turn_pass(wg);
  wgmma_wait<0>();
  reg_fence(o);
  release(bars.empty_v(prev.v), lane);
}

// The consumer loop: items as the producer announces them, then the normalised rows written out.
template <class C>
__device__ __forceinline__ void consumer(const PrefillParams& p, uint32_t smem, const typename C::Bars& bars,
                                         const ItemInfo* s_info, const int* s_tile_block) {
  constexpr bool kTurns = C::kSchedule == Schedule::kPingPong;
  using L = typename C::Layout;
  const int wg = static_cast<int>(threadIdx.x) / 128 - 1;
  const int t128 = threadIdx.x & 127, warp = t128 >> 5, lane = t128 & 31;
  if (kTurns && wg == 1) turn_pass(wg);  // consumer 0 takes the first turn
  int iter = 0, q_iter = 0;
  for (;;) {
    const int b = q_iter % C::kQBuffers;
    mbar_wait(bars.q_full(b), (q_iter / C::kQBuffers) & 1);
    ++q_iter;
    const ItemInfo info = s_info[b];
    if (info.item < 0) break;
    const uint32_t q_base = smem + L::kQ + b * kTileBytes + wg * 64 * 128;  // this warpgroup's rows
    const int pos0 = info.blk * kBlock + wg * 64;
    const ItemRows r{max(pos0, info.q_lo), min(pos0 + 64, info.q_hi) - 1, pos0 + warp * 16};

    float o[64], row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    if constexpr (C::kSchedule == Schedule::kSerial)
      consume_serial<C>(p, info, r, smem, q_base, bars, s_tile_block, iter, o, row_sum, t128, wg);
    else
      consume_pipelined<C>(p, info, r, smem, q_base, bars, s_tile_block, iter, o, row_sum, t128, wg);
    release(bars.q_empty(b), lane);

#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float l = attn::quad_sum(row_sum[hf]);
      const float inv = l > 0.f ? 1.f / l : 0.f;  // an empty list gives zeros, not NaN
      const int pos = r.row_pos0 + (lane >> 2) + hf * 8;
      if (pos < info.q_lo || pos >= info.q_hi) continue;
      bf16* dst = p.out + static_cast<int64_t>(info.q_row0 + pos - info.blk * kBlock) * p.out_stride +
                  info.h * kHeadDim + ((lane & 3) << 1);
#pragma unroll
      for (int j = 0; j < 16; ++j)
        *reinterpret_cast<uint32_t*>(dst + 8 * j) = attn::pack_bf16(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
    }
  }
  if (kTurns && wg == 0) turn_wait(wg);  // consumer 1's last hand-over
}

#endif  // STEM_SM90A_DEVICE

}  // namespace stem::cuda::sm90
