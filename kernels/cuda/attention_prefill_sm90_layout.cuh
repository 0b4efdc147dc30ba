// Shapes, shared-memory layout and barriers of the Hopper prefill kernel
// (attention_prefill_sm90_kernel.cuh), shared by its producer and consumer halves.
#pragma once
#include "kernels/cuda/attention_prefill_kernel.cuh"
#include "kernels/cuda/attention_prefill_sm90_ptx.cuh"

namespace stem::cuda::sm90 {

using attn::bf16;
using attn::kBlock;
using attn::PrefillParams;

constexpr int kHeadDim = 128;
constexpr int kConsumers = 2;                   // consumer warpgroups, 64 query rows each
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kConsumerWarps = 4 * kConsumers;  // each arrives once on the "slot free" barriers
constexpr int kTileBytes = kBlock * kHeadDim * 2;  // a [128, 128] bf16 tile
constexpr int kHalfBytes = kTileBytes / 2;         // one [128 rows, 64 columns] swizzled half
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128·40 + 256·232 ≤ 64K registers

// How the consumers schedule their GEMMs.
enum class Schedule {
  kSerial,     // S = Q·Kᵀ, softmax, O += P·V, one after the other
  kPipelined,  // S of tile t is issued before P·V of tile t − 1, so softmax(t) overlaps P·V(t − 1)
  kPingPong,   // pipelined, and the two consumers take turns issuing their GEMMs (one's softmax
               // runs while the other's GEMMs have the tensor cores)
};

// What the producer tells the consumers about the item it loaded Q for (item < 0: no more work).
struct ItemInfo {
  int item, h, blk, q_lo, q_hi, kv_len, count, q_row0;  // q_row0: token row of position 128·blk
  int seq, list_at, j_first;  // the key blocks: block_indices[list_at...] (list_at ≥ 0), else j_first on
};

// Shared memory, from a 1024-byte aligned base (the swizzle atoms must be aligned): kQBuffers Q
// tiles (two let the next item's Q land while the consumers finish the current one), kStages K
// and V tiles, then the barriers: full_k[kStages], full_v[kStages], empty_k[kStages],
// empty_v[kStages], q_full[kQBuffers], q_empty[kQBuffers]. K and V slots are handed back
// separately: K as soon as S = Q·Kᵀ is done, so the next K lands while P·V still reads V.
template <int kStages, int kQBuffers>
struct SmemLayout {
  static constexpr int kQ = 0;
  static constexpr int kK = kQBuffers * kTileBytes;
  static constexpr int kV = kK + kStages * kTileBytes;
  static constexpr int kBars = kV + kStages * kTileBytes;
  static constexpr int kInfo = kBars + (4 * kStages + 2 * kQBuffers) * 8;
  static constexpr int kTileBlock = kInfo + kQBuffers * static_cast<int>(sizeof(ItemInfo));
  static constexpr int kEnd = kTileBlock + kStages * 4;
  static constexpr int kBytes = kEnd + 1024;  // + slack to align the dynamic base
};

template <int kStages, int kQBuffers>
struct Barriers {
  uint32_t base;
  __device__ uint32_t full_k(int s) const { return base + 8 * s; }
  __device__ uint32_t full_v(int s) const { return base + 8 * (kStages + s); }
  __device__ uint32_t empty_k(int s) const { return base + 8 * (2 * kStages + s); }
  __device__ uint32_t empty_v(int s) const { return base + 8 * (3 * kStages + s); }
  __device__ uint32_t q_full(int b) const { return base + 8 * (4 * kStages + b); }
  __device__ uint32_t q_empty(int b) const { return base + 8 * (4 * kStages + kQBuffers + b); }
};

// One build of the kernel: the consumers' schedule, the K/V ring depth, the Q buffers, whether
// the producer runs K one tile ahead of V (and loads an item's Q after its first K tile, so the
// next item's K streams in while the consumers finish the current one), and whether V has a
// producer warp of its own.
// kSplitV: a second producer warp loads the V tiles, so a K copy never waits behind a V slot
// that the slower P·V still holds (the one-warp producer issues K and V in turn).
template <Schedule kSchedule_, int kStages_, int kQBuffers_, bool kKAhead_, bool kSplitV_ = false>
struct Config {
  static constexpr Schedule kSchedule = kSchedule_;
  static constexpr int kStages = kStages_, kQBuffers = kQBuffers_;
  static constexpr bool kKAhead = kKAhead_, kSplitV = kSplitV_;
  static_assert(!(kKAhead && kSplitV), "K-ahead ordering is for the one-warp producer");
  using Layout = SmemLayout<kStages, kQBuffers>;
  using Bars = Barriers<kStages, kQBuffers>;
  static_assert(Layout::kBytes <= 227 * 1024, "more shared memory than a Hopper CTA may have");
};

}  // namespace stem::cuda::sm90
