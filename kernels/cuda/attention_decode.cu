// Paged decode attention: the kernels live in attention_decode_kernel.cuh; this file holds the
// launcher, which sizes the split of long contexts and the workspace for the partial states.
#include "kernels/cuda/attention_decode.cuh"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "kernels/cuda/attention_decode_fp8.cuh"
#include "kernels/cuda/attention_decode_kernel.cuh"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/kv_fp8.cuh"

namespace stem::cuda {
namespace {

// Tokens a split covers at least: shorter chunks cost more in partial states than they win.
constexpr int64_t kMinChunk = 256;
constexpr int64_t kMaxSplits = 1024;

// The kernel of each cache and FP8 variant, and its shared memory.
template <int D, bool kFp8>
std::pair<void (*)(attn::DecodeParams), int> decode_kernel_of(Fp8DecodeKernel fp8) {
  if constexpr (kFp8) {
    if (fp8 == Fp8DecodeKernel::kRegisters) return {attn::decode_fp8_reg_kernel<D, false>, attn::fp8_reg_smem_bytes<D>()};
    if (fp8 == Fp8DecodeKernel::kRegistersInt) return {attn::decode_fp8_reg_kernel<D, true>, attn::fp8_reg_smem_bytes<D>()};
  }
  return {attn::decode_kernel<D, kFp8>, attn::decode_smem_bytes<D, kFp8>()};
}

template <int D, bool kFp8>
void launch_decode(attn::DecodeParams p, int64_t seqs, int64_t kv_heads, cudaStream_t stream) {
  const auto [kernel, smem] = decode_kernel_of<D, kFp8>(fp8_decode_kernel());
  attn::allow_smem(reinterpret_cast<const void*>(kernel), smem, "paged_decode");
  STEM_CHECK(seqs < (int64_t{1} << 31) && kv_heads * p.mtiles < 65536, "paged_decode: ", seqs, " sequences x ",
             kv_heads * p.mtiles, " head tiles do not fit one launch");
  const dim3 grid(static_cast<unsigned>(seqs), static_cast<unsigned>(kv_heads * p.mtiles), 1);
  void* workspace = nullptr;
  if (p.splits > 1) {
    const int64_t vectors = seqs * kv_heads * p.mtiles * p.splits * attn::kDecodeVectors;
    CUDA_CHECK(cudaMallocAsync(&workspace, static_cast<size_t>(vectors) * (D + 1) * sizeof(float), stream));
    p.part_o = static_cast<float*>(workspace);
    p.part_lse = p.part_o + vectors * D;
  }
  try {
    launch_pdl(kernel, dim3(grid.x, grid.y, static_cast<unsigned>(p.splits)), attn::kThreads, smem,
               stream, p);
    if (p.splits > 1) launch_pdl(attn::decode_reduce_kernel<D>, grid, attn::kThreads, 0, stream, p);
  } catch (...) {
    if (workspace != nullptr) cudaFreeAsync(workspace, stream);
    throw;
  }
  if (workspace != nullptr) CUDA_CHECK(cudaFreeAsync(workspace, stream));
}

std::atomic<int> g_fp8_decode{-1};  // -1: not chosen yet (STEM_FP8_DECODE, else the default)

}  // namespace

Fp8DecodeKernel fp8_decode_kernel() {
  int k = g_fp8_decode.load(std::memory_order_relaxed);
  if (k < 0) {
    k = static_cast<int>(parse_fp8_decode_kernel(std::getenv("STEM_FP8_DECODE")));
    g_fp8_decode.store(k, std::memory_order_relaxed);
  }
  return static_cast<Fp8DecodeKernel>(k);
}

void set_fp8_decode_kernel(Fp8DecodeKernel kernel) { g_fp8_decode.store(static_cast<int>(kernel), std::memory_order_relaxed); }

Fp8DecodeKernel parse_fp8_decode_kernel(const char* name) {
  if (name == nullptr || *name == '\0') return Fp8DecodeKernel::kRegisters;
  if (!std::strcmp(name, "widen")) return Fp8DecodeKernel::kWiden;
  if (!std::strcmp(name, "regs")) return Fp8DecodeKernel::kRegisters;
  if (!std::strcmp(name, "regs-int")) return Fp8DecodeKernel::kRegistersInt;
  throw Error(std::string("STEM_FP8_DECODE: '") + name + "' is not widen, regs or regs-int");
}

int64_t decode_max_rows(int64_t q_heads, int64_t kv_heads) {
  STEM_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, "decode_max_rows: ", q_heads, " q heads over ", kv_heads,
             " KV heads");
  return std::max<int64_t>(1, attn::kDecodeVectors / (q_heads / kv_heads));
}

