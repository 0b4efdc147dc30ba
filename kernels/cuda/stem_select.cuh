// Stem's selection on the device (launches 5–7 of kernels/cuda/stem.cuh): value bonus and top-k per
// query block and head, then the CSR lists. Include from stem.cu only (device code).
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "kernels/cpu/stem.h"
#include "kernels/cuda/stem_params.cuh"

namespace stem::cuda::stem_kernels {

constexpr int kSelectThreads = 256;

// A score's bits flipped so that unsigned order is float order (−0 counts as +0, as the CPU's
// comparison has it). Ranking by (score desc, j asc) is then ranking by (key desc, j asc).
__device__ __forceinline__ uint32_t order_key(float score) {
  uint32_t bits = __float_as_uint(score);
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// The score a key stands for (order_key's inverse; −0 comes back as +0).
__device__ __forceinline__ float key_score(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// Where a row's selection cuts the ranking by (key desc, j asc): every key above `prefix`, and the
// first `remaining` of the `equal` keys equal to it.
struct Cut {
  uint32_t prefix;
  int remaining, equal;
};

// Σ over the keys ≥ at of exp(score − top), in double. Each thread sums j ≡ tid (mod threads) in
// ascending j, then one block reduction: the same order of additions for every `at`, so the sum
// over every key (at = 0) is the total bit for bit. Every thread gets the result.
__device__ double mass_from(const uint32_t* keys, int n, uint32_t at, double top) {
  using Reduce = cub::BlockReduce<double, kSelectThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ double result;
  double sum = 0;
  for (int j = threadIdx.x; j < n; j += kSelectThreads)
    if (keys[j] >= at) sum += exp(static_cast<double>(key_score(keys[j])) - top);
  const double total = Reduce(temp).Sum(sum);
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  const double mass = result;
  __syncthreads();  // temp and result are reused by the next call
  return mass;
}

// Threshold selection (StemSelector::Threshold) of one row of n keys, as cpu::stem_threshold_select:
// the fewest of the largest scores whose exp(score − max) sum to tau·total. A bisection over the
// key space finds the largest key v with mass(keys ≥ v) ≥ tau·total; the keys above v fall short,
// so the cut is all of them and as many keys equal to v (ties: lower j) as make up the rest.
__device__ Cut threshold_cut(const uint32_t* keys, int n, double tau) {
  __shared__ unsigned largest;
  __shared__ int equal_count;
  if (threadIdx.x == 0) largest = 0, equal_count = 0;
  __syncthreads();
  unsigned mine = 0;
  for (int j = threadIdx.x; j < n; j += kSelectThreads) mine = max(mine, keys[j]);
  atomicMax(&largest, mine);
  __syncthreads();
  const uint32_t top_key = largest;
  const double top = key_score(top_key), target = tau * mass_from(keys, n, 0u, top);
  uint32_t lo = 0, hi = top_key;  // mass(≥ lo) ≥ target holds for lo = 0 (tau ≤ 1)
  while (lo < hi) {
    const uint32_t mid = lo + static_cast<uint32_t>((uint64_t{hi} - lo + 1) / 2);
    if (mass_from(keys, n, mid, top) >= target)
      lo = mid;
    else
      hi = mid - 1;
  }
  const double above = lo < 0xFFFFFFFFu ? mass_from(keys, n, lo + 1, top) : 0.0;
  int mine_equal = 0;
  for (int j = threadIdx.x; j < n; j += kSelectThreads) mine_equal += keys[j] == lo;
  atomicAdd(&equal_count, mine_equal);
  __syncthreads();
  const int equal = equal_count;
  const double each = exp(static_cast<double>(key_score(lo)) - top);
  // (each underflows to 0 only for scores ~745 below the top: then every equal key is taken.)
  const int need = each > 0 ? static_cast<int>(fmin(ceil((target - above) / each), 1e9)) : equal;
  __syncthreads();  // largest and equal_count are reused by the next head
  return {lo, max(1, min(need, equal)), equal};
}

// How many of the n keys are above `at`; every thread gets the count.
__device__ int count_above(const uint32_t* keys, int n, uint32_t at) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  int mine = 0;
  for (int j = threadIdx.x; j < n; j += kSelectThreads) mine += keys[j] > at;
  atomicAdd(&count, mine);
  __syncthreads();
  const int total = count;
  __syncthreads();  // count is reused by the next call
  return total;
}

// Shared memory of the select kernel for estimate rows of `cols` entries: the keys and the bonus.
inline int select_smem_bytes(int cols) { return cols * 4 + cols * 4; }

// 5. One CTA per (sparse query block, KV head): the block's value statistics over the groups it
// sees (c = ceil(key_end / S)), vb[j] = λ·mean over block j's visible groups of max(0, z), then
// for each query head of the group the k(i)-th largest key by a radix select (four 8-bit digits,
// most significant first, a shared histogram each), and one pass that keeps the keys above it,
// the first equal ones in ascending j (ties to the lower block), the sinks and the window,
// compacted into the head's slot in ascending j. Grid (rows, Hkv). kSelector: TopK is Stem (the
// radix select); Threshold cuts where threshold_cut says instead; Adaptive takes the threshold's
// cut when it keeps at most k(i) blocks and the radix select's otherwise (the shorter prefix of the
// same ranking); None keeps the sinks and the window alone (no scores are read: the estimate is
// not computed for it).
template <StemSelector kSelector>
__global__ void __launch_bounds__(kSelectThreads) select_kernel(const Params p) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage temp, temp2;
  __shared__ int hist[256];
  __shared__ int found_digit, found_remaining, found_equal;
  extern __shared__ __align__(128) unsigned char smem[];  // one alignment for every extern smem of a unit (stem_estimate.cuh)
  const Row row = p.rows[blockIdx.x];
  const int g = blockIdx.y, tid = threadIdx.x, n = row.block + 1;
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem);
  float* bonus = reinterpret_cast<float*>(keys + p.cols);

