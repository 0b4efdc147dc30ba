// Token embedding lookup on the device: out[t] = table[ids[t]].
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// out: f32 or bf16 [T,H] (row-strided allowed; f32 when it starts the f32 residual stream);
// ids: i32 [T] on the device; table: bf16 [V,H].
// Unlike the CPU twin, ids are not validated here: they live on the device, and reading them back
// would stall the stream every step. The engine checks token ids on the host when a request
// arrives; an id outside [0,V) that still gets here is never read out of bounds: its row of out
// becomes NaN, so the mistake shows instead of silently producing plausible numbers.
void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, cudaStream_t stream = 0);

}  // namespace stem::cuda
