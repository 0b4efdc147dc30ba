#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/pdl.cuh"

namespace stem::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerWarp = 2;  // output features per warp: each `a` vector loaded serves both
constexpr int kRowsPerBlock = kThreads / 32 * kRowsPerWarp;
constexpr int kSteps = 4;  // weight loads in flight per row and lane (16 bytes each)

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return __bfloat162float(*p); }

// Weights are read once per step: keep them out of L1, where the rows of `a` that every warp
// reads again stay.
__device__ __forceinline__ uint4 load_streaming(const bf16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void widen(const uint4& raw, float (&v)[kVec]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// One warp computes kRowsPerWarp output features for all M rows: lanes stride over K in 8-element
// vectors (a warp reads 512 contiguous bytes of each weight row per step), then reduce by shuffles.
template <int M, typename Out>
__global__ void __launch_bounds__(kThreads) gemv_kernel(Out* out, int64_t ldo, const bf16* a, int64_t lda,
                                                        const bf16* w, int64_t ldw, const Out* bias, int64_t N,
                                                        int64_t K) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (blockIdx.x * int64_t{kThreads} + threadIdx.x) / 32 * kRowsPerWarp;
  // `a` is the kernel before's output. (Fetching the first weights into L2 before this wait bought
  // nothing on the H100, and more than 2 KB a row cost 6%: the blocks' prefetches overran L2.)
  pdl_wait();
  pdl_launch_dependents();
  if (n0 >= N) return;
  const bf16* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) rows[r] = w + (n0 + r < N ? n0 + r : N - 1) * ldw;  // a past-the-end row re-reads the last

  // kSteps loop steps of weights are loaded before any of them is used: written out, not left to
  // `#pragma unroll`, which kept the loads next to their uses (a decode step at batch 1 took 6.07
  // ms with that, 5.80 ms with this, on the H100; bench/RESULTS.md).
  float acc[M][kRowsPerWarp] = {};
  for (int64_t k0 = lane * kVec; k0 < K; k0 += kSteps * 32 * kVec) {
    uint4 raw[kSteps][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kSteps; ++u)
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
        raw[u][r] = k0 + u * 32 * kVec < K ? load_streaming(rows[r] + k0 + u * 32 * kVec) : uint4{};
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      const int64_t k = k0 + u * 32 * kVec;
      if (k >= K) break;
      float wv[kRowsPerWarp][kVec];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) widen(raw[u][r], wv[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float av[kVec];
        load8(a + m * lda + k, av);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
          for (int j = 0; j < kVec; ++j) acc[m][r] = fmaf(av[j], wv[r][j], acc[m][r]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float x = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      // Lane m·R + r writes that result, so that the stores of one warp go out together.
      if (lane == m * kRowsPerWarp + r && n0 + r < N) {
        if (bias != nullptr) x += load(bias + n0 + r);
        store(out + m * ldo + n0 + r, x);
      }
    }
}

template <typename Out>
void launch(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
            cudaStream_t stream) {
  const int64_t M = a.shape[0], N = w.shape[0], K = w.shape[1];
  const auto grid = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  Out* o = out.ptr<Out>();
  const Out* b = bias.empty() ? nullptr : bias.ptr<Out>();
  const int64_t ldo = cpu::row_stride(out), lda = cpu::row_stride(a), ldw = cpu::row_stride(w);
  const bf16 *ap = a.ptr<bf16>(), *wp = w.ptr<bf16>();
  switch (M) {
#define STEM_GEMV_CASE(m) \
  case m: launch_pdl(gemv_kernel<m, Out>, grid, kThreads, 0, stream, o, ldo, ap, lda, wp, ldw, b, N, K); break;
    STEM_GEMV_CASE(1)
    STEM_GEMV_CASE(2)
    STEM_GEMV_CASE(3)
    STEM_GEMV_CASE(4)
    STEM_GEMV_CASE(5)
    STEM_GEMV_CASE(6)
    STEM_GEMV_CASE(7)
    STEM_GEMV_CASE(8)
#undef STEM_GEMV_CASE
    default: STEM_CHECK(false, "gemv takes 1 to ", kGemvMaxRows, " rows, got ", M);
  }
}

bool vector_rows(const TensorView& v) {
  return reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && cpu::row_size(v) % kVec == 0 &&
         cpu::row_stride(v) % kVec == 0;
}

}  // namespace

bool gemv_accepts(const TensorView& out, const TensorView& a, const TensorView& w) {
  (void)out;
  return a.ndim == 2 && w.ndim == 2 && a.shape[0] >= 1 && a.shape[0] <= kGemvMaxRows && vector_rows(a) && vector_rows(w);
}

void gemv(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
          cudaStream_t stream) {
  STEM_CHECK(out.dtype == DType::BF16 || out.dtype == DType::F32, "gemv out must be bf16 or f32, got ", out.str());
  cpu::check_rows(out, "gemv out", out.dtype, 2);
  cpu::check_rows(a, "gemv a", DType::BF16, 2);
  cpu::check_rows(w, "gemv w", DType::BF16, 2);
  STEM_CHECK(w.shape[1] == a.shape[1] && out.shape[0] == a.shape[0] && out.shape[1] == w.shape[0], "gemv: out ",
             out.str(), " must be a ", a.str(), " times w ", w.str(), " transposed");
  if (!bias.empty()) {
    cpu::check_packed(bias, "gemv bias", out.dtype, 1);
    cpu::check_dim(bias, "gemv bias", 0, w.shape[0], "N, the rows of w");
  }
  check_vector_rows(a, "gemv a");
  check_vector_rows(w, "gemv w");
  STEM_CHECK(a.shape[0] >= 1 && a.shape[0] <= kGemvMaxRows, "gemv takes 1 to ", kGemvMaxRows, " rows, got ",
             a.str());
  if (w.shape[0] == 0) return;
  if (out.dtype == DType::F32)
    launch<float>(out, a, w, bias, stream);
  else
    launch<bf16>(out, a, w, bias, stream);
}

}  // namespace stem::cuda
