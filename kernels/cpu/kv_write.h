// Paged KV cache write: the step's new keys and values go to the cache slots the engine chose.
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// k_cache, v_cache: f32 [P, page_size, Hkv, D], contiguous; k, v: f32 [T, Hkv, D] (row-strided
// allowed, e.g. slices of a fused qkv buffer); slots: i32 [T], token t goes to
// page slots[t] / page_size at offset slots[t] % page_size. Every slot is checked against
// [0, P * page_size) before anything is written; there is no "skip" slot.
void kv_write(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
              const TensorView& slots);

}  // namespace stem::cpu
