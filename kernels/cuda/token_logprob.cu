#include <climits>
#include <cmath>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/token_logprob.cuh"

namespace stem::cuda {

namespace {

constexpr int kThreads = 512;

// NaN counts as −inf, as in the CPU twin.
__device__ __forceinline__ float clean(float x) { return isnan(x) ? -INFINITY : x; }

// The larger (value, −id) pair: the lowest id among equal values.
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

// One block per row: the max and its lowest id, then Σ exp(x − max) in double, then the target's
// log-probability. Two passes over the row (it is read from L2 the second time for rows up to a
// few MB).
__global__ void token_logprob_kernel(float* __restrict__ logprob, int32_t* __restrict__ argmax,
                                     const float* __restrict__ logits, int64_t stride, int64_t vocab,
                                     const int32_t* __restrict__ targets) {
  __shared__ float s_val[kThreads / 32];
  __shared__ int s_idx[kThreads / 32];
  __shared__ double s_sum[kThreads / 32];
  const float* x = logits + blockIdx.x * stride;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  float v = -INFINITY;
  int idx = INT_MAX;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) better(v, idx, clean(x[j]), static_cast<int>(j));
  for (int off = 16; off > 0; off /= 2)
    better(v, idx, __shfl_xor_sync(0xffffffffu, v, off), __shfl_xor_sync(0xffffffffu, idx, off));
  if (lane == 0) s_val[warp] = v, s_idx[warp] = idx;
  __syncthreads();
  v = s_val[0];
  idx = s_idx[0];
  for (int w = 1; w < kThreads / 32; ++w) better(v, idx, s_val[w], s_idx[w]);
  if (idx == INT_MAX) idx = 0;  // every value −inf (or NaN): id 0, as the twin's first
  const float m = v;

  double sum = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) sum += static_cast<double>(expf(clean(x[j]) - m));
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) s_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += s_sum[w];
    const int32_t t = targets[blockIdx.x];
    argmax[blockIdx.x] = idx;
    float lp = 0.f;
    if (t >= vocab) lp = NAN;
    else if (t >= 0) lp = static_cast<float>(static_cast<double>(clean(x[t])) - m - log(total));
    logprob[blockIdx.x] = lp;
  }
}

}  // namespace

void token_logprob(const TensorView& logprob, const TensorView& argmax, const TensorView& logits,
                   const TensorView& targets, cudaStream_t stream) {
  cpu::check_rows(logits, "token_logprob logits", DType::F32, 2);
  cpu::check_packed(targets, "token_logprob targets", DType::I32, 1);
  cpu::check_packed(logprob, "token_logprob logprob", DType::F32, 1);
  cpu::check_packed(argmax, "token_logprob argmax", DType::I32, 1);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  cpu::check_dim(targets, "token_logprob targets", 0, rows, "rows, as in logits");
  cpu::check_dim(logprob, "token_logprob logprob", 0, rows, "rows, as in logits");
  cpu::check_dim(argmax, "token_logprob argmax", 0, rows, "rows, as in logits");
  STEM_CHECK(vocab > 0 && vocab < INT32_MAX, "token_logprob: a vocabulary of ", vocab, " columns");
  STEM_CHECK(rows <= INT32_MAX, "token_logprob: ", rows, " rows is over one launch's grid");
  if (rows == 0) return;
  token_logprob_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logprob.ptr<float>(), argmax.ptr<int32_t>(), logits.ptr<float>(), cpu::row_stride(logits), vocab,
      targets.ptr<int32_t>());
  STEM_CUDA_CHECK_LAUNCH();
}

}  // namespace stem::cuda
