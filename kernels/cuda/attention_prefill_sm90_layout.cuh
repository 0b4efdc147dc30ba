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
// tiles (two let the next item's Q land while the consumers finish the current one), kKStages K
// tiles, kVStages V tiles, then the barriers: full_k[kKStages], full_v[kVStages],
// empty_k[kKStages], empty_v[kVStages], q_full[kQBuffers], q_empty[kQBuffers]. K and V slots are
// handed back separately: K as soon as S = Q·Kᵀ is done, so the next K lands while P·V still
// reads V.
template <int kKStages, int kVStages, int kQBuffers>
struct SmemLayout {
  static constexpr int kQ = 0;
  static constexpr int kK = kQBuffers * kTileBytes;
  static constexpr int kV = kK + kKStages * kTileBytes;
  static constexpr int kBars = kV + kVStages * kTileBytes;
  static constexpr int kInfo = kBars + (2 * kKStages + 2 * kVStages + 2 * kQBuffers) * 8;
  static constexpr int kTileBlock = kInfo + kQBuffers * static_cast<int>(sizeof(ItemInfo));
  static constexpr int kEnd = kTileBlock + kKStages * 4;
  static constexpr int kBytes = kEnd + 1024;  // + slack to align the dynamic base
};

template <int kKStages, int kVStages, int kQBuffers>
struct Barriers {
  uint32_t base;
  __device__ uint32_t full_k(int s) const { return base + 8 * s; }
  __device__ uint32_t full_v(int s) const { return base + 8 * (kKStages + s); }
  __device__ uint32_t empty_k(int s) const { return base + 8 * (kKStages + kVStages + s); }
  __device__ uint32_t empty_v(int s) const { return base + 8 * (2 * kKStages + kVStages + s); }
  __device__ uint32_t q_full(int b) const { return base + 8 * (2 * kKStages + 2 * kVStages + b); }
  __device__ uint32_t q_empty(int b) const { return base + 8 * (2 * kKStages + 2 * kVStages + kQBuffers + b); }
};

// One build of the kernel: the consumers' schedule, the depths of the K and V rings, the Q
// buffers, and whether V has a producer warp of its own (kSplitV: then a K copy never waits
// behind a V slot that the slower P·V still holds, as it does when one warp issues K and V in
// turn).
template <Schedule kSchedule_, int kKStages_, int kVStages_, int kQBuffers_, bool kSplitV_>
struct Config {
  static constexpr Schedule kSchedule = kSchedule_;
  static constexpr int kKStages = kKStages_, kVStages = kVStages_, kQBuffers = kQBuffers_;
  static constexpr bool kSplitV = kSplitV_;
  using Layout = SmemLayout<kKStages, kVStages, kQBuffers>;
  using Bars = Barriers<kKStages, kVStages, kQBuffers>;
  static_assert(Layout::kBytes <= 227 * 1024, "more shared memory than a Hopper CTA may have");
};

}  // namespace stem::cuda::sm90
