// Block-wide building blocks of the sampling kernel (kernels/cuda/sampling.cu): float keys,
// reductions, an exclusive scan in thread order, and the radix select that finds the top-k and
// top-p thresholds without sorting. Device code only; every function is called by the whole block.
#pragma once
#include <cstdint>

namespace stem::cuda::sampling {

// One block per row. A heavy row (top-k, top-p, min-p, top logprobs) walks the row a dozen times,
// and its block's latency is the op's: 1024 threads with 8 loads each in flight (for_each_owned)
// ran 2.2x faster than 512 threads with one (R 256, V 128256 on the H100).
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;  // consecutive ids per thread in the id-ordered scans
constexpr int kTile = kThreads * kItems;
// A top-k row keeps at most this many candidates (ties included) in shared memory for the top-p
// select and the draw, which then walk them instead of the whole row.
constexpr int kCandidates = 2048;

// Calls f(i, w[i]) for every id i < V this thread owns (i ≡ threadIdx.x mod kThreads), in
// ascending order, with kLoads loads in flight: one block walks a 128K-entry row, so each thread's
// loop is bound by the latency of its loads unless several are outstanding.
template <class F>
__device__ __forceinline__ void for_each_owned(const float* __restrict__ w, int V, F&& f) {
  constexpr int kLoads = 8;
  int i = threadIdx.x;
  for (; i + (kLoads - 1) * kThreads < V; i += kLoads * kThreads) {
    float x[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) x[u] = w[i + u * kThreads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) f(i + u * kThreads, x[u]);
  }
  for (; i < V; i += kThreads) f(i, w[i]);
}

// A thread's few most recent histogram bins and their sums, added to the shared histogram only
// when a bin falls out (or at flush). A row's weight sits in a handful of bins (the top bits of the
// largest logits), where 512 threads adding one element at a time contend for the same words;
// this way a thread adds each bin's sum about once per pass.
template <typename T>
struct BinCache {
  static constexpr int kSlots = 4;
  int bin[kSlots] = {-1, -1, -1, -1};
  T sum[kSlots] = {};
  __device__ __forceinline__ void add(int b, T v, T* hist) {
    bool hit = false;
#pragma unroll
    for (int s = 0; s < kSlots; ++s)
      if (bin[s] == b) {
        sum[s] += v;
        hit = true;
      }
    if (hit) return;
    if (bin[kSlots - 1] >= 0) atomicAdd(&hist[bin[kSlots - 1]], sum[kSlots - 1]);
#pragma unroll
    for (int s = kSlots - 1; s > 0; --s) {
      bin[s] = bin[s - 1];
      sum[s] = sum[s - 1];
    }
    bin[0] = b;
    sum[0] = v;
  }
  __device__ __forceinline__ void flush(T* hist) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s)
      if (bin[s] >= 0) atomicAdd(&hist[bin[s]], sum[s]);
  }
};

// NaN never wins (read as -inf); -0 and +0 are one value, so one key.
__device__ __forceinline__ float canonical(float x) { return isnan(x) ? -INFINITY : (x == 0.0f ? 0.0f : x); }

// A larger float has a larger key (the twin's key_of).
__device__ __forceinline__ uint32_t key_of(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Shared memory of one block. Reused by the passes one after another.
struct Shared {
  double mass[256];
  unsigned count[256];
  double dbuf[kWarps];
  float fbuf[kWarps];
  int ibuf[kWarps];
  uint32_t bin;
  double above;
  double total;
  int found;
  int top_gt;
  int top_id[20];
  float top_val[20];
  float cand_val[kCandidates];  // the row's keys >= the top-k threshold, in id order (canonical)
  int cand_id[kCandidates];
};

__device__ __forceinline__ double block_sum(double v, Shared& sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // the previous user of dbuf is done
  if ((threadIdx.x & 31) == 0) sh.dbuf[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0;
  for (int w = 0; w < kWarps; ++w) s += sh.dbuf[w];  // same order in every thread: one result
  return s;
}

__device__ __forceinline__ int block_max(int v, Shared& sh) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh.ibuf[threadIdx.x >> 5] = v;
  __syncthreads();
  int m = sh.ibuf[0];
  for (int w = 1; w < kWarps; ++w) m = max(m, sh.ibuf[w]);
  return m;
}

// Exclusive prefix sum over the threads in order; `total` gets the block's sum (the same value,
// summed in the same order, in every thread).
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* buf, T& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  T excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) excl = T(0);
  __syncthreads();
  if (lane == 31) buf[warp] = incl;
  __syncthreads();
  T before = T(0), all = T(0);
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += buf[w];
    all += buf[w];
  }
  total = all;
  return before + excl;
}

