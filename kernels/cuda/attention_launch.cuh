// Host-side checks shared by the attention launchers (prefill, decode, the router): the views'
// dtypes and shapes, the alignment the 16-byte async copies need, and the cache geometry.
#pragma once
#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/view.h"

namespace stem::cuda::attn {

struct AttentionShape {
  int64_t tokens, q_heads, kv_heads, head_dim, seqs;
  int64_t q_stride, out_stride;  // elements between tokens' rows
  int64_t pages;                 // the cache's first dimension
  PagedKv kv;
  float scale_log2;
  int32_t window;
};

inline std::string arg_name(const char* op, const char* arg) { return std::string(op) + " " + arg; }

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Checks what every attention launcher takes (bf16 activations and cache, i32 metadata); the FP8
// decode takes E4M3 caches (cache_dtype F8E4M3; its scales are checked by its launcher).
inline AttentionShape check_attention(const char* op, const TensorView& out, const TensorView& q,
                                      const TensorView& k_cache, const TensorView& v_cache,
                                      const TensorView& page_table, const TensorView& kv_lens,
                                      const TensorView& query_start, float scale, int64_t sliding_window,
                                      DType cache_dtype = DType::BF16) {
  cpu::check_rows(out, arg_name(op, "out").c_str(), DType::BF16, 3);
  cpu::check_rows(q, arg_name(op, "q").c_str(), DType::BF16, 3);
  cpu::check_packed(k_cache, arg_name(op, "k_cache").c_str(), cache_dtype, 4);
  cpu::check_packed(v_cache, arg_name(op, "v_cache").c_str(), cache_dtype, 4);
  cpu::check_packed(page_table, arg_name(op, "page_table").c_str(), DType::I32, 2);
  cpu::check_packed(kv_lens, arg_name(op, "kv_lens").c_str(), DType::I32, 1);
  cpu::check_packed(query_start, arg_name(op, "query_start").c_str(), DType::I32, 1);
  for (int d = 0; d < 3; ++d) STEM_CHECK(out.shape[d] == q.shape[d], op, ": out ", out.str(), " must match q ", q.str());
  for (int d = 0; d < 4; ++d)
    STEM_CHECK(v_cache.shape[d] == k_cache.shape[d], op, ": v_cache ", v_cache.str(), " must match k_cache ",
               k_cache.str());
  AttentionShape s{};
  s.tokens = q.shape[0];
  s.q_heads = q.shape[1];
  s.head_dim = q.shape[2];
  s.kv_heads = k_cache.shape[2];
  s.seqs = page_table.shape[0];
  s.pages = k_cache.shape[0];
  STEM_CHECK(s.head_dim == 64 || s.head_dim == 128, op, ": head dim must be 64 or 128 (the CUDA kernels' sizes), got ",
             q.str());
  cpu::check_dim(k_cache, arg_name(op, "k_cache").c_str(), 3, s.head_dim, "head_dim, as in q");
  STEM_CHECK(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0, op, ": q has ", s.q_heads,
             " heads, not a multiple of the cache's ", s.kv_heads, " KV heads");
  const int64_t page_size = k_cache.shape[1];
  STEM_CHECK(page_size > 0 && 128 % page_size == 0, op, ": page_size must be a power of two dividing 128, got ",
             k_cache.str());
  cpu::check_dim(kv_lens, arg_name(op, "kv_lens").c_str(), 0, s.seqs, "sequences, the rows of page_table");
  cpu::check_dim(query_start, arg_name(op, "query_start").c_str(), 0, s.seqs + 1, "sequences + 1");
  STEM_CHECK(sliding_window >= 0, op, ": sliding_window must be >= 0 (0 = none), got ", sliding_window);
  STEM_CHECK(std::isfinite(scale) && scale > 0.f, op, ": scale must be positive and finite, got ", scale);
  // Positions and row numbers are 32-bit inside the kernels.
  STEM_CHECK(s.tokens < (int64_t{1} << 30) && page_table.shape[1] * page_size < (int64_t{1} << 30), op,
             ": more than 2^30 tokens or cache positions per sequence");
  s.q_stride = cpu::row_stride(q);
  s.out_stride = cpu::row_stride(out);
  // 16-byte copies and 4-byte stores: rows and the tensors' starts must be aligned.
  STEM_CHECK(s.q_stride % 8 == 0 && s.out_stride % 8 == 0 && aligned16(q.data) && aligned16(out.data) &&
                 aligned16(k_cache.data) && aligned16(v_cache.data),
             op, ": q, out and the caches must start 16-byte aligned with row strides a multiple of 8 elements");
  s.kv = PagedKv{static_cast<const bf16*>(k_cache.data), static_cast<const bf16*>(v_cache.data), page_table.ptr<const int32_t>(),
                 static_cast<int32_t>(page_table.shape[1]), static_cast<int32_t>(page_size),
                 std::countr_zero(static_cast<uint64_t>(page_size)), static_cast<int32_t>(s.kv_heads)};
  s.scale_log2 = scale * 1.4426950408889634f;
  s.window = static_cast<int32_t>(std::min<int64_t>(sliding_window, int64_t{1} << 30));
  return s;
}

// Device attributes and kernel settings are asked once per device (kernel), not per launch: a decode
// step is tens of microseconds, and these calls would be a visible share of it.
constexpr int kMaxDevices = 64;

inline int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  STEM_CHECK(device >= 0 && device < kMaxDevices, "attention: device ", device, " past the ", kMaxDevices, " supported");
  return device;
}

inline int multiprocessors() {
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  const int device = current_device();
  if (const int known = cache[device].load(std::memory_order_relaxed)) return known;
  int count = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  cache[device].store(count, std::memory_order_relaxed);
  return count;
}

// Raises a kernel's dynamic shared-memory limit past the 48 KB default (once per kernel, device and
// size), after checking the device has that much per block.
inline void allow_smem(const void* kernel, int bytes, const char* op) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> allowed;  // (kernel, device) → bytes
  const int device = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  int& done = allowed[{kernel, device}];
  if (done >= bytes) return;
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  STEM_CHECK(bytes <= optin, op, ": needs ", bytes, " bytes of shared memory per block, the device has ", optin,
             " (a page table this wide: pass a narrower view)");
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done = bytes;
}

}  // namespace stem::cuda::attn
