// Dense projection in nn.Linear's layout: out = a · wᵀ + bias.
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// out: f32 [M,N]; a: f32 [M,K]; w: f32 [N,K] (a checkpoint's weight as stored); bias: f32 [N]
// or an empty TensorView{} for none. Any of out, a, w may be a row-strided view into a wider
// buffer (the strides become BLAS's ld*); out must not overlap a, w or bias.
void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias);

}  // namespace stem::cpu
