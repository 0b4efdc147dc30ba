// The Llama MLP's gate on the device: out = silu(gate) * up, silu(x) = x / (1 + e^-x), in fp32.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// out, gate, up: bf16 [T,I], row-strided allowed, so gate and up may be the two halves of a fused
// gate_up projection's [T,2I] output; out may alias gate or up. I must be a multiple of 8.
void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up, cudaStream_t stream = 0);

// FP8 (issue 18): the same, and out's rows quantized for the FP8 GEMM that reads them (the down
// projection): codes (F8E4M3 [T,I], packed) and scales (f32 [T]) equal what
// cuda::quantize_rows_fp8(codes, scales, out) gives from the bf16 out, bit for bit (fp8_row.cuh).
void swiglu_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales, const TensorView& gate,
                const TensorView& up, cudaStream_t stream = 0);

}  // namespace stem::cuda
