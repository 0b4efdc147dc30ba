#include <climits>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/sampling_block.cuh"

namespace stem::cuda {

namespace {

using namespace sampling;

struct SampleArgs {
  const float* logits;
  int64_t logits_stride;
  float* scratch;
  int64_t scratch_stride;
  const SamplingRow* rows;
  const int32_t* offsets;
  const PenaltyToken* penalties;
  int32_t* token;
  float* logprob;
  int32_t* top_ids;
  float* top_logprobs;
  int V;
};

// The penalised row in scratch: a canonical copy, then the listed tokens changed (the twin's
// penalize(); __f*_rn keep the two roundings of frequency·count + presence).
__device__ void penalize(float* __restrict__ sw, const float* __restrict__ raw, int V, const SamplingRow& row,
                         const PenaltyToken* __restrict__ pen, int count) {
  for_each_owned(raw, V, [&](int i, float x) { sw[i] = canonical(x); });
  __syncthreads();
  for (int j = threadIdx.x; j < count; j += kThreads) {
    const PenaltyToken p = pen[j];
    float l = sw[p.id];
    if (row.repetition_penalty != 1.0f && (p.in_prompt || p.output_count > 0))
      l = l > 0 ? __fdiv_rn(l, row.repetition_penalty) : __fmul_rn(l, row.repetition_penalty);
    if (p.output_count > 0)
      l = __fsub_rn(l, __fadd_rn(__fmul_rn(row.frequency_penalty, static_cast<float>(p.output_count)),
                                 row.presence_penalty));
    sw[p.id] = l;
  }
  __syncthreads();
}

struct RowStats {
  float best;  // max of w
  int id;      // its lowest id
  Lse raw;     // log-sum-exp of the raw row (when asked for)
};

// One pass: the argmax of w, and the raw row's log-sum-exp when `lse` (fused when w is raw).
__device__ RowStats argmax_lse(const float* __restrict__ w, const float* __restrict__ raw, int V, bool lse,
                               Shared& sh) {
  float best = -INFINITY;
  int id = INT_MAX;
  Lse acc;
  for_each_owned(w, V, [&](int i, float wx) {
    const float x = canonical(wx);
    if (x > best || (x == best && i < id)) {
      best = x;
      id = i;
    }
    if (lse) acc.add(w == raw ? x : canonical(raw[i]));
  });
  for (int o = 16; o > 0; o >>= 1) {
    const float b2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, id, o);
    if (b2 > best || (b2 == best && i2 < id)) {
      best = b2;
      id = i2;
    }
    if (lse) acc.merge(__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o));
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
    sh.fbuf[warp] = best;
    sh.ibuf[warp] = id;
    sh.mass[warp] = acc.s;
    sh.mass[kWarps + warp] = acc.m;  // a float, exactly, in a double slot
  }
  __syncthreads();
  RowStats r{sh.fbuf[0], sh.ibuf[0], Lse{}};
  r.raw.merge(static_cast<float>(sh.mass[kWarps]), sh.mass[0]);
  for (int k = 1; k < kWarps; ++k) {
    if (sh.fbuf[k] > r.best || (sh.fbuf[k] == r.best && sh.ibuf[k] < r.id)) {
      r.best = sh.fbuf[k];
      r.id = sh.ibuf[k];
    }
    r.raw.merge(static_cast<float>(sh.mass[kWarps + k]), sh.mass[k]);
  }
  __syncthreads();  // sh.mass is the radix histogram next
  return r;
}

// Copies the entries of w with key >= floor_key, in id order, to sh.cand_val / sh.cand_id (the
// caller knows there are at most kCandidates).
__device__ void compact(const float* __restrict__ w, int V, uint32_t floor_key, Shared& sh) {
  int written = 0;
  for (int base = 0; base < V; base += kTile) {
    const int i0 = base + threadIdx.x * kItems;
    float x[kItems];
    int local = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      x[j] = i0 + j < V ? canonical(w[i0 + j]) : -INFINITY;
      local += i0 + j < V && key_of(x[j]) >= floor_key;
    }
    int tile_total;
    int at = written + block_exclusive_scan(local, sh.ibuf, tile_total);
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      if (i0 + j < V && key_of(x[j]) >= floor_key) {
        sh.cand_val[at] = x[j];
        sh.cand_id[at] = i0 + j;
        ++at;
      }
    written += tile_total;
  }
  __syncthreads();
}

