#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8_row.cuh"
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

// FP8: one block per row. Pass 1 computes the row as swiglu_kernel does, stores it in bf16 and
// keeps the amax of the stored values; pass 2 reads each thread's own stored vectors back (same
// thread, so program order makes them visible; from L1/L2, the row is 2I bytes) and writes their
// E4M3 codes (fp8_row.cuh), and thread 0 the row's scale.
__global__ void swiglu_fp8_kernel(bf16* out, int64_t out_stride, const bf16* gate, int64_t gate_stride, const bf16* up,
                                  int64_t up_stride, int64_t vecs_per_row, uint8_t* codes, float* scales) {
  __shared__ float scratch[32];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  float amax = 0.f;
  for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) {
    const int64_t col = v * kVec;
    float g[kVec], u[kVec];
    load8(gate + t * gate_stride + col, g);
    load8(up + t * up_stride + col, u);
#pragma unroll
    for (int j = 0; j < kVec; ++j) g[j] = g[j] / (1.f + __expf(-g[j])) * u[j];
    store8(out + t * out_stride + col, g);
#pragma unroll
    for (int j = 0; j < kVec; ++j) amax = fp8_row::amax_of(amax, fabsf(fp8_row::bf16_value(g[j])));
  }
  const float s = fp8_row::scale_of(fp8_row::block_amax(amax, scratch));
  if (threadIdx.x == 0) scales[t] = s;
  for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) {
    float y[kVec];
    load8(out + t * out_stride + v * kVec, y);
    fp8_row::store8_codes(codes + (t * vecs_per_row + v) * kVec, y, s);
  }
}

// The arguments both launches check: bf16 rows of the same shape, in whole vectors.
void check_swiglu_args(const TensorView& out, const TensorView& gate, const TensorView& up) {
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
}

}  // namespace

void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up, cudaStream_t stream) {
  check_swiglu_args(out, gate, up);
  const int64_t vecs_per_row = out.shape[1] / kVec, total = out.shape[0] * vecs_per_row;
  if (total == 0) return;

  constexpr int kThreads = 256;
  // Enough blocks to fill every SM several times over; the loop covers the rest.
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const auto grid = static_cast<unsigned>(blocks < 16384 ? blocks : 16384);
  launch_pdl(swiglu_kernel, grid, kThreads, 0, stream, out.ptr<bf16>(), cpu::row_stride(out), gate.ptr<bf16>(),
             cpu::row_stride(gate), up.ptr<bf16>(), cpu::row_stride(up), vecs_per_row, total);
}

void swiglu_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales, const TensorView& gate,
                const TensorView& up, cudaStream_t stream) {
  check_swiglu_args(out, gate, up);
  cpu::check_packed(codes, "swiglu codes", DType::F8E4M3, 2);
  STEM_CHECK(codes.shape[0] == out.shape[0] && codes.shape[1] == out.shape[1], "swiglu: codes ", codes.str(),
             " must match out ", out.str());
  STEM_CHECK(reinterpret_cast<uintptr_t>(codes.data) % 8 == 0, "swiglu: codes must be 8-byte aligned");
  cpu::check_packed(scales, "swiglu scales", DType::F32, 1);
  cpu::check_dim(scales, "swiglu scales", 0, out.shape[0], "one scale per row");
  const int64_t rows = out.shape[0], vecs_per_row = out.shape[1] / kVec;
  if (rows == 0 || vecs_per_row == 0) return;
  STEM_CHECK(rows <= INT32_MAX, "swiglu: ", rows, " rows is over one launch's grid");
  constexpr int kThreads = 256;
  launch_pdl(swiglu_fp8_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, out.ptr<bf16>(),
             cpu::row_stride(out), gate.ptr<bf16>(), cpu::row_stride(gate), up.ptr<bf16>(), cpu::row_stride(up),
             vecs_per_row, codes.ptr<uint8_t>(), scales.ptr<float>());
}

}  // namespace stem::cuda
