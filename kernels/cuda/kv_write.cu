#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/kv_write.cuh"

namespace stem::cuda {

namespace {

// One block per token: its [Hkv * D] row of k goes to one cache row and its row of v to the other.
// A slot is one row of the cache seen as [P * page_size, Hkv * D].
__global__ void kv_write_kernel(bf16* __restrict__ k_cache, bf16* __restrict__ v_cache, const bf16* __restrict__ k,
                                int64_t k_stride, const bf16* __restrict__ v, int64_t v_stride,
                                const int32_t* __restrict__ slots, int64_t n_slots, int vecs_per_row) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int32_t slot = slots[t];
  if (slot < 0 || slot >= n_slots) return;
  const int64_t row = int64_t{vecs_per_row} * kVec;
  for (int job = threadIdx.x; job < 2 * vecs_per_row; job += blockDim.x) {
    const bool is_v = job >= vecs_per_row;
    const int64_t col = int64_t{is_v ? job - vecs_per_row : job} * kVec;
    // A straight 16-byte copy: no widening needed.
    const uint4 val = *reinterpret_cast<const uint4*>((is_v ? v + t * v_stride : k + t * k_stride) + col);
    *reinterpret_cast<uint4*>((is_v ? v_cache : k_cache) + slot * row + col) = val;
  }
}

}  // namespace

void kv_write(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
              const TensorView& slots, cudaStream_t stream) {
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
  const int64_t n_slots = k_cache.shape[0] * k_cache.shape[1];
  if (tokens == 0 || kv_heads * head_dim == 0) return;
  STEM_CHECK(tokens <= INT32_MAX, "kv_write: ", tokens, " tokens is over one launch's grid");
  STEM_CHECK(n_slots <= INT32_MAX, "kv_write: ", n_slots, " cache slots is over what i32 slots can address");

  const int vecs_per_row = static_cast<int>(kv_heads * head_dim / kVec);
  launch_pdl(kv_write_kernel, static_cast<unsigned>(tokens), threads_for(2 * vecs_per_row, 256), 0, stream,
             k_cache.ptr<bf16>(), v_cache.ptr<bf16>(), k.ptr<bf16>(), cpu::row_stride(k), v.ptr<bf16>(),
             cpu::row_stride(v), slots.ptr<int32_t>(), n_slots, vecs_per_row);
}

}  // namespace stem::cuda
