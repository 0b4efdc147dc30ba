// Rotary position embedding in Hugging Face's rotate_half convention: dimension i is paired
// with i + D/2 (not interleaved), the layout HF Llama checkpoints' q/k projections expect.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/view.h"

namespace stem::cpu {

// config.json's "rope_scaling"; Kind::None when it is absent or null.
struct RopeScaling {
  enum class Kind { None, Linear, Llama3 } kind = Kind::None;
  double factor = 1;
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  int64_t original_max_position_embeddings = 8192;
};

// The D/2 inverse frequencies, computed in fp32 step by step as transformers does (default,
// "linear": inv_freq / factor, "llama3": Llama 3.1's wavelength-based smooth interpolation),
// so that angles match HF's to the last bit wherever libm agrees with torch. Host-side: done
// once at load, then uploaded for a device kernel.
std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling);

// Rotates q: f32 [T,Hq,D] and k: f32 [T,Hk,D] in place (row-strided allowed, so they may be
// slices of a fused qkv buffer). positions: i32 [T]; inv_freq: f32 [D/2].
// Token t, pair i turns by the fp32 angle float(positions[t]) * inv_freq[i], as HF computes it.
void rope(const TensorView& q, const TensorView& k, const TensorView& positions, const TensorView& inv_freq);

// rope, then kv_write (kernels/cpu/kv_write.h) of the rotated k and of v: a layer's step with its
// fresh q, k and v, and the CPU twin of cuda::rope_kv_write.
void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                   const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& slots);

}  // namespace stem::cpu
