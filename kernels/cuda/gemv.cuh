// Decode-sized projections: out = a · wᵀ + bias for a few rows of `a` (M ≤ kGemvMaxRows), where
// the step only streams the weights once. cuBLASLt leaves bandwidth unused at these shapes (the
// H100 op benchmark measured o_proj at M=1 at 64% of copy bandwidth), and one decode step is ~97%
// weight reads, so cuda::matmul sends the shapes where this measured faster here (1-4 rows; see
// gemm.cu; STEM_GEMV=0 keeps them all on cuBLASLt).
// The CPU twin is cpu::matmul, as for cuda::matmul.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

constexpr int64_t kGemvMaxRows = 8;

// Whether gemv takes these views: M ≤ kGemvMaxRows, K a multiple of 8, a and w 16-byte aligned
// with row strides in whole 8-element vectors (every Llama projection is). Shapes are checked
// by the caller (cuda::matmul).
bool gemv_accepts(const TensorView& out, const TensorView& a, const TensorView& w);

// out: bf16 or f32 [M,N]; a: bf16 [M,K]; w: bf16 [N,K]; bias: [N] of out's dtype or empty.
// Each product in f32, summed in f32 (in another order than cuBLASLt), rounded once to out's dtype.
void gemv(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
          cudaStream_t stream = 0);

}  // namespace stem::cuda
