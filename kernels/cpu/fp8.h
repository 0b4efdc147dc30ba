// FP8 E4M3 (float8_e4m3fn: 1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities,
// NaN at 0x7F/0xFF, largest finite 448, smallest subnormal 2^-9) and the CPU twins of the FP8
// path: per-row quantization (a weight's output channels, an activation's tokens) and the FP8 GEMM.
// The rounding is the GPU's cvt.rn.satfinite: to nearest, ties to even; anything beyond ±448
// (infinities too) saturates to ±448; NaN stays NaN (0x7F).
#pragma once
#include <cstdint>

#include "kernels/view.h"

namespace stem::cpu {

constexpr float kFp8Max = 448.f;

float fp8_to_f32(uint8_t code);
uint8_t f32_to_fp8(float x);
// bf16 -> f32 is exact, so these are f32_to_fp8 / fp8_to_f32 (every E4M3 value is a bf16 value).
inline uint8_t bf16_to_fp8(uint16_t h) { return f32_to_fp8(bf16_to_f32(h)); }
inline uint16_t fp8_to_bf16(uint8_t code) { return f32_to_bf16(fp8_to_f32(code)); }

// Quantizes each row r of x (f32 [R,K], any row stride) on its own: scales[r] = amax_r / 448
// (1 for a row of zeros), codes[r,k] = e4m3(x[r,k] / scales[r]) (codes: F8E4M3 [R,K] packed,
// scales: f32 [R]). A weight [N,K] gets a scale per output channel; activations [T,K] a scale per
// token (dynamic quantization). A row holding inf or NaN gets a non-finite scale.
void quantize_rows_fp8(const TensorView& codes, const TensorView& scales, const TensorView& x);

// out[r,k] = e4m3 value of codes[r,k] · scales[r] (scales empty: 1, i.e. the codes widened to f32,
// which is exact). out: f32 [R,K], any row stride.
void dequantize_rows_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales);

// out[m,n] = (Σ_k a[m,k]·w[n,k]) · (a_scale[m]·w_scale[n]) + bias[n]: the GEMM of values already
// quantized, with the scales applied after the sum, as the GPU's epilogue does. a: f32 [M,K], w:
// f32 [N,K] (any row stride), a_scale f32 [M], w_scale f32 [N], bias f32 [N] or empty. When a and w
// hold E4M3 values each product is exact in f32 (4 + 4 significant bits) and only the sum rounds.
void scaled_matmul(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
                   const TensorView& w_scale, const TensorView& bias);

// The FP8 GEMM twin: a (F8E4M3 [M,K]) and w (F8E4M3 [N,K]) widened to f32, then scaled_matmul.
void fp8_matmul(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
                const TensorView& w_scale, const TensorView& bias);

}  // namespace stem::cpu
