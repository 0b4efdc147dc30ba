// Device building blocks shared by the attention kernels: async copies, ldmatrix, bf16 tensor-core
// MMAs (m16n8k16, fp32 accumulate), a swizzled shared-memory tile layout and the paged K/V tile
// loader. Included only by .cu files (nvcc).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.cuh"

namespace stem::cuda::attn {

using bf16 = __nv_bfloat16;

// Query and key blocks of the block lists (Stem's B); a prefill CTA owns one query block.
constexpr int kBlock = 128;
// Keys per pipeline tile: a key block is two tiles, which keeps the score fragment at 64 registers.
constexpr int kTileKeys = 64;
constexpr int kThreads = 128;  // four warps per CTA in both kernels

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global→shared copy that bypasses L1; with valid == false nothing is read and the 16 bytes
// are zero-filled, so rows past a sequence (whose cache slots may hold anything, NaN included) read
// as zeros. src must still be a mapped address.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a·b for a 16×16 bf16 A (row-major fragment), a 16×8 bf16 B (column fragment), fp32 d.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^x on the special-function unit; 2^-inf = +0, which the masked scores rely on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// A [rows, D] bf16 tile in shared memory, rows packed, 16-byte chunks XOR-swizzled by row: the
// eight rows an ldmatrix reads at one logical chunk land in eight different bank groups.
template <int D>
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
}

// Where the cache lives and how a sequence's tokens map into it.
struct PagedKv {
  const bf16* k;
  const bf16* v;
  const int32_t* page_table;  // [S, max_pages]
  int32_t max_pages, page_size, log2_page, kv_heads;
};

// Loads one kTileKeys-token tile of K and V (one KV head) from the paged cache into shared memory.
// Thread t owns chunk t % (D/8) of kRows consecutive rows, so with pages of at least kRows tokens
// it needs one page-table entry per tile, which it fetches a tile ahead (fetch_page) to keep the
// dependent global load off the copy's critical path. Smaller pages (a rare layout) look up each
// row as they copy it.
template <int D>
struct KvTileLoader {
  static constexpr int kChunks = D / 8;
  static constexpr int kRows = kTileKeys * kChunks / kThreads;
  static_assert(kRows * (kThreads / kChunks) == kTileKeys, "tile rows must split evenly over threads");

  int chunk, row0, page = 0;

  __device__ __forceinline__ explicit KvTileLoader(int tid) : chunk(tid % kChunks), row0((tid / kChunks) * kRows) {}

  // The page of this thread's rows in the tile whose first token is k0 (large pages only).
  __device__ __forceinline__ void fetch_page(const PagedKv& c, const int32_t* table_row, int k0, int kv_len) {
    const int tok0 = k0 + row0;
    if (c.page_size >= kRows && tok0 < kv_len) page = __ldg(table_row + (tok0 >> c.log2_page));
  }

  // Issues the async copies of the tile at k0 for KV head g (with the page fetched for it).
  __device__ __forceinline__ void issue(const PagedKv& c, const int32_t* table_row, int g, int k0, int kv_len,
                                        bf16* s_k, bf16* s_v) const {
    const uint32_t k_base = smem_u32(s_k), v_base = smem_u32(s_v);
    const int in_page = c.page_size - 1, tok0 = k0 + row0;
    const int64_t row_stride = static_cast<int64_t>(c.kv_heads) * D;  // between a page's tokens
    if (c.page_size >= kRows) {
      // All kRows rows sit in one page, one cache row apart: one address, then constant steps.
      const int64_t first = tok0 < kv_len ? ((static_cast<int64_t>(page) << c.log2_page) + (tok0 & in_page)) * row_stride +
                                                g * D + chunk * 8
                                          : 0;
      const bf16* k = c.k + first;
      const bf16* v = c.v + first;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool valid = tok0 + r < kv_len;
        const uint32_t dst = tile_offset<D>(row0 + r, chunk);
        cp_async_16(k_base + dst, valid ? k + r * row_stride : c.k, valid);
        cp_async_16(v_base + dst, valid ? v + r * row_stride : c.v, valid);
      }
      return;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int tok = tok0 + r;
      const bool valid = tok < kv_len;
      const int row_page = valid ? __ldg(table_row + (tok >> c.log2_page)) : 0;
      const int64_t slot = (static_cast<int64_t>(row_page) << c.log2_page) + (tok & in_page);
      const int64_t off = valid ? slot * row_stride + g * D + chunk * 8 : 0;
      const uint32_t dst = tile_offset<D>(row0 + r, chunk);
      cp_async_16(k_base + dst, c.k + off, valid);
      cp_async_16(v_base + dst, c.v + off, valid);
    }
  }
};

}  // namespace stem::cuda::attn
