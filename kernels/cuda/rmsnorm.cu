#include <string>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8_row.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/rmsnorm.cuh"

namespace stem::cuda {

namespace {

// One block per row. The row stays in registers between the sum of squares and the scaling, so
// x (and the residual) cross device memory once: at most kMaxVecs vectors of 8 per thread.
constexpr int kMaxVecs = 4;
constexpr int kMaxThreads = 1024;
constexpr int64_t kMaxHidden = int64_t{kMaxVecs} * kMaxThreads * kVec;

// Scales the row held in `v` by inv_rms * weight and stores it as bf16. kFp8 (codes set):
// also the row's E4M3 codes and its scale, from the bf16 values
// stored (fp8_row.cuh; v is overwritten with them); scratch is block_sum's, already used.
template <bool kFp8>
__device__ __forceinline__ void scale_and_store(bf16* out, float (&v)[kMaxVecs][kVec], const bf16* __restrict__ weight,
                                                float inv_rms, int vecs, uint8_t* codes, float* scale,
                                                float* scratch) {
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int vec = threadIdx.x + i * blockDim.x;
    if (vec >= vecs) break;
    float w[kVec], y[kVec];
    load8(weight + vec * kVec, w);
#pragma unroll
    for (int j = 0; j < kVec; ++j) y[j] = v[i][j] * inv_rms * w[j];
    store8(out + vec * kVec, y);
    if constexpr (kFp8) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[i][j] = fp8_row::bf16_value(y[j]);
        amax = fp8_row::amax_of(amax, fabsf(v[i][j]));
      }
    }
  }
  if constexpr (!kFp8) return;
  __syncthreads();  // every warp is past block_sum's reads of scratch
  const float s = fp8_row::scale_of(fp8_row::block_amax(amax, scratch));
  if (threadIdx.x == 0) *scale = s;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int vec = threadIdx.x + i * blockDim.x;
    if (vec >= vecs) break;
    fp8_row::store8_codes(codes + vec * kVec, v[i], s);
  }
}

template <typename X, bool kFp8>
__global__ void rmsnorm_kernel(bf16* out, int64_t out_stride, const X* x, int64_t x_stride,
                               const bf16* __restrict__ weight, int vecs, float inv_hidden, float eps,
                               uint8_t* codes, float* scales) {
  __shared__ float scratch[32];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const X* row = x + t * x_stride;
  float v[kMaxVecs][kVec];
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int vec = threadIdx.x + i * blockDim.x;
    if (vec >= vecs) break;
    load8(row + vec * kVec, v[i]);
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum_sq += v[i][j] * v[i][j];
  }
  // The barrier inside block_sum also orders every read of x before any write of out (aliasing).
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) * inv_hidden + eps);
  scale_and_store<kFp8>(out + t * out_stride, v, weight, inv_rms, vecs, kFp8 ? codes + t * vecs * kVec : nullptr,
                        kFp8 ? scales + t : nullptr, scratch);
}

template <bool kFp8>
__global__ void add_rmsnorm_kernel(bf16* out, int64_t out_stride, float* __restrict__ residual, int64_t res_stride,
                                   const bf16* x, int64_t x_stride, const bf16* __restrict__ weight, int vecs,
                                   float inv_hidden, float eps, uint8_t* codes, float* scales) {
  __shared__ float scratch[32];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  float* res = residual + t * res_stride;
  const bf16* add = x + t * x_stride;
  float v[kMaxVecs][kVec];
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int vec = threadIdx.x + i * blockDim.x;
    if (vec >= vecs) break;
    float a[kVec];
    load8(res + vec * kVec, v[i]);
    load8(add + vec * kVec, a);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      v[i][j] += a[j];
      sum_sq += v[i][j] * v[i][j];
    }
    store8(res + vec * kVec, v[i]);
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) * inv_hidden + eps);
  scale_and_store<kFp8>(out + t * out_stride, v, weight, inv_rms, vecs, kFp8 ? codes + t * vecs * kVec : nullptr,
                        kFp8 ? scales + t : nullptr, scratch);
}

void check_norm_args(const std::string& op, const TensorView& out, const TensorView& x, const TensorView& weight) {
  cpu::check_rows(out, (op + " out").c_str(), DType::BF16, 2);
  cpu::check_packed(weight, (op + " weight").c_str(), DType::BF16, 1);
  STEM_CHECK(x.shape[0] == out.shape[0] && x.shape[1] == out.shape[1], op, ": x ", x.str(), " and out ", out.str(),
             " must have the same shape");
  STEM_CHECK(weight.shape[0] == x.shape[1], op, ": weight ", weight.str(), " must have x's hidden size ", x.shape[1]);
  STEM_CHECK(x.shape[1] <= kMaxHidden, op, ": hidden size ", x.shape[1], " is over the supported ", kMaxHidden);
  check_vector_rows(out, (op + " out").c_str());
  check_vector_rows(x, (op + " x").c_str());
  check_vector_start(weight, (op + " weight").c_str());  // its length is x's row, checked above
}

// Threads for a row of `vecs` vectors: about two vectors each (more loads in flight per thread
// than one, more threads per row than four), never more than kMaxVecs each.
int threads_for_row(int vecs) { return threads_for((vecs + 1) / 2, kMaxThreads); }