// The non-greedy draw: thresholds, then the first kept id (in id order) whose running sum of e
// passes u·total. With top-k and few enough keys at or above its threshold, the top-p select and
// the draw walk those candidates (shared memory) instead of the row: the same entries in the same
// order, one pass over the row instead of six.
__device__ int draw(const float* __restrict__ row_w, int V, const SamplingRow& row, float m, int argmax, Shared& sh) {
  const double inv_t = 1.0 / static_cast<double>(row.temperature);
  double above;
  uint32_t floor_key = 0;
  const float* w = row_w;  // what the steps below walk: the row, or its candidates
  int n = V;
  bool compacted = false;
  if (row.top_k > 0 && row.top_k < V) {
    floor_key = radix_select<false>(w, V, 0, static_cast<double>(row.top_k), false, m, inv_t, sh, &above);
    // The last pass's histogram holds the count of keys equal to the threshold.
    const double kept = above + static_cast<double>(sh.count[floor_key & 255u]);
    __syncthreads();  // every thread has read sh.count before compact reuses shared memory
    if (kept <= kCandidates) {
      compact(w, V, floor_key, sh);
      w = sh.cand_val;
      n = static_cast<int>(kept);
      compacted = true;
    }
  }
  if (row.top_p < 1.0f) {
    const uint32_t t = radix_select<true>(w, n, floor_key, static_cast<double>(row.top_p), true, m, inv_t, sh, &above);
    floor_key = max(floor_key, t);
  }
  const bool min_p = row.min_p > 0.0f;
  const double min_e = static_cast<double>(row.min_p);
  auto weight_of = [&](float raw) {  // e of a kept token, 0 below the thresholds, -1 below min-p
    const float x = canonical(raw);
    if (key_of(x) < floor_key) return 0.0;
    const double e = exp((static_cast<double>(x) - m) * inv_t);
    return !min_p || e >= min_e ? e : -1.0;
  };
  auto weight = [&](int i) { return weight_of(w[i]); };

  double total = 0;
  int last = -1;
  for_each_owned(w, n, [&](int i, float raw) {
    const double e = weight_of(raw);
    if (e >= 0 && key_of(canonical(raw)) >= floor_key) {
      total += e;
      last = i;
    }
  });
  total = block_sum(total, sh);
  last = block_max(last, sh);
  const double target = sampling_uniform(row.seed, row.step) * total;

  if (threadIdx.x == 0) sh.found = INT_MAX;
  double running = 0;
  for (int base = 0; base < n; base += kTile) {
    const int i0 = base + threadIdx.x * kItems;
    double e[kItems], local = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      e[j] = i0 + j < n ? weight(i0 + j) : 0.0;
      if (e[j] < 0) e[j] = 0;
      local += e[j];
    }
    double tile_total;
    double c = running + block_exclusive_scan(local, sh.dbuf, tile_total);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      c += e[j];
      if (e[j] > 0 && target < c) {
        atomicMin(&sh.found, i0 + j);
        break;
      }
    }
    __syncthreads();
    if (sh.found != INT_MAX) break;
    running += tile_total;
  }
  const int found = sh.found;
  const int at = found != INT_MAX ? found : last;
  if (at < 0) return argmax;
  return compacted ? sh.cand_id[at] : at;
}

