// Vector access helpers for the elementwise kernels: every global load and store is 16 bytes
// (8 bf16 or 4 f32 per instruction), the width that lets a warp move 512 contiguous bytes at once.
// Values are widened to f32 in registers: storage is bf16, math is f32.
// Include from .cu files only (the device half needs nvcc); launchers use the host half to check
// that a view can be read that way before they launch.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cpu/rows.h"
#include "kernels/view.h"

namespace stem::cuda {

using bf16 = __nv_bfloat16;

// Elements one thread moves per vector step; 8 so that a bf16 row and an f32 row step together
// (16 bytes of bf16 = 32 bytes of f32 = two float4).
constexpr int kVec = 8;

// ---- device half ----

__device__ __forceinline__ void load8(const bf16* p, float (&v)[kVec]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void load8(const float* p, float (&v)[kVec]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// Round to nearest even, as f32_to_bf16 on the host does.
__device__ __forceinline__ void store8(bf16* p, const float (&v)[kVec]) {
  uint4 raw;
  __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) pairs[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ void store8(float* p, const float (&v)[kVec]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Sum over the block; every thread gets the total. blockDim.x must be a multiple of 32.
// `scratch` holds 32 floats of shared memory; a second call on the same scratch needs a
// __syncthreads() first (slow warps may still be reading it).
__device__ __forceinline__ float block_sum(float x, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// ---- host half ----

// Threads per block: enough for `jobs`, in whole warps, within [32, cap].
inline int threads_for(int64_t jobs, int cap) {
  const int64_t warps = (jobs + 31) / 32;
  return static_cast<int>(warps < 1 ? 32 : (warps * 32 > cap ? cap : warps * 32));
}

// A row view that the kernels read or write 8 elements at a time: 16-byte aligned start, and
// rows (and row strides) in whole vectors. Every Llama-family hidden, intermediate and head size
// is a multiple of 8, so only a mis-sliced view trips this.
inline void check_vector_start(const TensorView& v, const char* name) {
  STEM_CHECK(reinterpret_cast<uintptr_t>(v.data) % 16 == 0, name,
             " must start on a 16-byte boundary for vector access, got ", v.str(), " at ", v.data);
}

inline void check_vector_rows(const TensorView& v, const char* name) {
  check_vector_start(v, name);
  STEM_CHECK(cpu::row_size(v) % kVec == 0, name, " rows must hold a multiple of ", kVec, " elements, got ", v.str());
  STEM_CHECK(cpu::row_stride(v) % kVec == 0, name, " row stride must be a multiple of ", kVec, " elements, got ",
             cpu::row_stride(v), " for ", v.str());
}

}  // namespace stem::cuda
