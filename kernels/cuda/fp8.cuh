// FP8 (E4M3) on the device, the first piece of issue 18's FP8 path: per-token quantization of bf16
// activations, the twin of cpu::quantize_rows_fp8 (kernels/cpu/fp8.h). Nothing on the serving path
// calls it yet; tests/cuda/test_fp8.cc holds it to its twin, bit for bit.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// For each row r of x (bf16 [R,K], any row stride): scales[r] = amax_r / 448 (1 for a row of
// zeros; NaN when the row holds one), codes[r,k] = e4m3(x[r,k] / scales[r]) rounded to nearest
// even and saturated at ±448 (cvt.rn.satfinite). codes: F8E4M3 [R,K] packed; scales: f32 [R].
void quantize_rows_fp8(const TensorView& codes, const TensorView& scales, const TensorView& x,
                       cudaStream_t stream = 0);

}  // namespace stem::cuda
