#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <utility>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8_gemv.cuh"
#include "kernels/cuda/pdl.cuh"

namespace stem::cuda {

namespace {

constexpr int kCodes = 16;  // E4M3 values in one 16-byte load

// The kernel's shapes (fp8_gemv_variant): output features per warp (R; each `a` vector widened
// serves all of them), 16-byte weight loads in flight per row and lane (S), warps per block (W),
// and whether a warp loads its first weights before the PDL wait (weights are no kernel's output,
// so their first loads may overlap the kernel before: Early). Variant 0 is the kernel measured in
// the fifth session (bench/RESULTS.md); the others are the sweep's (bench_ops --fp8-gemv-sweep).
struct Variant {
  int rows, steps, warps;
  bool early;
};
constexpr Variant kVariants[] = {
    {4, 2, 8, false}, {4, 2, 8, true}, {4, 4, 8, true}, {2, 4, 8, true}, {2, 4, 4, true}, {4, 4, 4, true},
};
constexpr int kVariantCount = sizeof(kVariants) / sizeof(kVariants[0]);
static_assert(kFp8GemvMaxRows * 4 <= 32, "one lane stores each of a warp's results");

// Weights are read once per step: keep them out of L1, where the rows of `a` that every warp
// reads again stay.
__device__ __forceinline__ uint4 load_streaming(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 E4M3 codes to their values in f32, exactly: E4M3 → f16 (every E4M3 value, subnormals and NaN
// included, is an f16 value; cvt.rn.f16x2.e4m3x2 on sm_89 and newer), then f16 → f32.
__device__ __forceinline__ void widen(const uint4& raw, float (&v)[kCodes]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const auto pair = static_cast<__nv_fp8x2_storage_t>(words[i] >> (16 * h));
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3)));
      v[4 * i + 2 * h] = f.x;
      v[4 * i + 2 * h + 1] = f.y;
    }
}

