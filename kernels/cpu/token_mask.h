// Structured outputs' token masks applied to logit rows (issue 19): the grammar of a constrained
// sequence allows a set of token ids next (structured/token_mask.h builds it as a bitmask), and
// every other id's logit becomes −inf before sampling, so the sampler (and the logprobs it reports)
// sees the masked distribution. The CPU reference of kernels/cuda/token_mask.cuh.
//
// Row r of logits x [R, V]: m = mask_of_row[r]; m < 0 leaves the row as it is (unconstrained);
// otherwise x[v] = −inf for every v whose bit (masks[m, v / 32] >> (v % 32)) & 1 is 0.
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// logits: f32 [R, V] (row-strided allowed), changed in place; masks: i32 [M, ceil(V / 32)] (the
// words' bits; packed); mask_of_row: i32 [R], each −1 or < M (checked here; the CUDA kernel, whose
// indices are in device memory, trusts its caller to have built them so).
void apply_token_mask(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row);

// The argument checks both twins make (names the bad argument).
void check_token_mask_args(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row);

}  // namespace stem::cpu
