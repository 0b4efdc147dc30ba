// The Llama MLP's gate on the device: out = silu(gate) * up, silu(x) = x / (1 + e^-x), in fp32.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// out, gate, up: bf16 [T,I], row-strided allowed, so gate and up may be the two halves of a fused
// gate_up projection's [T,2I] output; out may alias gate or up. I must be a multiple of 8.
void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up, cudaStream_t stream = 0);

}  // namespace stem::cuda
