#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/swiglu.cuh"

namespace stem::cuda {

namespace {

// A flat grid-stride loop over 8-element vectors of the [T, I] output; each vector is read from
// gate and up and written to out by the same thread, which is what makes aliasing safe.
__global__ void swiglu_kernel(bf16* out, int64_t out_stride, const bf16* gate, int64_t gate_stride, const bf16* up,
                              int64_t up_stride, int64_t vecs_per_row, int64_t total_vecs) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t job = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; job < total_vecs;
       job += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = job / vecs_per_row, col = (job % vecs_per_row) * kVec;
    float g[kVec], u[kVec];
    load8(gate + t * gate_stride + col, g);
    load8(up + t * up_stride + col, u);
#pragma unroll
    for (int j = 0; j < kVec; ++j) g[j] = g[j] / (1.f + __expf(-g[j])) * u[j];  // e^-x = inf gives a clean -0
    store8(out + t * out_stride + col, g);
  }
}

}  // namespace

void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up, cudaStream_t stream) {
  cpu::check_rows(out, "swiglu out", DType::BF16, 2);
  cpu::check_rows(gate, "swiglu gate", DType::BF16, 2);
  cpu::check_rows(up, "swiglu up", DType::BF16, 2);
  STEM_CHECK(gate.shape[0] == out.shape[0] && gate.shape[1] == out.shape[1], "swiglu: gate ", gate.str(), " and out ",
             out.str(), " must have the same shape");
  STEM_CHECK(up.shape[0] == out.shape[0] && up.shape[1] == out.shape[1], "swiglu: up ", up.str(), " and out ",
             out.str(), " must have the same shape");
  check_vector_rows(out, "swiglu out");
  check_vector_rows(gate, "swiglu gate");
  check_vector_rows(up, "swiglu up");
  const int64_t vecs_per_row = out.shape[1] / kVec, total = out.shape[0] * vecs_per_row;
  if (total == 0) return;

  constexpr int kThreads = 256;
  // Enough blocks to fill every SM several times over; the loop covers the rest.
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const auto grid = static_cast<unsigned>(blocks < 16384 ? blocks : 16384);
  launch_pdl(swiglu_kernel, grid, kThreads, 0, stream, out.ptr<bf16>(), cpu::row_stride(out), gate.ptr<bf16>(),
             cpu::row_stride(gate), up.ptr<bf16>(), cpu::row_stride(up), vecs_per_row, total);
}

}  // namespace stem::cuda