  // Statistics: mean and unbiased std of u over groups [0, c).
  const int c = (row.key_end + p.stride - 1) / p.stride;
  const double* p1 = p.p1 + g * p.p_stride + row.p_base;
  const double* p2 = p.p2 + g * p.p_stride + row.p_base;
  const double mean = p1[c] / c;
  const double var = c > 1 ? fmax(0.0, (p2[c] - c * mean * mean) / (c - 1)) : 0.0;
  const float mean_f = static_cast<float>(mean), inv_std = static_cast<float>(1.0 / (sqrt(var) + 1e-6));
  const float* u = p.u + g * p.u_stride + row.u_base;
  for (int j = tid; j < n && kSelector != StemSelector::None; j += kSelectThreads) {
    const int first = j * p.per_block, count = min(p.per_block, c - first);
    float sum = 0.f;
    for (int x = first; x < first + count; ++x) sum += fmaxf(0.f, (u[x] - mean_f) * inv_std);
    bonus[j] = p.lambda * sum / count;
  }

  for (int hh = 0; hh < p.group; ++hh) {
    const int h = g * p.group + hh;
    __syncthreads();  // bonus ready; the previous head's keys no longer read
    const float* m = p.estimate + (int64_t{blockIdx.x} * p.q_heads + h) * p.cols;
    for (int j = tid; j < n; j += kSelectThreads)
      keys[j] = kSelector == StemSelector::None ? 0u : order_key(m[j] + bonus[j]);

    // The k-th largest key, digit by digit: among the keys that match the digits found so far,
    // the digit whose bucket holds the remaining-th largest.
    uint32_t prefix = 0, mask = 0;
    int remaining = row.budget, equal = 0;
    bool radix = kSelector == StemSelector::TopK;  // the same in every thread (block-wide values only)
    if constexpr (kSelector == StemSelector::Threshold || kSelector == StemSelector::Adaptive) {
      __syncthreads();  // keys ready
      const Cut cut = threshold_cut(keys, n, p.threshold);
      prefix = cut.prefix, remaining = cut.remaining, equal = cut.equal;
      if constexpr (kSelector == StemSelector::Adaptive) {
        if (count_above(keys, n, cut.prefix) + cut.remaining > row.budget) {
          radix = true;  // the threshold wants more than k(i): the top-k(i) instead
          prefix = 0, remaining = row.budget, equal = 0;
        }
      }
    } else if constexpr (kSelector == StemSelector::None) {
      prefix = 0xFFFFFFFFu, remaining = 0;  // no key is above it, none of the equal ones is kept
    }
    for (int shift = 24; shift >= 0 && radix; shift -= 8) {
      hist[tid] = 0;  // kSelectThreads == 256 bins
      __syncthreads();
      // Most keys share their top digit (sign and exponent): lanes with equal digits add once.
      for (int base = 0; base < n; base += kSelectThreads) {
        const int j = base + tid;
        const uint32_t key = j < n ? keys[j] : 0u;
        const uint32_t digit = j < n && (key & mask) == prefix ? (key >> shift) & 255 : 256u;
        const unsigned peers = __match_any_sync(0xffffffffu, digit);
        if (digit < 256u && (tid & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
      }
      __syncthreads();
      const int bin = 255 - tid, count = hist[bin];  // thread 0 holds the highest digit
      int above_and_here = 0, total = 0;
      Scan(temp).InclusiveSum(count, above_and_here, total);
      if (count > 0 && above_and_here >= remaining && above_and_here - count < remaining) {
        found_digit = bin;
        found_remaining = remaining - (above_and_here - count);
        found_equal = count;
      }
      __syncthreads();
      prefix |= static_cast<uint32_t>(found_digit) << shift;
      mask |= 0xFFu << shift;
      remaining = found_remaining;
      equal = found_equal;
    }
    // Keep keys > prefix, the first `remaining` of the `equal` keys == prefix, the sinks, the window.
    int* slot = p.slots + row.slot_base + int64_t{h} * row.bound;
    int running = 0, equal_before = 0;
    for (int base = 0; base < n; base += kSelectThreads) {
      const int j = base + tid;
      const uint32_t key = j < n ? keys[j] : 0u;
      const int is_equal = j < n && key == prefix;
      int equal_at = 0, equal_total = 0;
      if (equal > remaining) Scan(temp2).ExclusiveSum(is_equal, equal_at, equal_total);  // ties: lower j first
      const int keep = j < n && (key > prefix || (is_equal && equal_before + equal_at < remaining) || j < p.sinks ||
                                 j > row.block - p.window);
      int at = 0, total = 0;
      Scan(temp).ExclusiveSum(keep, at, total);
      if (keep && running + at < row.bound) slot[running + at] = j;
      running += total;
      equal_before += equal_total;
      __syncthreads();  // temp, temp2 are reused
    }
    if (tid == 0) p.sizes[row.item_base + h] = min(running, row.bound);
  }
}

// 6. block_offsets: an exclusive scan over every (query block, head)'s list size. CTA c scans
// items [1024·c, 1024·(c + 1)) after summing the sizes of all items before them (a step has at most
// a few tens of thousands of lists, so that re-reading is cheaper than a second pass). Dense lists
// hold i − first + 1 blocks. Grid ceil(items / 1024).
constexpr int kOffsetThreads = 1024;
__device__ __forceinline__ int list_size(const Params& p, int x) {
  const int b = x / p.q_heads;
  return p.qrow[b] >= 0 ? p.sizes[x] : p.qblocks[2 * b + 1] - p.qfirst[b] + 1;
}
__global__ void __launch_bounds__(kOffsetThreads) list_offsets_kernel(const Params p) {
  using Reduce = cub::BlockReduce<int, kOffsetThreads>;
  using Scan = cub::BlockScan<int, kOffsetThreads>;
  __shared__ typename Reduce::TempStorage reduce_temp;
  __shared__ typename Scan::TempStorage scan_temp;
  __shared__ int before;
  const int items = p.n_qblocks * p.q_heads, first = static_cast<int>(blockIdx.x) * kOffsetThreads;
  int mine = 0;
  for (int x = static_cast<int>(threadIdx.x); x < first; x += kOffsetThreads) mine += list_size(p, x);
  const int sum = Reduce(reduce_temp).Sum(mine);
  if (threadIdx.x == 0) before = sum;
  __syncthreads();
  const int x = first + static_cast<int>(threadIdx.x);
  const int size = x < items ? list_size(p, x) : 0;
  int at = 0, total = 0;
  Scan(scan_temp).ExclusiveSum(size, at, total);
  if (x < items) p.offsets[x] = before + at;
  if (threadIdx.x == 0 && first + kOffsetThreads >= items) p.offsets[items] = before + total;
}

// 7. block_indices: a warp per (query block, head) copies its sparse list from the slots or writes
// its dense range. Grid ceil(items / 8) of 256 threads.
__global__ void write_lists_kernel(const Params p) {
  const int x = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (x >= p.n_qblocks * p.q_heads) return;
  const int b = x / p.q_heads, h = x % p.q_heads, begin = p.offsets[x], size = p.offsets[x + 1] - begin;
  const int r = p.qrow[b];
  if (r >= 0) {
    const int* slot = p.slots + p.rows[r].slot_base + int64_t{h} * p.rows[r].bound;
    for (int e = lane; e < size; e += 32) p.indices[begin + e] = slot[e];
  } else {
    const int first = p.qfirst[b];
    for (int e = lane; e < size; e += 32) p.indices[begin + e] = first + e;
  }
}

}  // namespace stem::cuda::stem_kernels
