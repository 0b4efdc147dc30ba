// The FP8 KV cache (--kv-cache-dtype fp8): keys and values at rest as E4M3 codes in the paged
// caches' layout (1 byte an element) with an f32 scale per (token, KV head) for K and for V, in
// scale arrays [P, page_size, Hkv] indexed by the same slot. A head's D values are one row of
// quantize_rows_fp8 (kernels/cpu/fp8.h): scale = amax / 448 (1 for a row of zeros), code =
// e4m3(x / scale), round to nearest even, saturating; no calibration. A value comes back as
// fp8_to_f32(code) · scale in f32: the decode kernel does that product in registers, prefill and
// Stem read a staged copy ("FP8 at rest, bf16 in flight": stage_kv_pages, dequantize_kv_pages).
// The CPU twins here are the CPU backend's FP8 KV path and the oracle of the CUDA kernels.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/view.h"

namespace stem::cpu {

// Each token's k and v (f32 [T,Hkv,D], row-strided allowed) quantized per head into its cache slot:
// codes k_cache, v_cache F8E4M3 [P,page_size,Hkv,D] and scales k_scale, v_scale f32 [P,page_size,Hkv],
// all contiguous. Slots as kv_write (kernels/cpu/kv_write.h): every one checked first.
// Codes k_cache, v_cache F8E4M3 [P,page_size,Hkv,D] and scales k_scale, v_scale f32
// [P,page_size,Hkv], contiguous and of one another's shapes; refused naming `op` otherwise.
void check_fp8_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k_scale,
                        const TensorView& v_scale, const char* op);

void kv_write_fp8(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k_scale,
                  const TensorView& v_scale, const TensorView& k, const TensorView& v, const TensorView& slots);

// rope (kernels/cpu/rope.h), then kv_write_fp8 of the rotated k and of v: the CPU twin of
// cuda::rope_kv_write_fp8. q and k keep their rotated f32 values.
void rope_kv_write_fp8(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                       const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& k_scale, const TensorView& v_scale, const TensorView& slots);

// The pages a step's attention reads, copied (dequantized) into a staging pool numbered 0..n-1.
struct KvStagePlan {
  std::vector<int32_t> pages;       // [n]: the pool page staged as staging page i
  std::vector<int32_t> page_table;  // [S, max_pages]: the batch's table with staging page numbers
  std::vector<int32_t> unstaged;    // [S]: 1 for a sequence with rows whose pages are not staged, else 0
};

// Stages the pages of every sequence of the step with more than `min_rows` query rows, and of
// those with a row whose `also` entry is nonzero (also: empty, or [S]): its ceil(kv_len /
// page_size) pages, in sequence order. min_rows 0 stages every sequence that has a row (the CPU
// backend); the CUDA backend passes decode_max_rows, whose sequences read the FP8 cache directly,
// and the batch's Stem flags as `also` (Stem's planner reads its few-row sequences too). Entries of
// the staged table past a sequence's pages, and every entry of an unstaged sequence, are 0 (never
// read for them; a valid staging page either way). page_table i32 [S·max_pages], kv_lens [S],
// query_start [S+1] are the batch's host vectors.
KvStagePlan stage_kv_pages(const std::vector<int32_t>& page_table, int32_t max_pages,
                           const std::vector<int32_t>& kv_lens, const std::vector<int32_t>& query_start,
                           int32_t page_size, int64_t min_rows, const std::vector<uint8_t>& also = {});

// Pages `pages` (i32 [N]) of the FP8 caches (codes and scales as kv_write_fp8's) dequantized into
// staging pages 0..N-1: out[i,o,h,d] = fp8_to_f32(codes[pages[i],o,h,d]) · scale[pages[i],o,h] in
// f32. k_out, v_out: f32 [≥N,page_size,Hkv,D], contiguous. The CUDA twin writes that value rounded
// to bf16 once.
void dequantize_kv_pages(const TensorView& k_out, const TensorView& v_out, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& k_scale, const TensorView& v_scale,
                         const TensorView& pages);

}  // namespace stem::cpu
