// RMSNorm as Hugging Face Llama computes it in fp32: x * rsqrt(mean(x^2) + eps) * weight.
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// out, x: f32 [T,H] (row-strided allowed; out may alias x); weight: f32 [H].
void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps);

// The forward pass's fused residual step: residual += x in place, then out = rmsnorm(residual).
// out, residual, x: f32 [T,H]; weight: f32 [H]. out may alias x (each row of x is read before
// that row of out is written), but not residual.
void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                 float eps);

}  // namespace stem::cpu
