// Device helpers for quantizing a row to FP8 (E4M3) inside another kernel: the RMSNorm and SwiGLU
// that produce the FP8 GEMMs' activations (rmsnorm.cuh, swiglu.cuh) quantize their own bf16
// output in the same pass, with exactly the arithmetic of cuda::quantize_rows_fp8 (fp8.cu): the
// row's amax over the bf16 values (NaN winning), scale = amax / 448 (1 for a row of zeros), each
// value divided by the scale in IEEE f32 and rounded to nearest even with saturation. So a fused
// kernel's codes and scales equal quantize_rows_fp8 run on its output, bit for bit.
// Include from .cu files only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace stem::cuda::fp8_row {

// The larger magnitude, NaN winning (as the CPU twin's amax).
__device__ __forceinline__ float amax_of(float a, float b) { return (isnan(a) || isnan(b)) ? NAN : fmaxf(a, b); }

// amax over the block; every thread gets it. blockDim.x a multiple of 32; `scratch` 32 floats of
// shared memory, free (a __syncthreads() after any earlier use of it).
__device__ __forceinline__ float block_amax(float x, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = amax_of(x, __shfl_xor_sync(0xffffffffu, x, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = amax_of(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float scale_of(float amax) { return amax == 0.f ? 1.f : amax / 448.f; }

// The value bf16 storage keeps of x (round to nearest even, as store8).
__device__ __forceinline__ float bf16_value(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Eight values (already bf16 values) as E4M3 codes at p (8-byte aligned).
__device__ __forceinline__ void store8_codes(uint8_t* p, const float (&v)[8], float scale) {
  uint8_t c[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) c[j] = __nv_cvt_float_to_fp8(__fdiv_rn(v[j], scale), __NV_SATFINITE, __NV_E4M3);
  uint2 raw;
  raw.x = uint32_t{c[0]} | uint32_t{c[1]} << 8 | uint32_t{c[2]} << 16 | uint32_t{c[3]} << 24;
  raw.y = uint32_t{c[4]} | uint32_t{c[5]} << 8 | uint32_t{c[6]} << 16 | uint32_t{c[7]} << 24;
  *reinterpret_cast<uint2*>(p) = raw;
}

}  // namespace stem::cuda::fp8_row
