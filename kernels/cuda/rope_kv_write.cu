// cuda::rope, cuda::kv_write and the two in one pass, cuda::rope_kv_write (what a layer calls):
// one kernel, one block per token, with the rotation and the cache write each switched on or off.
#include <algorithm>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8_row.cuh"
#include "kernels/cuda/kv_fp8.cuh"
#include "kernels/cuda/kv_write.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/rope.cuh"

namespace stem::cuda {

namespace {

constexpr int kMaxHalf = 512;  // cos and sin of one token live in shared memory

struct Args {
  bf16* q;
  int64_t q_stride;
  int q_heads;
  bf16* k;
  int64_t k_stride;
  const bf16* v;
  int64_t v_stride;
  int kv_heads, head_dim;
  const int32_t* positions;
  const float* inv_freq;
  bf16* k_cache;
  bf16* v_cache;
  const int32_t* slots;
  int64_t n_slots;
  // The FP8 cache (kFp8): codes [P · page_size, Hkv · D] and scales [P · page_size, Hkv].
  uint8_t* k_codes;
  uint8_t* v_codes;
  float* k_scale;
  float* v_scale;
};

// kRotate: q and k are rotated in place (the D/2 cos/sin pairs of the token computed once into
// shared memory, 8 pairs per thread step). kWrite: the token's k (rotated, when kRotate) and v rows
// go to its cache slot, a row of the cache seen as [P · page_size, Hkv · D]; a slot outside the
// cache is skipped. The cached k is the same bf16 values as the rotated k left in place.
// kFp8 (with kRotate and kWrite): the cache is FP8; once the block's rotated k is in place, a warp
// per (K or V, head) row quantizes the row's bf16 values as cuda::quantize_rows_fp8 does (amax,
// NaN winning; scale amax / 448, 1 for zeros; IEEE division, satfinite round to nearest even):
// codes and scale into the slot.
template <bool kRotate, bool kWrite, bool kFp8 = false>
__global__ void rope_kv_write_kernel(const Args a) {
  __shared__ float cos_sin[2 * kMaxHalf];
  const int64_t t = blockIdx.x;
  const int half = a.head_dim / 2;
  if constexpr (kRotate) {
    // The angles come from the host's positions and the weights: no kernel before writes them.
    const float pos = static_cast<float>(a.positions[t]);
    for (int i = threadIdx.x; i < half; i += blockDim.x)
      sincosf(pos * a.inv_freq[i], &cos_sin[half + i], &cos_sin[i]);
  }
  pdl_wait();  // q, k, v (and the slots' cache rows) are the kernels before's
  pdl_launch_dependents();
  bool write = false;
  int64_t slot = 0;
  if constexpr (kWrite) {
    slot = a.slots[t];
    write = slot >= 0 && slot < a.n_slots;
  }
  const int64_t row = int64_t{a.kv_heads} * a.head_dim;
  if constexpr (kRotate) {
    __syncthreads();
    const int vecs_per_half = half / kVec;
    const int jobs = (a.q_heads + a.kv_heads) * vecs_per_half;
    for (int job = threadIdx.x; job < jobs; job += blockDim.x) {
      const int head = job / vecs_per_half, first = (job % vecs_per_half) * kVec;
      const bool is_k = head >= a.q_heads;
      bf16* lo = (is_k ? a.k + t * a.k_stride + (head - a.q_heads) * a.head_dim
                       : a.q + t * a.q_stride + head * a.head_dim) +
                 first;
      bf16* hi = lo + half;
      float x[kVec], y[kVec];
      load8(lo, x);
      load8(hi, y);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float c = cos_sin[first + j], s = cos_sin[half + first + j];
        const float x1 = x[j], x2 = y[j];
        x[j] = x1 * c - x2 * s;
        y[j] = x2 * c + x1 * s;
      }
      store8(lo, x);
      store8(hi, y);
      if (kWrite && !kFp8 && is_k && write) {
        bf16* to = a.k_cache + slot * row + (head - a.q_heads) * a.head_dim + first;
        store8(to, x);
        store8(to + half, y);
      }
    }
  }
  if constexpr (kWrite) {
    if (!write) return;  // the slot is the block's: every thread leaves, or none
    if constexpr (kFp8) {
      __syncthreads();  // the rotated k this block stored in place (global writes: visible after the barrier)
      const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
      for (int job = threadIdx.x / 32; job < 2 * a.kv_heads; job += warps) {
        const bool is_v = job >= a.kv_heads;
        const int head = is_v ? job - a.kv_heads : job;
        const bf16* src = (is_v ? a.v + t * a.v_stride : a.k + t * a.k_stride) + head * a.head_dim;
        float m = 0.f;
        for (int d = lane; d < a.head_dim; d += 32) m = fp8_row::amax_of(m, fabsf(__bfloat162float(src[d])));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) m = fp8_row::amax_of(m, __shfl_xor_sync(0xffffffffu, m, off));
        const float sc = fp8_row::scale_of(m);
        uint8_t* dst = (is_v ? a.v_codes : a.k_codes) + slot * row + head * a.head_dim;
        for (int d = lane; d < a.head_dim; d += 32)
          dst[d] = __nv_cvt_float_to_fp8(__fdiv_rn(__bfloat162float(src[d]), sc), __NV_SATFINITE, __NV_E4M3);
        if (lane == 0) (is_v ? a.v_scale : a.k_scale)[slot * a.kv_heads + head] = sc;
      }
      return;
    }
    // v, and k when it was not rotated above: straight 16-byte copies.
    const int vecs_per_row = static_cast<int>(row / kVec);
    const int jobs = (kRotate ? 1 : 2) * vecs_per_row;
    for (int job = threadIdx.x; job < jobs; job += blockDim.x) {
      const bool is_v = kRotate || job >= vecs_per_row;
      const int64_t col = int64_t{is_v && !kRotate ? job - vecs_per_row : job} * kVec;
      const uint4 val = *reinterpret_cast<const uint4*>((is_v ? a.v + t * a.v_stride : a.k + t * a.k_stride) + col);
      *reinterpret_cast<uint4*>((is_v ? a.v_cache : a.k_cache) + slot * row + col) = val;
    }
  }
}

