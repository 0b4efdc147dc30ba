// Teacher-forced scoring of logit rows: per row, the log-probability of a given target token and
// the greedy (argmax) token, so that perplexity and next-token accuracy over long prompts need
// only two numbers per row back from the device instead of the whole row (bench/eval/: at 32K
// positions a 152K vocabulary's logits are 20 GB). The CPU reference of kernels/cuda/token_logprob.cuh.
//
// Row r of logits x (f32, NaN read as −inf):
//   argmax[r]  = the lowest id v of the largest x[v]
//   logprob[r] = x[t] − m − log Σ_v exp(x[v] − m), m = max_v x[v], t = targets[r], the sum in double;
//                0 when t < 0 (a row with no target, e.g. a prompt's last position)
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// logits: f32 [R, V] (row-strided allowed); targets: i32 [R], each < V (−1: none);
// logprob: f32 [R]; argmax: i32 [R].
void token_logprob(const TensorView& logprob, const TensorView& argmax, const TensorView& logits,
                   const TensorView& targets);

}  // namespace stem::cpu
