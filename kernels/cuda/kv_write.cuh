// Paged KV cache write on the device: the step's new keys and values go to the slots the engine chose.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/view.h"

namespace stem::cuda {

// k_cache, v_cache: bf16 [P, page_size, Hkv, D], contiguous; k, v: bf16 [T, Hkv, D] (row-strided
// allowed, e.g. slices of a fused qkv buffer); slots: i32 [T] on the device, token t goes to page
// slots[t] / page_size at offset slots[t] % page_size. Hkv * D must be a multiple of 8.
// Unlike the CPU twin, slots are not validated here (they live on the device; reading them back
// would stall every step): the engine builds them from its own page tables and checks them on the
// host. A slot outside [0, P * page_size) that still gets here is skipped, never written out of
// bounds.
void kv_write(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
              const TensorView& slots, cudaStream_t stream = 0);

}  // namespace stem::cuda