// FP8 outputs: codes F8E4M3 [T,H] packed, scales f32 [T]; both empty: none.
void check_fp8_outputs(const std::string& op, const TensorView& codes, const TensorView& scales, const TensorView& out) {
  cpu::check_packed(codes, (op + " codes").c_str(), DType::F8E4M3, 2);
  STEM_CHECK(codes.shape[0] == out.shape[0] && codes.shape[1] == out.shape[1], op, ": codes ", codes.str(),
             " must match out ", out.str());
  STEM_CHECK(reinterpret_cast<uintptr_t>(codes.data) % 8 == 0, op, ": codes must be 8-byte aligned");
  cpu::check_packed(scales, (op + " scales").c_str(), DType::F32, 1);
  cpu::check_dim(scales, (op + " scales").c_str(), 0, out.shape[0], "one scale per row");
}

void rmsnorm_impl(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
                  const TensorView& codes, const TensorView& scales, cudaStream_t stream) {
  STEM_CHECK(x.dtype == DType::F32 || x.dtype == DType::BF16, "rmsnorm x must be f32 or bf16, got ", x.str());
  cpu::check_rows(x, "rmsnorm x", x.dtype, 2);
  check_norm_args("rmsnorm", out, x, weight);
  STEM_CHECK(out.data != x.data || x.dtype == DType::BF16, "rmsnorm: out may alias x only when x is bf16");
  if (!codes.empty()) check_fp8_outputs("rmsnorm", codes, scales, out);
  const int64_t tokens = x.shape[0], hidden = x.shape[1];
  if (tokens == 0 || hidden == 0) return;
  STEM_CHECK(tokens <= INT32_MAX, "rmsnorm: ", tokens, " tokens is over one launch's grid");
  const int vecs = static_cast<int>(hidden / kVec);
  const float inv_hidden = 1.f / static_cast<float>(hidden);
  const auto grid = static_cast<unsigned>(tokens);
  const int threads = threads_for_row(vecs);
  uint8_t* codes_ptr = codes.empty() ? nullptr : codes.ptr<uint8_t>();
  float* scales_ptr = codes.empty() ? nullptr : scales.ptr<float>();
  auto launch = [&](auto kernel, const auto* xp) {
    launch_pdl(kernel, grid, threads, 0, stream, out.ptr<bf16>(), cpu::row_stride(out), xp, cpu::row_stride(x),
               weight.ptr<bf16>(), vecs, inv_hidden, eps, codes_ptr, scales_ptr);
  };
  if (x.dtype == DType::F32)
    codes_ptr ? launch(rmsnorm_kernel<float, true>, x.ptr<float>()) : launch(rmsnorm_kernel<float, false>, x.ptr<float>());
  else
    codes_ptr ? launch(rmsnorm_kernel<bf16, true>, x.ptr<bf16>()) : launch(rmsnorm_kernel<bf16, false>, x.ptr<bf16>());
}

void add_rmsnorm_impl(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                      float eps, const TensorView& codes, const TensorView& scales, cudaStream_t stream) {
  cpu::check_rows(x, "add_rmsnorm x", DType::BF16, 2);
  check_norm_args("add_rmsnorm", out, x, weight);
  cpu::check_rows(residual, "add_rmsnorm residual", DType::F32, 2);
  STEM_CHECK(residual.shape[0] == x.shape[0] && residual.shape[1] == x.shape[1], "add_rmsnorm: residual ",
             residual.str(), " and x ", x.str(), " must have the same shape");
  check_vector_rows(residual, "add_rmsnorm residual");
  STEM_CHECK(out.data != residual.data, "add_rmsnorm: out must not alias residual (the sum is kept there)");
  if (!codes.empty()) check_fp8_outputs("add_rmsnorm", codes, scales, out);
  const int64_t tokens = x.shape[0], hidden = x.shape[1];
  if (tokens == 0 || hidden == 0) return;
  STEM_CHECK(tokens <= INT32_MAX, "add_rmsnorm: ", tokens, " tokens is over one launch's grid");
  const int vecs = static_cast<int>(hidden / kVec);
  launch_pdl(codes.empty() ? add_rmsnorm_kernel<false> : add_rmsnorm_kernel<true>, static_cast<unsigned>(tokens), threads_for_row(vecs), 0, stream, out.ptr<bf16>(),
             cpu::row_stride(out), residual.ptr<float>(), cpu::row_stride(residual), x.ptr<bf16>(),
             cpu::row_stride(x), weight.ptr<bf16>(), vecs, 1.f / static_cast<float>(hidden), eps,
             codes.empty() ? nullptr : codes.ptr<uint8_t>(), codes.empty() ? nullptr : scales.ptr<float>());
}

}  // namespace

void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps, cudaStream_t stream) {
  rmsnorm_impl(out, x, weight, eps, TensorView(), TensorView(), stream);
}

void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                 float eps, cudaStream_t stream) {
  add_rmsnorm_impl(out, residual, x, weight, eps, TensorView(), TensorView(), stream);
}

void rmsnorm_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales, const TensorView& x,
                 const TensorView& weight, float eps, cudaStream_t stream) {
  STEM_CHECK(!codes.empty(), "rmsnorm_fp8: codes are empty");
  rmsnorm_impl(out, x, weight, eps, codes, scales, stream);
}

void add_rmsnorm_fp8(const TensorView& out, const TensorView& codes, const TensorView& scales,
                     const TensorView& residual, const TensorView& x, const TensorView& weight, float eps,
                     cudaStream_t stream) {
  STEM_CHECK(!codes.empty(), "add_rmsnorm_fp8: codes are empty");
  add_rmsnorm_impl(out, residual, x, weight, eps, codes, scales, stream);
}

}  // namespace stem::cuda
