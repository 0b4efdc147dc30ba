#include <cmath>
#include <cstdint>

#include "kernels/cpu/rows.h"
#include "kernels/cpu/token_mask.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/token_mask.cuh"

namespace stem::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void token_mask_kernel(float* __restrict__ logits, int64_t stride, int64_t vocab,
                                  const uint32_t* __restrict__ masks, int64_t words,
                                  const int32_t* __restrict__ mask_of_row) {
  const int32_t m = mask_of_row[blockIdx.x];
  if (m < 0) return;
  const int64_t word = int64_t{blockIdx.y} * kThreads + threadIdx.x;
  if (word >= words) return;
  const uint32_t allowed = masks[int64_t{m} * words + word];
  if (allowed == 0xffffffffu) return;
  float* x = logits + int64_t{blockIdx.x} * stride;
  const int64_t first = word * 32;
  const int n = static_cast<int>(vocab - first < 32 ? vocab - first : 32);
  for (int b = 0; b < n; ++b)
    if (!((allowed >> b) & 1u)) x[first + b] = -INFINITY;
}

}  // namespace

void apply_token_mask(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row,
                      cudaStream_t stream) {
  cpu::check_token_mask_args(logits, masks, mask_of_row);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1], words = masks.shape[1];
  STEM_CHECK(rows <= INT32_MAX, "token_mask: ", rows, " rows is over one launch's grid");
  if (rows == 0 || vocab == 0) return;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>((words + kThreads - 1) / kThreads));
  token_mask_kernel<<<grid, kThreads, 0, stream>>>(logits.ptr<float>(), cpu::row_stride(logits), vocab,
                                                   reinterpret_cast<const uint32_t*>(masks.ptr<int32_t>()), words,
                                                   mask_of_row.ptr<int32_t>());
  STEM_CUDA_CHECK_LAUNCH();
}

}  // namespace stem::cuda
