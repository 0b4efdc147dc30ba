// Dense projections on the device through cuBLASLt, in nn.Linear's layout: out = a · wᵀ + bias.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>

#include "kernels/view.h"

namespace stem::cuda {

// How fp8_matmul applies its two scale vectors: in cuBLASLt's epilogue
// (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F), or by running cuBLASLt with unit scales into bf16
// and scaling after with a kernel of ours (one more bf16 rounding, one more pass over out).
// Auto (the default): cuBLASLt's, falling back to ours for a shape where cuBLASLt has no algorithm
// with vector scales or fails to run one. The environment variable STEM_FP8_SCALES=cublaslt or
// =epilogue picks one for a process.
enum class Fp8Scales { Auto, CublasLt, Epilogue };

// What every cuBLASLt GEMM needs and is costly to make: the library handle, a workspace, and the
// algorithm chosen for each shape (the fastest of cuBLASLt's heuristic candidates, timed on the
// first matmul of each shape bucket of up to 256 rows: see gemm.cu; STEM_GEMM_TUNE=0 takes the
// heuristic's first).
// Make one per engine thread and keep it: it is not thread-safe, and matmuls that share it must run
// on one stream (or streams ordered with each other), since they share the workspace.
// Nothing touches the GPU until the first matmul, so argument errors surface without a device.
class GemmContext {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;  // what cuBLAS asks for on Hopper

  explicit GemmContext(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  // How many shapes have a chosen algorithm (for tests and metrics).
  size_t cached_plans() const;
  // How many shape buckets were tuned by timing candidates.
  size_t tunings() const;
  // Whether matmuls of a few rows go to cuda::gemv (default: yes, unless STEM_GEMV=0).
  void set_gemv(bool on);
  // Whether fp8_matmuls of a few rows go to cuda::fp8_gemv (default: yes, unless STEM_FP8_GEMV=0).
  void set_fp8_gemv(bool on);
  void set_fp8_scales(Fp8Scales how);
  // How many FP8 shapes run with unit scales and our scaling kernel (Fp8Scales).
  size_t fp8_epilogue_plans() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// The most rows a GEMM shape bucket is tuned at (GemmContext): the first matmul of each bucket of
// up to this many rows times cuBLASLt's candidates (tens of milliseconds for a model's shapes, the
// first launches of the candidates' kernels included), so a backend does it at load (the CUDA
// backend's warm-up steps), not in a request's first step.
constexpr int64_t kGemmTuneMaxRows = 256;

// out: bf16 [M,N], or f32 [M,N] for logits; a: bf16 [M,K]; w: bf16 [N,K] (a checkpoint's weight as
// stored); bias: [N] of out's dtype (cuBLASLt's BIAS epilogue reads it in the output type) or an
// empty TensorView{} for none. Any of out, a, w may be row-strided views into wider buffers; out
// must not overlap a, w or bias. Math: bf16 products summed in f32, rounded once to out's dtype.
// Unlike the CPU twin, K must be positive (no model has an empty projection).
void matmul(GemmContext& ctx, const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
            cudaStream_t stream = 0);

// The rows fp8_matmul sends to cuda::fp8_gemv. Measured on the H100 (bench/RESULTS.md, "FP8 decode
// with the GEMV"): a whole decode step of the 8B shape in FP8 takes 4.43 / 5.38 / 5.32 ms at batch
// 1 / 2 / 4 with it against 5.91 / 5.92 / 6.04 ms through cuBLASLt; at 8 rows it is behind on qkv,
// o_proj and gate_up (0.51-0.89x cuBLASLt's FP8 GEMM, bench_ops --gemm-only; down 1.09x). At 2-4 rows gate_up alone is
// slightly faster through cuBLASLt (0.85-0.92x), the other three projections are not.
constexpr int64_t kFp8GemvRows = 4;

// The FP8 GEMM (issue 18), the twin of cpu::fp8_matmul (kernels/cpu/fp8.h):
//   out[m,n] = (Σ_k a[m,k]·w[n,k]) · a_scale[m] · w_scale[n] + bias[n]
// a: F8E4M3 [M,K] (activations, a scale per token: cuda::quantize_rows_fp8), w: F8E4M3 [N,K] (a
// weight, a scale per output channel), a_scale f32 [M], w_scale f32 [N] (device memory, packed),
// bias bf16 [N] or empty, out bf16 [M,N] (row-strided views allowed for out, a and w).
// Through cuBLASLt's FP8 kernels in the "TN" layout with both scale vectors applied in its
// epilogue (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, cuBLAS 12.9+ on Hopper): products of E4M3
// values (exact), summed by the tensor cores and promoted to f32 (fast accumulation off), scaled
// in f32, rounded once to bf16 (or, where cuBLASLt cannot take the vector scales, the unscaled sum
// rounded to bf16, then scaled and rounded again by a kernel of ours: Fp8Scales). cuBLASLt's FP8
// kernels need 16-byte aligned operands: K, N and the row strides of a and w multiples of 16,
// out's a multiple of 8; refused here otherwise. The bias
// is added by a kernel of ours after the bf16 rounding (not cuBLASLt's epilogue: gemm.cu says why).
// M ≤ kFp8GemvRows goes to cuda::fp8_gemv instead (kernels/cuda/fp8_gemv.cuh: the same math with
// every sum in f32 on the CUDA cores, and the bias added before the one bf16 rounding), unless
// STEM_FP8_GEMV=0 or set_fp8_gemv(false); the alignment checks above hold for both paths.
void fp8_matmul(GemmContext& ctx, const TensorView& out, const TensorView& a, const TensorView& a_scale,
                const TensorView& w, const TensorView& w_scale, const TensorView& bias, cudaStream_t stream = 0);

}  // namespace stem::cuda