// One warp computes R output features for all M rows: lanes stride over K in 16-code vectors (a
// warp reads 512 contiguous bytes of each weight row per step), then reduce by shuffles. A product
// of two E4M3 values has at most 8 significant bits and lies within 2^-18..448², so fmaf rounds
// only the sum: products exact, summed in f32, as the twin.
template <int M, int R, int S, int W, bool kEarly>
__global__ void __launch_bounds__(W * 32)
    fp8_gemv_kernel(bf16* out, int64_t ldo, const uint8_t* a, int64_t lda, const float* a_scale, const uint8_t* w,
                    int64_t ldw, const float* w_scale, const bf16* bias, int64_t N, int64_t K) {
  static_assert(M * R <= 32, "one lane stores each of a warp's results");
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (blockIdx.x * int64_t{W * 32} + threadIdx.x) / 32 * R;
  const uint8_t* rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = w + (n0 + r < N ? n0 + r : N - 1) * ldw;  // a past-the-end row re-reads the last

  // S loop steps of weights are loaded before any of them is used, written out as in gemv.cu
  // (where `#pragma unroll` alone kept the loads next to their uses).
  uint4 raw[S][R];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int u = 0; u < S; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r)
        raw[u][r] = k0 + u * 32 * kCodes < K ? load_streaming(rows[r] + k0 + u * 32 * kCodes) : uint4{};
  };
  const int64_t first = lane * kCodes;
  if (kEarly && n0 < N) load(first);
  // `a` and a_scale are the kernel before's output.
  pdl_wait();
  pdl_launch_dependents();
  if (n0 >= N) return;
  if (!kEarly) load(first);

  float acc[M][R] = {};
  for (int64_t k0 = first; k0 < K; k0 += S * 32 * kCodes) {
    if (k0 != first) load(k0);
#pragma unroll
    for (int u = 0; u < S; ++u) {
      const int64_t k = k0 + u * 32 * kCodes;
      if (k >= K) break;
      float wv[R][kCodes];
#pragma unroll
      for (int r = 0; r < R; ++r) widen(raw[u][r], wv[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float av[kCodes];
        widen(*reinterpret_cast<const uint4*>(a + m * lda + k), av);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int j = 0; j < kCodes; ++j) acc[m][r] = fmaf(av[j], wv[r][j], acc[m][r]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float x = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      // Lane m·R + r writes that result, so that the stores of one warp go out together. The
      // twin's order: sum · (a_scale · w_scale) + bias (0 without one), each step rounded in f32
      // (no fused multiply-add), then one rounding to bf16.
      if (lane == m * R + r && n0 + r < N) {
        const int64_t n = n0 + r;
        const float scaled = __fmul_rn(x, __fmul_rn(a_scale[m], w_scale[n]));
        const float b = bias != nullptr ? __bfloat162float(bias[n]) : 0.f;
        out[m * ldo + n] = __float2bfloat16_rn(__fadd_rn(scaled, b));
      }
    }
}

struct Args {
  bf16* o;
  int64_t ldo;
  const uint8_t* a;
  int64_t lda;
  const float* sa;
  const uint8_t* w;
  int64_t ldw;
  const float* sw;
  const bf16* b;
  int64_t N, K;
};

template <int M, int V>
void launch_variant(const Args& x, cudaStream_t stream) {
  constexpr Variant v = kVariants[V];
  const auto grid = static_cast<unsigned>((x.N + v.rows * v.warps - 1) / (v.rows * v.warps));
  launch_pdl(fp8_gemv_kernel<M, v.rows, v.steps, v.warps, v.early>, grid, v.warps * 32, 0, stream, x.o, x.ldo, x.a,
             x.lda, x.sa, x.w, x.ldw, x.sw, x.b, x.N, x.K);
}

template <int M, int... V>
void launch_m(int variant, const Args& x, cudaStream_t stream, std::integer_sequence<int, V...>) {
  ((variant == V ? launch_variant<M, V>(x, stream) : void()), ...);
}

template <int... M>
void launch_rows(int64_t rows, int variant, const Args& x, cudaStream_t stream, std::integer_sequence<int, M...>) {
  ((rows == M + 1 ? launch_m<M + 1>(variant, x, stream, std::make_integer_sequence<int, kVariantCount>()) : void()), ...);
}

constexpr int kUnread = -2, kByShape = -1;
std::atomic<int> g_variant{kUnread};  // kUnread: STEM_FP8_GEMV_VARIANT not read yet

// The variant by the number of rows, from bench_ops --fp8-gemv-sweep on the H100 (bench/RESULTS.md):
// 2 rows a warp in blocks of 4 warps (variant 4) up to 4 rows (13% less time than variant 0 over
// the 8B projections at M 4, 1-3% at M 1 and 2), variant 0 at 5 to 8 (8% less than variant 4 at M 8).
int variant_for_rows(int64_t rows) {
  const int chosen = fp8_gemv_variant();
  if (chosen != kByShape) return chosen;
  return rows <= 4 ? 4 : 0;
}

void launch(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
            const TensorView& w_scale, const TensorView& bias, cudaStream_t stream) {
  const int64_t M = a.shape[0];
  STEM_CHECK(M >= 1 && M <= kFp8GemvMaxRows, "fp8_gemv takes 1 to ", kFp8GemvMaxRows, " rows, got ", M);
  const Args x{out.ptr<bf16>(),
               cpu::row_stride(out),
               a.ptr<uint8_t>(),
               cpu::row_stride(a),
               a_scale.ptr<float>(),
               w.ptr<uint8_t>(),
               cpu::row_stride(w),
               w_scale.ptr<float>(),
               bias.empty() ? nullptr : bias.ptr<bf16>(),
               w.shape[0],
               w.shape[1]};
  launch_rows(M, variant_for_rows(M), x, stream, std::make_integer_sequence<int, kFp8GemvMaxRows>());
}

// Rows read kCodes E4M3 values at a time: a 16-byte aligned start, rows and row strides in whole
// 16-byte vectors.
bool code_vector_rows(const TensorView& v) {
  return reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && cpu::row_size(v) % kCodes == 0 &&
         cpu::row_stride(v) % kCodes == 0;
}

void check_code_vector_rows(const TensorView& v, const char* name) {
  check_vector_start(v, name);
  STEM_CHECK(cpu::row_size(v) % kCodes == 0, name, " rows must hold a multiple of ", kCodes, " E4M3 values, got ",
             v.str());
  STEM_CHECK(cpu::row_stride(v) % kCodes == 0, name, " row stride must be a multiple of ", kCodes,
             " elements, got ", cpu::row_stride(v), " for ", v.str());
}

}  // namespace

int fp8_gemv_variants() { return kVariantCount; }

int fp8_gemv_variant() {
  int v = g_variant.load(std::memory_order_relaxed);
  if (v == kUnread) {
    const char* env = std::getenv("STEM_FP8_GEMV_VARIANT");
    v = kByShape;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long parsed = std::strtol(env, &end, 10);
      STEM_CHECK(*end == '\0' && parsed >= 0 && parsed < kVariantCount, "STEM_FP8_GEMV_VARIANT: '", env,
                 "' is not a variant number, 0 to ", kVariantCount - 1);
      v = static_cast<int>(parsed);
    }
    g_variant.store(v, std::memory_order_relaxed);
  }
  return v;
}

