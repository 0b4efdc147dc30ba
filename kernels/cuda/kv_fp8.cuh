// The FP8 KV cache on the device (--kv-cache-dtype fp8; the layout and the arithmetic are the CPU
// twins', kernels/cpu/kv_fp8.h): E4M3 codes in the paged caches' layout and an f32 scale per
// (token, KV head). Writing is rope_kv_write_fp8 (after RoPE, quantized per head row); decode reads
// the codes directly (paged_decode_fp8, attention_decode.cuh); prefill and Stem read bf16 pages
// staged by dequantize_kv_pages ("FP8 at rest, bf16 in flight"). Host declarations only.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cpu/kv_fp8.h"
#include "kernels/cpu/rows.h"
#include "kernels/view.h"

namespace stem::cuda {

// The CPU twin's layout (cpu::check_fp8_kv_cache), head_dim a multiple of 16 and every array
// 16-byte aligned.
inline void check_fp8_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k_scale,
                               const TensorView& v_scale, const char* op) {
  cpu::check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, op);  // the twin's layout
  STEM_CHECK(k_cache.shape[3] % 16 == 0, op, ": head_dim must be a multiple of 16, got ", k_cache.str());
  for (const TensorView* t : {&k_cache, &v_cache, &k_scale, &v_scale})
    STEM_CHECK(reinterpret_cast<uintptr_t>(t->data) % 16 == 0, op, ": the FP8 cache and its scales must start 16-byte aligned");
}

// rope (rope.cuh), then the rotated k and v quantized into their slots of the FP8 cache: per
// (token, KV head) row, scale = amax / 448 of the row's bf16 values (1 for zeros) and codes
// e4m3(x / scale), rounded to nearest even with saturation: cuda::quantize_rows_fp8's arithmetic,
// so the codes and scales equal cpu::kv_write_fp8 of the bf16 rotated k (left in place, bit for bit
// rope's) and of v. Slots as kv_write (kv_write.cuh): one outside the cache is skipped.
void rope_kv_write_fp8(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                       const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& k_scale, const TensorView& v_scale, const TensorView& slots,
                       cudaStream_t stream = 0);

// Staging: pages `pages` (i32 [N] on the device) of the FP8 cache into bf16 pages 0..N-1 of k_out,
// v_out (bf16 [≥N,page_size,Hkv,D], contiguous): bf16(fp8_to_f32(code) · scale), the product in f32
// and one rounding (cpu::dequantize_kv_pages rounded to bf16). Page ids are not read on the host;
// one outside [0, P) leaves its staging page unwritten. Launched the ordinary way (no PDL).
void dequantize_kv_pages(const TensorView& k_out, const TensorView& v_out, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& k_scale, const TensorView& v_scale,
                         const TensorView& pages, cudaStream_t stream = 0);

}  // namespace stem::cuda
