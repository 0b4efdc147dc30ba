// cuda::dequantize_kv_pages: the staging copy of an FP8 KV cache's pages for the bf16 prefill and
// Stem kernels. (rope_kv_write_fp8 lives with rope_kv_write, rope_kv_write.cu; the decode kernel's
// FP8 reads in attention_decode_kernel.cuh.)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kv_fp8.cuh"

namespace stem::cuda {

namespace {

constexpr int kThreads = 256;

// E4M3 → f32, exact (through fp16, which holds every E4M3 value).
__device__ __forceinline__ float fp8_value(uint8_t code) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3)));
}

// Grid (N, 2): staging page blockIdx.x of K (y = 0) or V (y = 1). Thread steps of 8 elements: one
// 8-byte load of codes, one 16-byte store of bf16. A row (token, head) is D elements with one scale.
__global__ void dequantize_kv_pages_kernel(__nv_bfloat16* k_out, __nv_bfloat16* v_out, const uint8_t* k_codes,
                                           const uint8_t* v_codes, const float* k_scale, const float* v_scale,
                                           const int32_t* pages, int64_t n_pages, int64_t page_rows, int head_dim) {
  const int64_t i = blockIdx.x;
  const int64_t page = pages[i];
  if (page < 0 || page >= n_pages) return;
  const bool is_v = blockIdx.y == 1;
  const int64_t page_elems = page_rows * head_dim;
  const uint8_t* src = (is_v ? v_codes : k_codes) + page * page_elems;
  const float* scale = (is_v ? v_scale : k_scale) + page * page_rows;
  __nv_bfloat16* dst = (is_v ? v_out : k_out) + i * page_elems;
  for (int64_t e = int64_t{threadIdx.x} * 8; e < page_elems; e += int64_t{blockDim.x} * 8) {
    const float s = scale[e / head_dim];  // head_dim is a multiple of 8: the 8 share a row
    const uint2 raw = *reinterpret_cast<const uint2*>(src + e);
    const uint8_t* c = reinterpret_cast<const uint8_t*>(&raw);
    uint4 out;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      pairs[j] = __floats2bfloat162_rn(fp8_value(c[2 * j]) * s, fp8_value(c[2 * j + 1]) * s);
    *reinterpret_cast<uint4*>(dst + e) = out;
  }
}

}  // namespace

void dequantize_kv_pages(const TensorView& k_out, const TensorView& v_out, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& k_scale, const TensorView& v_scale,
                         const TensorView& pages, cudaStream_t stream) {
  check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, "dequantize_kv_pages");
  cpu::check_packed(k_out, "dequantize_kv_pages k_out", DType::BF16, 4);
  cpu::check_packed(v_out, "dequantize_kv_pages v_out", DType::BF16, 4);
  cpu::check_packed(pages, "dequantize_kv_pages pages", DType::I32, 1);
  const int64_t N = pages.shape[0];
  for (const TensorView* o : {&k_out, &v_out}) {
    STEM_CHECK(o->shape[0] >= N, "dequantize_kv_pages: ", o->str(), " has fewer than ", N, " pages");
    for (int d = 1; d < 4; ++d)
      STEM_CHECK(o->shape[d] == k_cache.shape[d], "dequantize_kv_pages: ", o->str(), " must have k_cache ",
                 k_cache.str(), "'s pages");
    STEM_CHECK(reinterpret_cast<uintptr_t>(o->data) % 16 == 0, "dequantize_kv_pages: the staging must start 16-byte aligned");
  }
  STEM_CHECK(N < (int64_t{1} << 31), "dequantize_kv_pages: ", N, " pages do not fit one launch");
  if (N == 0) return;
  dequantize_kv_pages_kernel<<<dim3(static_cast<unsigned>(N), 2), kThreads, 0, stream>>>(
      k_out.ptr<__nv_bfloat16>(), v_out.ptr<__nv_bfloat16>(), k_cache.ptr<uint8_t>(), v_cache.ptr<uint8_t>(),
      k_scale.ptr<float>(), v_scale.ptr<float>(), pages.ptr<int32_t>(), k_cache.shape[0],
      k_cache.shape[1] * k_cache.shape[2], static_cast<int>(k_cache.shape[3]));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace stem::cuda
