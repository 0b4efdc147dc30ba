// Paged decode attention (flash-decoding): a few query rows per sequence against its whole cached
// context, bf16 in, fp32 math. Host declarations only, so plain C++ can include it.
//
// One CTA reads one KV head's slice of the context once for all the query heads of its group (and
// all of the sequence's rows: up to 16 query vectors, rows × Hq/Hkv, share each K/V tile). Long
// contexts are split over several CTAs that each keep a partial softmax state (output, log-sum-exp),
// merged by a second small kernel.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/view.h"

namespace stem::cuda {

// The FP8 decode kernel (the A/B of bench/RESULTS.md): kWiden widens each tile's codes to bf16 in
// shared memory behind a barrier (attention_decode_kernel.cuh); kRegisters reads the codes into
// registers and converts them there with the conversion instruction, kRegistersInt with integer
// operations (attention_decode_fp8.cuh). Chosen by STEM_FP8_DECODE=widen|regs|regs-int, read at the
// first FP8 decode, or by set_fp8_decode_kernel (tests); default kRegisters.
enum class Fp8DecodeKernel { kWiden, kRegisters, kRegistersInt };
Fp8DecodeKernel fp8_decode_kernel();
void set_fp8_decode_kernel(Fp8DecodeKernel kernel);
// The kernel a STEM_FP8_DECODE value names (null or empty: the default); anything else throws.
Fp8DecodeKernel parse_fp8_decode_kernel(const char* name);

// The most query rows a sequence may own for the decode kernel: max(1, 16 / (Hq/Hkv)).
int64_t decode_max_rows(int64_t q_heads, int64_t kv_heads);

// Arguments as kernels/cpu/attention.h's paged_attention (q, out, caches bf16; see
// attention_prefill.cuh for the layout rules), on the device. Computes the rows of every sequence
// that owns between 1 and decode_max_rows() rows this step (row r at position kv_len − n + r, causal
// among them, with the optional sliding window); rows of sequences with more rows are left untouched
// (the router hands those to the prefill kernel). Long contexts split into chunks sized from the
// page table's width, so pass a page-table view no wider than the step needs. Allocates its split
// workspace stream-ordered (cudaMallocAsync), which graph capture allows.
void paged_decode(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                  int64_t sliding_window, cudaStream_t stream);

// paged_decode over an FP8 cache (kernels/cuda/kv_fp8.cuh): codes k_cache, v_cache F8E4M3
// [P,page_size,Hkv,D] and scales f32 [P,page_size,Hkv]. Each 64-key tile's codes are read once (half
// a bf16 tile's bytes), widened to bf16 in shared memory (exact), and the scales applied in
// registers: scores q·codes times the key's scale, probabilities times the value's scale before
// P·V. The CPU twin: cpu::paged_attention over cpu::dequantize_kv_pages' code · scale values.
// only (optional, i32 [S] on the device): the sequences whose entry is 0 are skipped, their rows
// left untouched (a Stem step's staged sequences, computed from the staging).
void paged_decode_fp8(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& k_scale, const TensorView& v_scale, const TensorView& page_table,
                      const TensorView& kv_lens, const TensorView& query_start, float scale, int64_t sliding_window,
                      cudaStream_t stream, const TensorView& only = TensorView());

}  // namespace stem::cuda
