// Teacher-forced scoring of logit rows on the device (the CPU reference and the definition:
// kernels/cpu/token_logprob.h): per row the log-probability of a target token and the argmax.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// logits: f32 [R, V] (row-strided allowed); targets: i32 [R] (−1: none; not validated here, they
// live on the device: a target ≥ V gives a NaN logprob); logprob: f32 [R]; argmax: i32 [R]; all on
// the device. The exponentials are f32, their sum f64: within ~1e-6 of the CPU twin.
void token_logprob(const TensorView& logprob, const TensorView& argmax, const TensorView& logits,
                   const TensorView& targets, cudaStream_t stream = 0);

}  // namespace stem::cuda