// The n largest raw logits (ties: lower id), best first, with their log-softmax.
__device__ void top_n(const float* __restrict__ raw, int V, int n, const Lse& lse, float* out_lp, int32_t* out_id,
                      Shared& sh) {
  double above;
  const uint32_t t = radix_select<false>(raw, V, 0, static_cast<double>(n), false, 0.0f, 1.0, sh, &above);
  const int gt = static_cast<int>(above);  // keys > t, all taken; then the lowest-id ties
  if (threadIdx.x == 0) sh.top_gt = 0;
  __syncthreads();
  int ties_before = 0;
  for (int base = 0; base < V; base += kTile) {
    const int i0 = base + threadIdx.x * kItems;
    int local = 0;
    uint32_t keys[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      keys[j] = i0 + j < V ? key_of(canonical(raw[i0 + j])) : 0u;
      local += i0 + j < V && keys[j] == t;
    }
    int tile_ties;
    int rank = ties_before + block_exclusive_scan(local, sh.ibuf, tile_ties);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (i0 + j >= V) break;
      int slot = -1;
      if (keys[j] > t) {
        slot = atomicAdd(&sh.top_gt, 1);
      } else if (keys[j] == t) {
        slot = gt + rank++;
        if (slot >= n) slot = -1;
      }
      if (slot >= 0) {
        sh.top_id[slot] = i0 + j;
        sh.top_val[slot] = canonical(raw[i0 + j]);
      }
    }
    ties_before += tile_ties;
    if (gt == 0 && ties_before >= n) break;  // nothing above t, and enough ties: the rest cannot count
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int a = 1; a < n; ++a)  // insertion sort by (value desc, id asc)
      for (int b = a; b > 0; --b) {
        const bool before = sh.top_val[b] > sh.top_val[b - 1] ||
                            (sh.top_val[b] == sh.top_val[b - 1] && sh.top_id[b] < sh.top_id[b - 1]);
        if (!before) break;
        const float v = sh.top_val[b];
        sh.top_val[b] = sh.top_val[b - 1];
        sh.top_val[b - 1] = v;
        const int id = sh.top_id[b];
        sh.top_id[b] = sh.top_id[b - 1];
        sh.top_id[b - 1] = id;
      }
    const double log_sum = log(lse.s);
    for (int j = 0; j < n; ++j) {
      out_id[j] = sh.top_id[j];
      out_lp[j] = static_cast<float>(static_cast<double>(sh.top_val[j]) - lse.m - log_sum);
    }
  }
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  __shared__ Shared sh;
  pdl_wait();  // the logits are the kernel before's (the LM head)
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  const SamplingRow row = a.rows[r];
  const float* raw = a.logits + r * a.logits_stride;
  const float* w = raw;
  const int pb = a.offsets[r], pe = a.offsets[r + 1];
  if (row.has_penalties() && pe > pb) {
    float* sw = a.scratch + r * a.scratch_stride;
    penalize(sw, raw, a.V, row, a.penalties + pb, pe - pb);
    w = sw;
  }
  const bool lse = row.wants_logprobs();
  const RowStats st = argmax_lse(w, raw, a.V, lse, sh);
  int token = st.id;
  if (!row.greedy() && st.best != -INFINITY) token = draw(w, a.V, row, st.best, st.id, sh);
  if (threadIdx.x == 0) {
    a.token[r] = token;
    a.logprob[r] =
        lse ? static_cast<float>(static_cast<double>(canonical(raw[token])) - st.raw.m - log(st.raw.s)) : 0.0f;
  }
  const int n = lse ? min(min(row.top_logprobs, kMaxTopLogprobs), a.V) : 0;
  float* top_lp = a.top_logprobs + r * kMaxTopLogprobs;
  int32_t* top_id = a.top_ids + r * kMaxTopLogprobs;
  for (int j = threadIdx.x; j < kMaxTopLogprobs; j += kThreads)
    if (j >= n) {
      top_id[j] = -1;
      top_lp[j] = 0.0f;
    }
  if (n > 0) top_n(raw, a.V, n, st.raw, top_lp, top_id, sh);
}

}  // namespace

void sample(const SamplingOutputs& out, const TensorView& logits, const SamplingInputs& in,
            const TensorView& scratch, cudaStream_t stream) {
  cpu::check_rows(logits, "cuda::sample logits", DType::F32, 2);
  const int64_t R = logits.shape[0], V = logits.shape[1];
  STEM_CHECK(in.num_rows == R, "cuda::sample: ", in.num_rows, " parameter rows for logits ", logits.str());
  cpu::check_packed(out.token, "cuda::sample token", DType::I32, 1);
  cpu::check_packed(out.logprob, "cuda::sample logprob", DType::F32, 1);
  cpu::check_packed(out.top_ids, "cuda::sample top_ids", DType::I32, 2);
  cpu::check_packed(out.top_logprobs, "cuda::sample top_logprobs", DType::F32, 2);
  cpu::check_dim(out.token, "cuda::sample token", 0, R, "logit rows");
  cpu::check_dim(out.logprob, "cuda::sample logprob", 0, R, "logit rows");
  for (const TensorView* v : {&out.top_ids, &out.top_logprobs}) {
    cpu::check_dim(*v, "cuda::sample top outputs", 0, R, "logit rows");
    cpu::check_dim(*v, "cuda::sample top outputs", 1, kMaxTopLogprobs, "kMaxTopLogprobs");
  }
  cpu::check_rows(scratch, "cuda::sample scratch", DType::F32, 2);
  STEM_CHECK(scratch.shape[0] == R && scratch.shape[1] == V, "cuda::sample: scratch ", scratch.str(),
             " must be [rows, vocab] like logits ", logits.str());
  if (R == 0) return;
  STEM_CHECK(V > 0 && V <= INT32_MAX - kTile, "cuda::sample: vocabulary of ", V, " tokens");
  STEM_CHECK(R <= INT32_MAX, "cuda::sample: ", R, " rows is over one launch's grid");
  STEM_CHECK(in.rows && in.penalty_offsets, "cuda::sample: rows and penalty_offsets are required");
  const SampleArgs args{logits.ptr<float>(), cpu::row_stride(logits), scratch.ptr<float>(), cpu::row_stride(scratch),
                        in.rows,  in.penalty_offsets, in.penalties, out.token.ptr<int32_t>(),
                        out.logprob.ptr<float>(), out.top_ids.ptr<int32_t>(), out.top_logprobs.ptr<float>(),
                        static_cast<int>(V)};
  launch_pdl(sample_kernel, static_cast<unsigned>(R), kThreads, 0, stream, args);
}

}  // namespace stem::cuda