void check_rope_args(const TensorView& q, const TensorView& k, const TensorView& positions,
                     const TensorView& inv_freq) {
  cpu::check_rows(q, "rope q", DType::BF16, 3);
  cpu::check_rows(k, "rope k", DType::BF16, 3);
  cpu::check_packed(positions, "rope positions", DType::I32, 1);
  cpu::check_packed(inv_freq, "rope inv_freq", DType::F32, 1);
  const int64_t tokens = q.shape[0], head_dim = q.shape[2];
  STEM_CHECK(head_dim % 2 == 0, "rope: head_dim must be even, got q ", q.str());
  cpu::check_dim(k, "rope k", 0, tokens, "tokens, as in q");
  cpu::check_dim(k, "rope k", 2, head_dim, "head_dim, as in q");
  cpu::check_dim(positions, "rope positions", 0, tokens, "tokens, as in q");
  cpu::check_dim(inv_freq, "rope inv_freq", 0, head_dim / 2, "head_dim / 2");
  STEM_CHECK(q.data != k.data, "rope: q and k must be different tensors");
  const int64_t half = head_dim / 2;
  STEM_CHECK(half <= kMaxHalf, "rope: head_dim ", head_dim, " is over the supported ", 2 * kMaxHalf);
  STEM_CHECK(half % kVec == 0, "rope: head_dim must be a multiple of ", 2 * kVec, " for vector access, got q ",
             q.str());
  check_vector_rows(q, "rope q");
  check_vector_rows(k, "rope k");
  STEM_CHECK(tokens <= INT32_MAX, "rope: ", tokens, " tokens is over one launch's grid");
  STEM_CHECK(q.shape[1] + k.shape[1] <= INT32_MAX / half, "rope: too many heads in ", q.str(), " and ", k.str());
}

void check_kv_write_args(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k,
                         const TensorView& v, const TensorView& slots) {
  cpu::check_packed(k_cache, "kv_write k_cache", DType::BF16, 4);
  cpu::check_packed(v_cache, "kv_write v_cache", DType::BF16, 4);
  cpu::check_rows(k, "kv_write k", DType::BF16, 3);
  cpu::check_rows(v, "kv_write v", DType::BF16, 3);
  cpu::check_packed(slots, "kv_write slots", DType::I32, 1);
  for (int d = 0; d < 4; ++d)
    STEM_CHECK(v_cache.shape[d] == k_cache.shape[d], "kv_write: v_cache ", v_cache.str(), " must match k_cache ",
               k_cache.str());
  const int64_t tokens = k.shape[0], kv_heads = k_cache.shape[2], head_dim = k_cache.shape[3];
  cpu::check_dim(k, "kv_write k", 1, kv_heads, "KV heads, as in k_cache");
  cpu::check_dim(k, "kv_write k", 2, head_dim, "head_dim, as in k_cache");
  for (int d = 0; d < 3; ++d) STEM_CHECK(v.shape[d] == k.shape[d], "kv_write: v ", v.str(), " must match k ", k.str());
  cpu::check_dim(slots, "kv_write slots", 0, tokens, "tokens, as in k");
  check_vector_rows(k, "kv_write k");
  check_vector_rows(v, "kv_write v");
  // The caches are packed and their rows are k's (whole vectors), so an aligned start aligns every slot.
  check_vector_start(k_cache, "kv_write k_cache");
  check_vector_start(v_cache, "kv_write v_cache");
  STEM_CHECK(tokens <= INT32_MAX, "kv_write: ", tokens, " tokens is over one launch's grid");
  STEM_CHECK(k_cache.shape[0] * k_cache.shape[1] <= INT32_MAX, "kv_write: ", k_cache.shape[0] * k_cache.shape[1],
             " cache slots is over what i32 slots can address");
}

