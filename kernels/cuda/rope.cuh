// Rotary position embedding on the device, in Hugging Face's rotate_half convention (dimension i
// pairs with i + D/2). The inverse frequencies come from cpu::rope_inv_freq (kernels/cpu/rope.h),
// computed once at load on the host and uploaded: they carry the rope_scaling variants, so this
// kernel needs to know nothing about them.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// Rotates q: bf16 [T,Hq,D] and k: bf16 [T,Hk,D] in place (row-strided allowed: slices of a fused
// qkv buffer). positions: i32 [T] and inv_freq: f32 [D/2], both on the device.
// Token t, pair i turns by the fp32 angle float(positions[t]) * inv_freq[i], with full-range
// sincosf (the fast intrinsics lose accuracy at the large angles of long prompts); the rotation
// is fp32 and the result is rounded to bf16 once. D must be a multiple of 16 (D/2 whole vectors).
void rope(const TensorView& q, const TensorView& k, const TensorView& positions, const TensorView& inv_freq,
          cudaStream_t stream = 0);

// rope, then kv_write (kernels/cuda/kv_write.cuh) of the rotated k and of v, in one pass: what a
// layer does with its fresh q, k and v. Both ops' contracts hold; the cached k is bit for bit the
// rotated k left in place.
void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                   const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& slots, cudaStream_t stream = 0);

}  // namespace stem::cuda
