// The Hopper path of block_sparse_prefill (kernels/cuda/attention_prefill_sm90_kernel.cuh): when it
// applies, and its launcher. Included by the prefill launchers (.cu files) only.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_prefill_kernel.cuh"

namespace stem::cuda::sm90 {

// Whether a launch of this shape takes the wgmma/TMA kernel: a compute capability 9.0 device (the
// sm_90a code runs there only), head dim 128, pages of at least 8 tokens (each TMA box must fill
// whole 1024-byte swizzle atoms), and the switch on. The environment variable STEM_PREFILL_SM90
// is read at each call, so that tests and benchmarks can compare the kernels in one process:
// 0 turns the path off (the mma.sync kernel runs), 1 to 7 pick a build of the Hopper kernel
// (consumer schedule, ring depth, Q buffers; attention_prefill_sm90.cu lists them), unset = 3.
bool use_prefill_sm90(const attn::AttentionShape& s);

// Launches the kernel over a persistent grid; p is filled as for the mma.sync kernel.
void launch_prefill_sm90(const attn::AttentionShape& s, const attn::PrefillParams& p, cudaStream_t stream,
                         const char* op);

}  // namespace stem::cuda::sm90
