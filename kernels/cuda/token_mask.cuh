// Structured outputs' token masks on the device (issue 19): cpu::apply_token_mask's definition
// (kernels/cpu/token_mask.h), so that a constrained row's logits never leave the GPU. One thread
// per mask word (32 token ids): it reads the word once and writes −inf to the ids whose bit is 0;
// unconstrained rows (mask −1) cost one read of their index.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// logits: f32 [R, V] on the device (row-strided allowed), changed in place; masks: i32
// [M, ceil(V / 32)] and mask_of_row: i32 [R] on the device (each −1 or < M: not checked on the
// device). Asynchronous on `stream`.
void apply_token_mask(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row,
                      cudaStream_t stream = 0);

}  // namespace stem::cuda
