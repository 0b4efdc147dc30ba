// Host half of the Hopper prefill path: the dispatch rule, the TMA tensor maps over q and the paged
// cache, and the launch. The kernel itself is in attention_prefill_sm90_kernel.cuh.
#include "kernels/cuda/attention_prefill_sm90.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention_prefill_sm90_kernel.cuh"

namespace stem::cuda::sm90 {
namespace {

// STEM_PREFILL_SM90: 0 = off (the mma.sync kernel), 1 to 4 = the kernel builds in the switch of
// launch_prefill_sm90; unset or anything else = the default (4). All pass the prefill tests on
// the H100 (bench/RESULTS.md has their times). The consumers' schedule moved the time by ±3%;
// giving V a producer warp of its own (so a K copy never waits behind a V slot) took 4-7%; a
// third K or V slot (with two Q buffers, the most shared memory allows) then changed nothing.
constexpr int kDefaultMode = 4;
constexpr int kModes = 5;

int mode() {
  const char* v = std::getenv("STEM_PREFILL_SM90");
  if (v != nullptr && v[0] >= '0' && v[0] < '0' + kModes && v[1] == '\0') return v[0] - '0';
  return kDefaultMode;
}

template <class C>
void launch(const PrefillParams& p, const CUtensorMap& tm_q, const CUtensorMap& tm_k, const CUtensorMap& tm_v,
            int64_t grid, cudaStream_t stream, const char* op) {
  attn::allow_smem(reinterpret_cast<const void*>(&prefill_sm90_kernel<C>), C::Layout::kBytes, op);
  prefill_sm90_kernel<C><<<static_cast<unsigned>(grid), kThreads, C::Layout::kBytes, stream>>>(p, tm_q, tm_k, tm_v);
  STEM_CUDA_CHECK_LAUNCH();
}

// Compute capability as major·10 + minor, asked once per device.
int compute_capability() {
  static std::array<std::atomic<int>, attn::kMaxDevices> cache{};
  const int device = attn::current_device();
  if (const int known = cache[device].load(std::memory_order_relaxed)) return known;
  int major = 0, minor = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  cache[device].store(major * 10 + minor, std::memory_order_relaxed);
  return major * 10 + minor;
}

// cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    STEM_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr,
               "block_sparse_prefill: the driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A 3-D bf16 tensor map [dim2][dim1][dim0 = 128] whose boxes are (64 columns, 1, rows) in the
// 128-byte swizzle layout the kernel's wgmma descriptors expect. Strides in elements.
CUtensorMap tile_map(const void* base, uint64_t dim1, uint64_t dim2, uint64_t stride1, uint64_t stride2, uint32_t rows,
                     const char* what) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {kHeadDim, dim1, dim2};
  const cuuint64_t strides[2] = {stride1 * 2, stride2 * 2};  // bytes, of dims 1 and 2
  const cuuint32_t box[3] = {64, 1, rows};
  const cuuint32_t elem[3] = {1, 1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides,
                                    box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  STEM_CHECK(r == CUDA_SUCCESS, "block_sparse_prefill: cuTensorMapEncodeTiled failed for ", what, " (error ",
             static_cast<int>(r), ", dims ", dim1, " x ", dim2, ")");
  return map;
}

}  // namespace

bool use_prefill_sm90(const attn::AttentionShape& s) {
  // TMA coordinates are 32-bit: the cache's rows and q's tokens must fit.
  const bool fits = s.pages * s.kv.page_size < (int64_t{1} << 31) && s.tokens < (int64_t{1} << 31);
  return s.head_dim == kHeadDim && s.kv.page_size >= 8 && fits && mode() != 0 && compute_capability() == 90;
}

void launch_prefill_sm90(const attn::AttentionShape& s, const attn::PrefillParams& p, cudaStream_t stream,
                         const char* op) {
  const int64_t items = int64_t{p.n_qblocks} * p.q_heads;
  const int64_t grid = std::min<int64_t>(items, attn::multiprocessors());
  if (grid == 0) return;
  // q as [tokens][heads][128] with a row stride; the cache as [pages·page_size][kv heads][128].
  const CUtensorMap tm_q = tile_map(p.q, static_cast<uint64_t>(s.q_heads), static_cast<uint64_t>(s.tokens), kHeadDim,
                                    static_cast<uint64_t>(s.q_stride), kBlock, "q");
  const uint64_t cache_rows = static_cast<uint64_t>(s.pages) * static_cast<uint64_t>(s.kv.page_size);
  const uint64_t row_stride = static_cast<uint64_t>(s.kv_heads) * kHeadDim;
  const CUtensorMap tm_k = tile_map(s.kv.k, static_cast<uint64_t>(s.kv_heads), cache_rows, kHeadDim, row_stride,
                                    static_cast<uint32_t>(s.kv.page_size), "k_cache");
  const CUtensorMap tm_v = tile_map(s.kv.v, static_cast<uint64_t>(s.kv_heads), cache_rows, kHeadDim, row_stride,
                                    static_cast<uint32_t>(s.kv.page_size), "v_cache");
  using S = Schedule;
  switch (mode()) {  // schedule, K slots, V slots, Q buffers, V's own producer warp
    case 1: return launch<Config<S::kSerial, 2, 2, 2, false>>(p, tm_q, tm_k, tm_v, grid, stream, op);
    case 2: return launch<Config<S::kPipelined, 2, 2, 2, false>>(p, tm_q, tm_k, tm_v, grid, stream, op);
    case 3: return launch<Config<S::kPingPong, 2, 2, 2, false>>(p, tm_q, tm_k, tm_v, grid, stream, op);
    default: return launch<Config<S::kPingPong, 2, 2, 2, true>>(p, tm_q, tm_k, tm_v, grid, stream, op);
  }
}

}  // namespace stem::cuda::sm90
