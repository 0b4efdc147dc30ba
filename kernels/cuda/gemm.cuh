// Dense projections on the device through cuBLASLt, in nn.Linear's layout: out = a · wᵀ + bias.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>

#include "kernels/view.h"

namespace stem::cuda {

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

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// out: bf16 [M,N], or f32 [M,N] for logits; a: bf16 [M,K]; w: bf16 [N,K] (a checkpoint's weight as
// stored); bias: [N] of out's dtype (cuBLASLt's BIAS epilogue reads it in the output type) or an
// empty TensorView{} for none. Any of out, a, w may be row-strided views into wider buffers; out
// must not overlap a, w or bias. Math: bf16 products summed in f32, rounded once to out's dtype.
// Unlike the CPU twin, K must be positive (no model has an empty projection).
void matmul(GemmContext& ctx, const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
            cudaStream_t stream = 0);

}  // namespace stem::cuda