namespace {

// The launch of either cache: the shape checked by the caller, the split sized here.
template <bool kFp8>
void decode(const attn::AttentionShape& s, attn::DecodeParams p, const TensorView& out, const TensorView& q,
            const TensorView& kv_lens, const TensorView& query_start, cudaStream_t stream) {
  if (s.tokens == 0 || s.seqs == 0) return;
  const int64_t group = s.q_heads / s.kv_heads, max_rows = decode_max_rows(s.q_heads, s.kv_heads);
  p.out = out.ptr<attn::bf16>();
  p.q = q.ptr<const attn::bf16>();
  p.kv = s.kv;
  p.kv_lens = kv_lens.ptr<const int32_t>();
  p.query_start = query_start.ptr<const int32_t>();
  p.q_stride = s.q_stride;
  p.out_stride = s.out_stride;
  p.group = static_cast<int32_t>(group);
  p.max_rows = static_cast<int32_t>(max_rows);
  p.mtiles = static_cast<int32_t>((max_rows * group + attn::kDecodeVectors - 1) / attn::kDecodeVectors);
  p.window = s.window;
  p.scale_log2 = s.scale_log2;

  // Split long contexts until the grid fills the device about twice (two CTAs fit an SM); the
  // page table's width is the longest context the host can know of without reading kv_lens.
  const int64_t max_kv = std::max<int64_t>(1, int64_t{s.kv.max_pages} * s.kv.page_size);
  const int64_t units = s.seqs * s.kv_heads * p.mtiles, target = 2 * attn::multiprocessors();
  int64_t splits = std::clamp<int64_t>((target + units - 1) / units, 1, kMaxSplits);
  splits = std::min(splits, (max_kv + kMinChunk - 1) / kMinChunk);
  int64_t chunk = (max_kv + splits - 1) / splits;
  chunk = (chunk + attn::kTileKeys - 1) / attn::kTileKeys * attn::kTileKeys;
  p.chunk = static_cast<int32_t>(chunk);
  p.splits = static_cast<int32_t>((max_kv + chunk - 1) / chunk);
  if (s.head_dim == 64)
    launch_decode<64, kFp8>(p, s.seqs, s.kv_heads, stream);
  else
    launch_decode<128, kFp8>(p, s.seqs, s.kv_heads, stream);
}

}  // namespace

void paged_decode(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                  const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                  int64_t sliding_window, cudaStream_t stream) {
  const attn::AttentionShape s = attn::check_attention("paged_decode", out, q, k_cache, v_cache, page_table, kv_lens,
                                                       query_start, scale, sliding_window);
  decode<false>(s, attn::DecodeParams{}, out, q, kv_lens, query_start, stream);
}

void paged_decode_fp8(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& k_scale, const TensorView& v_scale, const TensorView& page_table,
                      const TensorView& kv_lens, const TensorView& query_start, float scale, int64_t sliding_window,
                      cudaStream_t stream, const TensorView& only) {
  const attn::AttentionShape s = attn::check_attention("paged_decode_fp8", out, q, k_cache, v_cache, page_table,
                                                       kv_lens, query_start, scale, sliding_window, DType::F8E4M3);
  check_fp8_kv_cache(k_cache, v_cache, k_scale, v_scale, "paged_decode_fp8");
  attn::DecodeParams p{};
  p.k_codes = k_cache.ptr<const uint8_t>();
  p.v_codes = v_cache.ptr<const uint8_t>();
  p.k_scale = k_scale.ptr<const float>();
  p.v_scale = v_scale.ptr<const float>();
  if (!only.empty()) {
    cpu::check_packed(only, "paged_decode_fp8 only", DType::I32, 1);
    cpu::check_dim(only, "paged_decode_fp8 only", 0, s.seqs, "sequences, the rows of page_table");
    p.only = only.ptr<const int32_t>();
  }
  decode<true>(s, p, out, q, kv_lens, query_start, stream);
}

}  // namespace stem::cuda
