#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/rope.cuh"

namespace stem::cuda {

namespace {

constexpr int kMaxHalf = 512;  // cos and sin of one token live in shared memory

// One block per token: the D/2 cos/sin pairs are computed once into shared memory, then every
// head of q and k (they share the angles) is rotated 8 pairs per thread step.
__global__ void rope_kernel(bf16* q, int64_t q_stride, int q_heads, bf16* k, int64_t k_stride, int k_heads,
                            const int32_t* __restrict__ positions, const float* __restrict__ inv_freq, int half) {
  __shared__ float cos_sin[2 * kMaxHalf];
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) sincosf(pos * inv_freq[i], &cos_sin[half + i], &cos_sin[i]);
  // The angles come from the host's positions and the weights; q and k from the kernel before.
  pdl_wait();
  pdl_launch_dependents();
  __syncthreads();

  const int vecs_per_half = half / kVec, head_dim = 2 * half;
  const int jobs = (q_heads + k_heads) * vecs_per_half;
  for (int job = threadIdx.x; job < jobs; job += blockDim.x) {
    const int head = job / vecs_per_half, first = (job % vecs_per_half) * kVec;
    bf16* lo = head < q_heads ? q + t * q_stride + head * head_dim : k + t * k_stride + (head - q_heads) * head_dim;
    lo += first;
    bf16* hi = lo + half;
    float a[kVec], b[kVec];
    load8(lo, a);
    load8(hi, b);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float c = cos_sin[first + j], s = cos_sin[half + first + j];
      const float x1 = a[j], x2 = b[j];
      a[j] = x1 * c - x2 * s;
      b[j] = x2 * c + x1 * s;
    }
    store8(lo, a);
    store8(hi, b);
  }
}

}  // namespace

void rope(const TensorView& q, const TensorView& k, const TensorView& positions, const TensorView& inv_freq,
          cudaStream_t stream) {
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
  if (tokens == 0) return;
  STEM_CHECK(tokens <= INT32_MAX, "rope: ", tokens, " tokens is over one launch's grid");
  STEM_CHECK(q.shape[1] + k.shape[1] <= INT32_MAX / half, "rope: too many heads in ", q.str(), " and ", k.str());

  const int64_t jobs = (q.shape[1] + k.shape[1]) * (half / kVec);
  launch_pdl(rope_kernel, static_cast<unsigned>(tokens), threads_for(jobs, 256), 0, stream, q.ptr<bf16>(),
             cpu::row_stride(q), static_cast<int>(q.shape[1]), k.ptr<bf16>(), cpu::row_stride(k),
             static_cast<int>(k.shape[1]), positions.ptr<int32_t>(), inv_freq.ptr<float>(), static_cast<int>(half));
}

}  // namespace stem::cuda