// Online log-sum-exp state: sum of exp(x − m), in double.
struct Lse {
  float m = -INFINITY;
  double s = 0;
  __device__ __forceinline__ void add(float x) {
    if (x == -INFINITY) return;
    if (x > m) {
      s = (m == -INFINITY ? 0.0 : s * exp(static_cast<double>(m) - x)) + 1.0;
      m = x;
    } else {
      s += exp(static_cast<double>(x) - m);
    }
  }
  __device__ __forceinline__ void merge(float m2, double s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
      m = m2;
      s = s2;
      return;
    }
    const float mm = fmaxf(m, m2);
    s = s * exp(static_cast<double>(m) - mm) + s2 * exp(static_cast<double>(m2) - mm);
    m = mm;
  }
};

// Radix select over the keys of row w (canonical) that are >= floor_key: the largest key T with
// weight(key >= T) >= target, where weight is 1 per element (kMass false: T is the target-th
// largest key) or e = exp((x − m)·inv_t) (kMass true). With `fraction`, target is a fraction of
// the whole weight, which the first pass measures (returned in sh.total). On return *above is
// the weight of the keys > T. If rounding leaves the target unreached, T is the smallest key.
template <bool kMass>
__device__ uint32_t radix_select(const float* __restrict__ w, int V, uint32_t floor_key, double target,
                                 bool fraction, float m, double inv_t, Shared& sh, double* above_out) {
  const int lane = threadIdx.x & 31;
  uint32_t prefix = 0;
  double above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      sh.mass[b] = 0;
      sh.count[b] = 0;
    }
    __syncthreads();
    BinCache<double> mass;
    BinCache<unsigned> count;
    for_each_owned(w, V, [&](int, float raw) {
      const float x = canonical(raw);
      const uint32_t k = key_of(x);
      if (k < floor_key) return;
      if (shift < 24 && (k >> (shift + 8)) != (prefix >> (shift + 8))) return;
      const int bin = (k >> shift) & 255;
      if constexpr (kMass)
        mass.add(bin, exp((static_cast<double>(x) - m) * inv_t), sh.mass);
      else
        count.add(bin, 1u, sh.count);
    });
    if constexpr (kMass)
      mass.flush(sh.mass);
    else
      count.flush(sh.count);
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns bins 255−8l down to 248−8l: lane order is descending key order.
      double v[8], chunk = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int b = 255 - 8 * lane - j;
        v[j] = kMass ? sh.mass[b] : static_cast<double>(sh.count[b]);
        chunk += v[j];
      }
      double incl = chunk;
      for (int o = 1; o < 32; o <<= 1) {
        const double t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      double excl = __shfl_up_sync(0xffffffffu, incl, 1);
      if (lane == 0) excl = 0;
      double goal = target;
      if (shift == 24 && fraction) {
        const double all = __shfl_sync(0xffffffffu, incl, 31);
        goal = target * all;
        if (lane == 0) sh.total = all;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, above + incl >= goal);
      const unsigned nonempty = __ballot_sync(0xffffffffu, chunk > 0);
      // The first lane that reaches the goal; if none (rounding), the last lane with weight.
      const int pick = hit ? __ffs(hit) - 1 : (nonempty ? 31 - __clz(nonempty) : 31);
      if (lane == pick) {
        double acc = above + excl, acc_at = acc, acc_nz = acc;
        int chosen = -1, last_nz = 255 - 8 * lane - 7;
        for (int j = 0; j < 8; ++j) {
          const int b = 255 - 8 * lane - j;
          if (v[j] > 0) {
            last_nz = b;
            acc_nz = acc;
          }
          if (hit && acc + v[j] >= goal) {
            chosen = b;
            acc_at = acc;
            break;
          }
          acc += v[j];
        }
        if (chosen < 0) {  // rounding between the lane sums and the bin sums: the last bin with weight
          chosen = last_nz;
          acc_at = acc_nz;
        }
        sh.bin = static_cast<uint32_t>(chosen);
        sh.above = acc_at;
      }
    }
    __syncthreads();
    prefix |= sh.bin << shift;
    above = sh.above;
    if (shift == 24 && fraction) target *= sh.total;  // every thread's goal from now on
  }
  *above_out = above;
  return prefix;
}

}  // namespace stem::cuda::sampling