template <bool kRotate, bool kWrite, bool kFp8 = false>
void launch(const Args& a, int64_t tokens, cudaStream_t stream) {
  int64_t jobs = 0;
  if (kRotate) jobs = int64_t{a.q_heads + a.kv_heads} * (a.head_dim / 2 / kVec);
  if (kWrite) jobs = std::max<int64_t>(jobs, (kRotate ? 1 : 2) * int64_t{a.kv_heads} * a.head_dim / kVec);
  if (kFp8) jobs = std::max<int64_t>(jobs, int64_t{2} * a.kv_heads * 32);  // a warp per quantized row
  launch_pdl(rope_kv_write_kernel<kRotate, kWrite, kFp8>, static_cast<unsigned>(tokens), threads_for(jobs, 256), 0,
             stream, a);
}

// The rotation's fields of the kernel's arguments.
void set_rope(Args& a, const TensorView& q, const TensorView& k, const TensorView& positions,
              const TensorView& inv_freq) {
  a.q = q.ptr<bf16>();
  a.q_stride = cpu::row_stride(q);
  a.q_heads = static_cast<int>(q.shape[1]);
  a.k = k.ptr<bf16>();
  a.k_stride = cpu::row_stride(k);
  a.kv_heads = static_cast<int>(k.shape[1]);
  a.head_dim = static_cast<int>(k.shape[2]);
  a.positions = positions.ptr<int32_t>();
  a.inv_freq = inv_freq.ptr<float>();
}

// The cache write's fields.
void set_cache(Args& a, const TensorView& k_cache, const TensorView& v_cache, const TensorView& k,
               const TensorView& v, const TensorView& slots) {
  a.k = k.ptr<bf16>();
  a.k_stride = cpu::row_stride(k);
  a.v = v.ptr<bf16>();
  a.v_stride = cpu::row_stride(v);
  a.kv_heads = static_cast<int>(k.shape[1]);
  a.head_dim = static_cast<int>(k.shape[2]);
  a.k_cache = k_cache.ptr<bf16>();
  a.v_cache = v_cache.ptr<bf16>();
  a.slots = slots.ptr<int32_t>();
  a.n_slots = k_cache.shape[0] * k_cache.shape[1];
}

}  // namespace

void rope(const TensorView& q, const TensorView& k, const TensorView& positions, const TensorView& inv_freq,
          cudaStream_t stream) {
  check_rope_args(q, k, positions, inv_freq);
  if (q.shape[0] == 0) return;
  Args a{};
  set_rope(a, q, k, positions, inv_freq);
  launch<true, false>(a, q.shape[0], stream);
}

void kv_write(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
              const TensorView& slots, cudaStream_t stream) {
  check_kv_write_args(k_cache, v_cache, k, v, slots);
  if (k.shape[0] == 0 || k.shape[1] * k.shape[2] == 0) return;
  Args a{};
  set_cache(a, k_cache, v_cache, k, v, slots);
  launch<false, true>(a, k.shape[0], stream);
}

void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                   const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& slots, cudaStream_t stream) {
  check_rope_args(q, k, positions, inv_freq);
  check_kv_write_args(k_cache, v_cache, k, v, slots);
  if (q.shape[0] == 0) return;
  Args a{};
  set_rope(a, q, k, positions, inv_freq);
  set_cache(a, k_cache, v_cache, k, v, slots);
  launch<true, true>(a, q.shape[0], stream);
}

void rope_kv_write_fp8(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                       const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& k_scale, const TensorView& v_scale, const TensorView& slots,
                       cudaStream_t stream) {
  check_rope_args(q, k, positions, inv_freq);
  check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, "rope_kv_write_fp8");
  cpu::check_rows(v, "rope_kv_write_fp8 v", DType::BF16, 3);
  cpu::check_packed(slots, "rope_kv_write_fp8 slots", DType::I32, 1);
  const int64_t tokens = k.shape[0];
  cpu::check_dim(k, "rope_kv_write_fp8 k", 1, k_cache.shape[2], "KV heads, as in k_cache");
  cpu::check_dim(k, "rope_kv_write_fp8 k", 2, k_cache.shape[3], "head_dim, as in k_cache");
  for (int d = 0; d < 3; ++d)
    STEM_CHECK(v.shape[d] == k.shape[d], "rope_kv_write_fp8: v ", v.str(), " must match k ", k.str());
  cpu::check_dim(slots, "rope_kv_write_fp8 slots", 0, tokens, "tokens, as in k");
  STEM_CHECK(k_cache.shape[0] * k_cache.shape[1] <= INT32_MAX, "rope_kv_write_fp8: ",
             k_cache.shape[0] * k_cache.shape[1], " cache slots is over what i32 slots can address");
  if (q.shape[0] == 0) return;
  Args a{};
  set_rope(a, q, k, positions, inv_freq);
  a.v = v.ptr<bf16>();
  a.v_stride = cpu::row_stride(v);
  a.slots = slots.ptr<int32_t>();
  a.n_slots = k_cache.shape[0] * k_cache.shape[1];
  a.k_codes = k_cache.ptr<uint8_t>();
  a.v_codes = v_cache.ptr<uint8_t>();
  a.k_scale = k_scale.ptr<float>();
  a.v_scale = v_scale.ptr<float>();
  launch<true, true, true>(a, q.shape[0], stream);
}

}  // namespace stem::cuda
