#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8.cuh"

namespace stem::cuda {

namespace {

constexpr int kThreads = 256;

// The larger magnitude, NaN winning (as the CPU twin's amax).
__device__ __forceinline__ float amax_of(float a, float b) { return (isnan(a) || isnan(b)) ? NAN : fmaxf(a, b); }

// One block per row: the row's amax over the block, then each element divided by the scale (IEEE
// division, as the twin's) and rounded by the hardware's satfinite conversion.
__global__ void quantize_rows_fp8_kernel(uint8_t* codes, float* scales, const __nv_bfloat16* x, int64_t x_stride,
                                         int64_t K) {
  __shared__ float warp_max[kThreads / 32];
  const int64_t r = blockIdx.x;
  const __nv_bfloat16* row = x + r * x_stride;
  float m = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) m = amax_of(m, fabsf(__bfloat162float(row[k])));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = amax_of(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) m = amax_of(m, warp_max[w]);
  const float s = m == 0.f ? 1.f : m / 448.f;
  if (threadIdx.x == 0) scales[r] = s;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    codes[r * K + k] = __nv_cvt_float_to_fp8(__fdiv_rn(__bfloat162float(row[k]), s), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace

void quantize_rows_fp8(const TensorView& codes, const TensorView& scales, const TensorView& x, cudaStream_t stream) {
  cpu::check_rows(x, "fp8 quantize x", DType::BF16, 2);
  cpu::check_packed(codes, "fp8 quantize codes", DType::F8E4M3, 2);
  cpu::check_packed(scales, "fp8 quantize scales", DType::F32, 1);
  const int64_t R = x.shape[0], K = x.shape[1];
  STEM_CHECK(codes.shape[0] == R && codes.shape[1] == K, "fp8 quantize: codes ", codes.str(), " must match x ",
             x.str());
  cpu::check_dim(scales, "fp8 quantize scales", 0, R, "one scale per row");
  if (R == 0) return;
  quantize_rows_fp8_kernel<<<static_cast<unsigned>(R), kThreads, 0, stream>>>(
      codes.ptr<uint8_t>(), scales.ptr<float>(), x.ptr<__nv_bfloat16>(), cpu::row_stride(x), K);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace stem::cuda
