// The Llama MLP's gate: out = silu(gate) * up, silu(x) = x / (1 + e^-x).
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// out, gate, up: f32 [T,I], row-strided allowed, so gate and up may be the two halves of a
// fused gate_up projection's [T,2I] output; out may alias gate or up.
void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up);

}  // namespace stem::cpu
