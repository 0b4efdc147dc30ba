// Decode-sized FP8 projections (issue 18): out = bf16((a · wᵀ) · a_scale · w_scale + bias) for a
// few rows of E4M3 activations (M ≤ kFp8GemvMaxRows), streaming the E4M3 weights once. cuBLASLt's
// FP8 GEMM with vector scales ran the 8B qkv at M=1 in 22.0 us on the H100 (38% of copy bandwidth
// on the bytes it reads; bf16, twice the bytes, took 22.8 us), and a decode step at batch 1 was no
// faster in FP8 than in bf16, so cuda::fp8_matmul sends a few rows here (gemm.cuh's kFp8GemvRows;
// STEM_FP8_GEMV=0 keeps them all on cuBLASLt).
// The CPU twin is cpu::fp8_matmul (kernels/cpu/fp8.h), as for cuda::fp8_matmul.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

constexpr int64_t kFp8GemvMaxRows = 8;

// Whether fp8_gemv takes these views: M ≤ kFp8GemvMaxRows, K a multiple of 16, a and w 16-byte
// aligned with row strides in whole 16-byte vectors (every Llama projection is). Shapes are
// checked by the caller (cuda::fp8_matmul).
bool fp8_gemv_accepts(const TensorView& out, const TensorView& a, const TensorView& w);

// out: bf16 [M,N] (any row stride); a: F8E4M3 [M,K]; w: F8E4M3 [N,K]; a_scale f32 [M], w_scale
// f32 [N] (device memory, packed); bias bf16 [N] or empty. The twin's arithmetic: each product of
// two E4M3 values exact in f32, the products summed in f32 (in another order than the twin:
// lanes stride over K, then a warp reduction), the sum times (a_scale[m]·w_scale[n]) in f32, plus
// the bias in f32, rounded once to bf16. (cuda::fp8_matmul's cuBLASLt path rounds to bf16 before
// it adds the bias; here the bias is added before the one rounding, as the twin does.)
// Any N; a NaN code (0x7F/0xFF) gives NaN, as in the twin.
// The kernel's shape (fp8_gemv.cu's Variant: rows per warp, loads in flight, warps per block,
// early weight loads), 0 .. fp8_gemv_variants() - 1, or -1: chosen by the number of rows (the
// default, from the H100 sweep in bench/RESULTS.md). STEM_FP8_GEMV_VARIANT, read at the first call,
// or set_fp8_gemv_variant (tests, bench_ops --fp8-gemv-sweep) fix one. Every variant computes the
// same sums in the same order (each lane's strided products, then the warp's shuffle reduction),
// so they give the same bits.
int fp8_gemv_variants();
int fp8_gemv_variant();
void set_fp8_gemv_variant(int variant);

void fp8_gemv(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
              const TensorView& w_scale, const TensorView& bias, cudaStream_t stream = 0);

}  // namespace stem::cuda
