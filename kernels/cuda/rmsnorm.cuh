// RMSNorm on the device, as HF Llama computes it in fp32: x * rsqrt(mean(x^2) + eps) * weight.
//
// Precision: the residual stream stays f32 [T,H] on the device (HF's bf16 models round it to bf16
// after every layer; keeping it f32 costs 2 extra bytes per element and removes 2·L roundings of
// the quantity every layer adds into). The normalised output, which only feeds bf16 GEMMs, is bf16.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// out: bf16 [T,H]; x: f32 (the residual stream) or bf16 [T,H]; weight: bf16 [H]. Row-strided
// views allowed; out may alias x when x is bf16. H must be a multiple of 8 and at most 32768.
void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps, cudaStream_t stream = 0);

// The forward pass's fused residual step: residual += x in place (f32), then
// out = rmsnorm(residual) in bf16. residual: f32 [T,H]; x: bf16 [T,H] (an attention or MLP
// output); out: bf16 [T,H], may alias x (a row of x is read before that row of out is written),
// not residual; weight: bf16 [H].
void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                 float eps, cudaStream_t stream = 0);

// FP8 (issue 18): the same, and out's rows quantized for the FP8 GEMM that reads them, in the same
// pass: codes (F8E4M3 [T,H], packed) and scales (f32 [T]) equal what
// cuda::quantize_rows_fp8(codes, scales, out) gives from the bf16 out, bit for bit (fp8_row.cuh).
// out is written as before (the LM head reads the last norm's bf16 rows).
void rmsnorm_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales, const TensorView& x,
                 const TensorView& weight, float eps, cudaStream_t stream = 0);
void add_rmsnorm_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales,
                     const TensorView& residual, const TensorView& x, const TensorView& weight, float eps,
                     cudaStream_t stream = 0);

}  // namespace stem::cuda
