// Token embedding lookup: out[t] = table[ids[t]], widened to f32.
#pragma once
#include "kernels/view.h"

namespace stem::cpu {

// out: f32 [T,H] (row-strided allowed); ids: i32 [T]; table: f32, bf16 or f16 [V,H].
// Every id is checked against [0,V) before anything is written; a bad one throws naming it.
void embedding(const TensorView& out, const TensorView& ids, const TensorView& table);

}  // namespace stem::cpu
