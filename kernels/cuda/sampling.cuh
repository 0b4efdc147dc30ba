// Sampling on the device: the same op as cpu::sample (kernels/cpu/sampling.h holds the
// definition every choice here follows), one thread block per logit row, so the logits never
// leave the device; only R tokens (and the logprobs asked for) come back.
//
// Per row, in passes over the row (V up to 2^31):
//   - penalties (only rows with active penalties and a non-empty list): the row is copied into
//     `scratch` and the listed tokens changed there; every other row is read in place;
//   - argmax (ties: lower id) fused with the raw log-sum-exp when logprobs are wanted: a greedy
//     row without penalties or logprobs costs exactly one read of its logits;
//   - top-k and top-p thresholds by radix select on the float bits (4 passes of 8-bit digits,
//     histograms of counts for top-k, of probability mass in double for top-p), no sort;
//     ties at a threshold are all kept, as in the twin;
//   - min-p as a per-token predicate; the draw by a block-wide prefix sum of e in id order;
//   - top-n logprobs (n <= 20) by radix select on the raw logits, ties resolved by a
//     prefix count in id order (lower ids first), then a tiny sort of the n winners.
// Probabilities (e = exp((w − max)/T)) and their sums are double, as in the twin, so the GPU
// and the twin pick different tokens only when the draw or a top-p/min-p boundary falls within
// ~1e-12 (relative) of a decision: tests/cuda/test_sampling.cc checks exactly that.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cpu/sampling.h"

namespace stem::cuda {

// Everything in device memory. logits: f32 [R, V] (row-strided allowed), read only.
// in: rows [R], penalty_offsets [R+1] and penalties, all device pointers (penalties may be null
// when no row has any). scratch: f32 [R, V] (row-strided allowed); only rows with active
// penalties and a non-empty list are written there. out: device views as cpu::sample's.
// Asynchronous on `stream`, like every launcher.
void sample(const SamplingOutputs& out, const TensorView& logits, const SamplingInputs& in,
            const TensorView& scratch, cudaStream_t stream = 0);

}  // namespace stem::cuda