void set_fp8_gemv_variant(int variant) {
  STEM_CHECK(variant >= kByShape && variant < kVariantCount, "fp8_gemv variant ", variant, " is not -1 (by shape) or 0 to ",
             kVariantCount - 1);
  g_variant.store(variant, std::memory_order_relaxed);
}

bool fp8_gemv_accepts(const TensorView& out, const TensorView& a, const TensorView& w) {
  (void)out;
  return a.ndim == 2 && w.ndim == 2 && a.dtype == DType::F8E4M3 && w.dtype == DType::F8E4M3 && a.shape[0] >= 1 &&
         a.shape[0] <= kFp8GemvMaxRows && code_vector_rows(a) && code_vector_rows(w);
}

void fp8_gemv(const TensorView& out, const TensorView& a, const TensorView& a_scale, const TensorView& w,
              const TensorView& w_scale, const TensorView& bias, cudaStream_t stream) {
  cpu::check_rows(out, "fp8_gemv out", DType::BF16, 2);
  cpu::check_rows(a, "fp8_gemv a", DType::F8E4M3, 2);
  cpu::check_rows(w, "fp8_gemv w", DType::F8E4M3, 2);
  STEM_CHECK(w.shape[1] == a.shape[1] && out.shape[0] == a.shape[0] && out.shape[1] == w.shape[0], "fp8_gemv: out ",
             out.str(), " must be a ", a.str(), " times w ", w.str(), " transposed");
  cpu::check_packed(a_scale, "fp8_gemv a_scale", DType::F32, 1);
  cpu::check_dim(a_scale, "fp8_gemv a_scale", 0, a.shape[0], "one scale per row of a");
  cpu::check_packed(w_scale, "fp8_gemv w_scale", DType::F32, 1);
  cpu::check_dim(w_scale, "fp8_gemv w_scale", 0, w.shape[0], "one scale per row of w");
  if (!bias.empty()) {
    cpu::check_packed(bias, "fp8_gemv bias", DType::BF16, 1);
    cpu::check_dim(bias, "fp8_gemv bias", 0, w.shape[0], "N, the rows of w");
  }
  check_code_vector_rows(a, "fp8_gemv a");
  check_code_vector_rows(w, "fp8_gemv w");
  STEM_CHECK(a.shape[0] >= 1 && a.shape[0] <= kFp8GemvMaxRows, "fp8_gemv takes 1 to ", kFp8GemvMaxRows,
             " rows, got ", a.str());
  STEM_CHECK(a.shape[1] > 0, "fp8_gemv: K must be positive, got a ", a.str());
  if (w.shape[0] == 0) return;
  launch(out, a, a_scale, w, w_scale, bias, stream);
}

}  // namespace stem::cuda
