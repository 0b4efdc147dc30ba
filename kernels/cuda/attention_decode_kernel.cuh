// The decode kernels. A CTA owns (sequence, KV head, up to 16 query vectors, one chunk of the
// context); its four warps split every 64-key tile (16 keys each) and keep separate online-softmax
// states, merged through shared memory at the end. The 16 query vectors (row r, head-in-group hh →
// vector r·G + hh) form one m16 MMA tile, so the group's heads cost the tensor cores nothing extra
// and each K/V tile is read from memory once for all of them.
//
// With an FP8 cache (kFp8: --kv-cache-dtype fp8, kernels/cuda/kv_fp8.cuh) the stages hold the
// tile's E4M3 codes (half the bytes) and its 2·64 scales; each tile's codes are widened to bf16 in
// shared memory (exactly: every E4M3 value is a bf16 value) and go through the same MMAs, with the
// scales applied in registers: a key's scale multiplies its column of scores after q·codes (f32),
// a value's scale multiplies its probability before P·V (so P·(code·scale) is summed in f32 as the
// CPU twin's code·scale values are).
#pragma once
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>

#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/pdl.cuh"

namespace stem::cuda::attn {

constexpr int kDecodeStages = 3;  // K/V tiles in flight per CTA: decode is bound by memory
constexpr int kDecodeVectors = 16;

struct DecodeParams {
  bf16* out;
  const bf16* q;
  PagedKv kv;
  const int32_t* kv_lens;
  const int32_t* query_start;
  float* part_o;    // [S, Hkv·mtiles, splits, 16, D]: each split's normalised output (splits > 1)
  float* part_lse;  // [S, Hkv·mtiles, splits, 16]: its log2-sum-exp of scaled scores
  int64_t q_stride, out_stride;
  int32_t group, max_rows, mtiles, splits, chunk, window;
  float scale_log2;
  // FP8 cache (kFp8): codes [P·page_size, Hkv·D] and scales [P·page_size, Hkv] (kv.k, kv.v unused).
  const uint8_t* k_codes;
  const uint8_t* v_codes;
  const float* k_scale;
  const float* v_scale;
  // Optional (either cache): i32 [S]; a sequence whose entry is 0 is skipped (nothing read or written).
  const int32_t* only;
};

// FP8: a stage's codes (K then V, kTileKeys rows of D bytes each) and scales (K's kTileKeys, then V's).
template <int D>
constexpr int fp8_stage_bytes() {
  return 2 * kTileKeys * D + 2 * kTileKeys * 4;
}

// bf16: Q, then the stages. FP8: Q, the widened bf16 tile (K, V), then the FP8 stages.
template <int D, bool kFp8 = false>
constexpr int decode_smem_bytes() {
  if constexpr (kFp8) return (kDecodeVectors * D + 2 * kTileKeys * D) * 2 + kDecodeStages * fp8_stage_bytes<D>();
  return (kDecodeVectors * D + kDecodeStages * 2 * kTileKeys * D) * 2;
}
static_assert(4 * kDecodeVectors * (128 + 2) * 4 <= kDecodeStages * 2 * kTileKeys * 128 * 2,
              "the merge area reuses the K/V stages");
static_assert(4 * kDecodeVectors * (64 + 2) * 4 <= decode_smem_bytes<64, true>() - kDecodeVectors * 64 * 2 &&
                  4 * kDecodeVectors * (128 + 2) * 4 <= decode_smem_bytes<128, true>() - kDecodeVectors * 128 * 2,
              "the merge area reuses the widened tile and the FP8 stages");

// E4M3 → f32, exact (through fp16, which holds every E4M3 value).
__device__ __forceinline__ float fp8_code_value(uint8_t code) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3)));
}

// 4-byte global→shared copy (a scale); zero-filled when !valid.
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

// Issues the async copies of one FP8 tile (tokens k0 .. k0+63 of KV head g) into a stage: codes
// in plain rows of D bytes (16-byte chunks), then the K and V scales. Rows past kv_len are zeros.
template <int D>
__device__ __forceinline__ void issue_fp8_tile(const DecodeParams& p, const int32_t* table_row, int g, int k0,
                                               int kv_len, unsigned char* stage, int tid) {
  constexpr int kChunks16 = D / 16;
  const int in_page = p.kv.page_size - 1;
  const int64_t row_bytes = static_cast<int64_t>(p.kv.kv_heads) * D;  // between a page's tokens
  const uint32_t base = smem_u32(stage);
  for (int c = tid; c < kTileKeys * kChunks16; c += kThreads) {
    const int r = c / kChunks16, chunk = c % kChunks16, tok = k0 + r;
    const bool valid = tok < kv_len;
    const int page = valid ? __ldg(table_row + (tok >> p.kv.log2_page)) : 0;
    const int64_t off = valid ? ((static_cast<int64_t>(page) << p.kv.log2_page) + (tok & in_page)) * row_bytes +
                                    g * D + chunk * 16
                              : 0;
    const uint32_t dst = static_cast<uint32_t>(r * D + chunk * 16);
    cp_async_16(base + dst, p.k_codes + off, valid);
    cp_async_16(base + kTileKeys * D + dst, p.v_codes + off, valid);
  }
  for (int c = tid; c < 2 * kTileKeys; c += kThreads) {
    const bool is_v = c >= kTileKeys;
    const int r = is_v ? c - kTileKeys : c, tok = k0 + r;
    const bool valid = tok < kv_len;
    const int page = valid ? __ldg(table_row + (tok >> p.kv.log2_page)) : 0;
    const int64_t at = valid ? ((static_cast<int64_t>(page) << p.kv.log2_page) + (tok & in_page)) * p.kv.kv_heads + g : 0;
    cp_async_4(base + 2 * kTileKeys * D + c * 4, (is_v ? p.v_scale : p.k_scale) + at, valid);
  }
}

// Widens a stage's codes into the bf16 tile (K at s_k, V right after), in tile_offset's layout.
template <int D>
__device__ __forceinline__ void widen_fp8_tile(const unsigned char* stage, bf16* s_k, int tid) {
  constexpr int kChunks = D / 8;
  for (int c = tid; c < 2 * kTileKeys * kChunks; c += kThreads) {
    const bool is_v = c >= kTileKeys * kChunks;
    const int cc = is_v ? c - kTileKeys * kChunks : c, r = cc / kChunks, chunk = cc % kChunks;
    const uint2 raw = *reinterpret_cast<const uint2*>(stage + (is_v ? kTileKeys * D : 0) + r * D + chunk * 8);
    const uint8_t* code = reinterpret_cast<const uint8_t*>(&raw);
    uint4 out;
    out.x = pack_bf16(fp8_code_value(code[0]), fp8_code_value(code[1]));
    out.y = pack_bf16(fp8_code_value(code[2]), fp8_code_value(code[3]));
    out.z = pack_bf16(fp8_code_value(code[4]), fp8_code_value(code[5]));
    out.w = pack_bf16(fp8_code_value(code[6]), fp8_code_value(code[7]));
    unsigned char* tile = reinterpret_cast<unsigned char*>(s_k + (is_v ? kTileKeys * D : 0));
    *reinterpret_cast<uint4*>(tile + tile_offset<D>(r, chunk)) = out;
  }
}

// Which query vectors a CTA owns; false when this CTA has nothing to do for the sequence.
struct DecodeWork {
  int row_begin, n_rows, n_vec, vec0, kv_len, first_pos;
  __device__ bool load(const DecodeParams& p, int seq, int mtile) {
    if (p.only != nullptr && p.only[seq] == 0) return false;
    row_begin = p.query_start[seq];
    n_rows = p.query_start[seq + 1] - row_begin;
    if (n_rows == 0 || n_rows > p.max_rows) return false;  // idle, or the prefill kernel's
    n_vec = n_rows * p.group;
    vec0 = mtile * kDecodeVectors;
    kv_len = p.kv_lens[seq];
    first_pos = kv_len - n_rows;
    return vec0 < n_vec;
  }
  // The keys split `split` covers: tiles from `start` (the first tile the sliding window reaches)
  // up to `end`; false when the split starts past the context (the reduce counts only the splits
  // that start inside it).
  int start, end, n_tiles;
  __device__ bool range(const DecodeParams& p, int split) {
    const int begin = split * p.chunk;
    if (begin >= kv_len) return false;
    end = min(kv_len, begin + p.chunk);
    const int k_min = p.window > 0 ? max(0, first_pos - p.window + 1) : 0;
    start = max(begin, k_min & ~(kTileKeys - 1));
    n_tiles = start < end ? (end - start + kTileKeys - 1) / kTileKeys : 0;
    return true;
  }
};

// The CTA's 16 query vectors of KV head g into s_q (bf16 rows of D, tile_offset's layout), by async
// copies; padding vectors are zeros. The caller commits the group.
template <int D>
__device__ __forceinline__ void issue_q_tile(const DecodeParams& p, const DecodeWork& w, int g, bf16* s_q, int tid) {
  constexpr int kChunks = D / 8;
  for (int c = tid; c < kDecodeVectors * kChunks; c += kThreads) {
    const int r = c / kChunks, chunk = c % kChunks, v = w.vec0 + r;
    const bool valid = v < w.n_vec;
    const bf16* src = valid ? p.q + static_cast<int64_t>(w.row_begin + v / p.group) * p.q_stride +
                                  static_cast<int64_t>(g * p.group + v % p.group) * D + chunk * 8
                            : p.q;
    cp_async_16(smem_u32(s_q) + tile_offset<D>(r, chunk), src, valid);
  }
}

// One 16-key score fragment s (this warp's keys, masked to -inf) into the online softmax of
// the thread's two rows: the running max and sum, the output fragment rescaled, and s turned into
// the probabilities 2^(s·scale_log2 − max) that P·V takes.
template <int D>
__device__ __forceinline__ void online_softmax_tile(float (&s)[2][4], float (&row_max)[2], float (&row_sum)[2],
                                                    float (&o)[D / 8][4], float scale_log2) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float mx = quad_max(fmaxf(fmaxf(s[0][2 * hf], s[0][2 * hf + 1]), fmaxf(s[1][2 * hf], s[1][2 * hf + 1])));
    const float new_max = fmaxf(row_max[hf], mx * scale_log2);
    const float base = new_max == -INFINITY ? 0.f : new_max;
    const float alpha = fast_exp2(row_max[hf] - base);
    row_max[hf] = new_max;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
        s[n][e] = fast_exp2(fmaf(s[n][e], scale_log2, -base));
        sum += s[n][e];
      }
    row_sum[hf] = row_sum[hf] * alpha + sum;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      o[dn][2 * hf] *= alpha;
      o[dn][2 * hf + 1] *= alpha;
    }
  }
}

// The end of both decode kernels: merges the four warps' online-softmax states (through s_o, the
// stages' space) and writes the vectors' outputs (or, with splits, the partial states). col(dn, j,
// c) is the column of output fragment o[dn][2·hf + j] in quad lane c.
template <int D, typename Col>
__device__ __forceinline__ void decode_merge_store(const DecodeParams& p, const DecodeWork& w, float* s_o,
                                                   const float (&o)[D / 8][4], const float (&row_max)[2],
                                                   const float (&row_sum)[2], int seq, int g, int split, Col col) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Merge the four warps' states: each writes (max, sum, unnormalised output) per row.
  float* s_ml = s_o + 4 * kDecodeVectors * D;  // s_o: [4][16][D], then [4][16][2]
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = (lane >> 2) + hf * 8, at = warp * kDecodeVectors + r;
    const float l = quad_sum(row_sum[hf]);
    if ((lane & 3) == 0) {
      s_ml[2 * at] = row_max[hf];
      s_ml[2 * at + 1] = l;
    }
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      s_o[at * D + col(dn, 0, lane & 3)] = o[dn][2 * hf];
      s_o[at * D + col(dn, 1, lane & 3)] = o[dn][2 * hf + 1];
    }
  }
  __syncthreads();

  // Thread → row tid / 8, columns [(tid % 8)·D/8, +D/8).
  constexpr int kCols = D / 8;
  const int r = tid >> 3, c0 = (tid & 7) * kCols, v = w.vec0 + r;
  float m_all = -INFINITY;
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) m_all = fmaxf(m_all, s_ml[2 * (wi * kDecodeVectors + r)]);
  const float base = m_all == -INFINITY ? 0.f : m_all;
  float weight[4], l_all = 0.f;
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) {
    weight[wi] = fast_exp2(s_ml[2 * (wi * kDecodeVectors + r)] - base);
    l_all += weight[wi] * s_ml[2 * (wi * kDecodeVectors + r) + 1];
  }
  if (v >= w.n_vec) return;
  const float inv = l_all > 0.f ? 1.f / l_all : 0.f;
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    acc[c] = 0.f;
#pragma unroll
    for (int wi = 0; wi < 4; ++wi) acc[c] += weight[wi] * s_o[(wi * kDecodeVectors + r) * D + c0 + c];
    acc[c] *= inv;
  }
  if (p.splits == 1) {
    bf16* dst = p.out + static_cast<int64_t>(w.row_begin + v / p.group) * p.out_stride +
                static_cast<int64_t>(g * p.group + v % p.group) * D + c0;
#pragma unroll
    for (int c = 0; c < kCols; c += 8) {
      uint4 packed;
      packed.x = pack_bf16(acc[c], acc[c + 1]);
      packed.y = pack_bf16(acc[c + 2], acc[c + 3]);
      packed.z = pack_bf16(acc[c + 4], acc[c + 5]);
      packed.w = pack_bf16(acc[c + 6], acc[c + 7]);
      *reinterpret_cast<uint4*>(dst + c) = packed;
    }
  } else {
    const int64_t at = ((static_cast<int64_t>(seq) * gridDim.y + blockIdx.y) * p.splits + split) * kDecodeVectors + r;
    float* dst = p.part_o + at * D + c0;
#pragma unroll
    for (int c = 0; c < kCols; c += 4) *reinterpret_cast<float4*>(dst + c) = make_float4(acc[c], acc[c + 1], acc[c + 2], acc[c + 3]);
    if ((tid & 7) == 0) p.part_lse[at] = l_all > 0.f ? base + __log2f(l_all) : -INFINITY;
  }
}

template <int D, bool kFp8 = false>
__global__ void __launch_bounds__(kThreads, 2) decode_kernel(const __grid_constant__ DecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_kv = s_q + kDecodeVectors * D;  // stage st: K at st·2·64·D, V right after (FP8: the widened tile)
  unsigned char* s_fp8 = reinterpret_cast<unsigned char*>(s_kv + 2 * kTileKeys * D);  // FP8: the stages
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int seq = blockIdx.x, g = blockIdx.y / p.mtiles, split = blockIdx.z;
  pdl_wait();  // q and the newest K/V come from the kernels before
  pdl_launch_dependents();
  DecodeWork w;
  if (!w.load(p, seq, blockIdx.y % p.mtiles) || !w.range(p, split)) return;
  const int start = w.start, end = w.end, n_tiles = w.n_tiles;
  issue_q_tile<D>(p, w, g, s_q, tid);
  cp_async_commit();

  const int32_t* table_row = p.kv.page_table + static_cast<int64_t>(seq) * p.kv.max_pages;
  KvTileLoader<D> loader(tid);
  auto issue = [&](int t) {
    const int k0 = start + t * kTileKeys;
    if constexpr (kFp8) {
      issue_fp8_tile<D>(p, table_row, g, k0, w.kv_len, s_fp8 + (t % kDecodeStages) * fp8_stage_bytes<D>(), tid);
    } else {
      bf16* s_k = s_kv + (t % kDecodeStages) * 2 * kTileKeys * D;
      loader.fetch_page(p.kv, table_row, k0, w.kv_len);
      loader.issue(p.kv, table_row, g, k0, w.kv_len, s_k, s_k + kTileKeys * D);
    }
  };
#pragma unroll
  for (int t = 0; t < kDecodeStages - 1; ++t) {
    if (t < n_tiles) issue(t);
    cp_async_commit();
  }
  cp_async_wait<kDecodeStages - 1>();  // the Q group
  __syncthreads();
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[kk], smem_u32(s_q) + tile_offset<D>(lane & 15, 2 * kk + (lane >> 4)));

  // This thread's two rows (lane/4, lane/4 + 8) and their positions; padding vectors borrow the
  // last real vector's position so their numbers stay finite (they are never written).
  int qpos[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
    qpos[hf] = w.first_pos + min(w.vec0 + (lane >> 2) + hf * 8, w.n_vec - 1) / p.group;

  float o[D / 8][4], row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dn][e] = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    if (t + kDecodeStages - 1 < n_tiles) issue(t + kDecodeStages - 1);
    cp_async_commit();
    cp_async_wait<kDecodeStages - 1>();
    __syncthreads();
    const float* s_scale = nullptr;  // FP8: this tile's K scales, then V's
    if constexpr (kFp8) {
      const unsigned char* stage = s_fp8 + (t % kDecodeStages) * fp8_stage_bytes<D>();
      widen_fp8_tile<D>(stage, s_kv, tid);
      s_scale = reinterpret_cast<const float*>(stage + 2 * kTileKeys * D);
      __syncthreads();
    }
    const int k0 = start + t * kTileKeys + warp * 16;  // this warp's 16 keys
    if (k0 < end) {
      const uint32_t k_base = smem_u32(s_kv + (kFp8 ? 0 : (t % kDecodeStages) * 2 * kTileKeys * D));
      const uint32_t v_base = k_base + kTileKeys * D * 2;
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b[4];
        ldmatrix_x4(b, k_base + tile_offset<D>(warp * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
        mma_bf16(s[0], qa[kk], b[0], b[1]);
        mma_bf16(s[1], qa[kk], b[2], b[3]);
      }
      if constexpr (kFp8) {
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[n][e] *= s_scale[warp * 16 + n * 8 + ((lane & 3) << 1) + (e & 1)];
      }
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kpos = k0 + n * 8 + ((lane & 3) << 1) + (e & 1), qp = qpos[e >> 1];
          if (kpos > qp || (p.window > 0 && qp - kpos >= p.window)) s[n][e] = -INFINITY;
        }
      online_softmax_tile<D>(s, row_max, row_sum, o, p.scale_log2);
      if constexpr (kFp8) {
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[n][e] *= s_scale[kTileKeys + warp * 16 + n * 8 + ((lane & 3) << 1) + (e & 1)];
      }
      const uint32_t a[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]), pack_bf16(s[1][0], s[1][1]),
                             pack_bf16(s[1][2], s[1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_base + tile_offset<D>(warp * 16 + (lane & 15), 2 * dn + (lane >> 4)));
        mma_bf16(o[2 * dn], a, b[0], b[1]);
        mma_bf16(o[2 * dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the stage is refilled by a later issue
  }
  cp_async_wait<0>();
  __syncthreads();

  decode_merge_store<D>(p, w, reinterpret_cast<float*>(s_kv), o, row_max, row_sum, seq, g, split,
                        [](int dn, int j, int c) { return dn * 8 + 2 * c + j; });
}

// Merges the splits of each query vector: weights 2^(lse_c − max) over the splits that started
// inside the context. Grid (S, Hkv·mtiles); warp w takes vectors w, w+4, …; lane l columns l·D/32….
template <int D>
__global__ void __launch_bounds__(kThreads) decode_reduce_kernel(const __grid_constant__ DecodeParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seq = blockIdx.x, g = blockIdx.y / p.mtiles;
  pdl_wait();
  pdl_launch_dependents();
  DecodeWork w;
  if (!w.load(p, seq, blockIdx.y % p.mtiles)) return;
  const int n_splits = min(p.splits, (w.kv_len + p.chunk - 1) / p.chunk);
  constexpr int kCols = D / 32;
  for (int r = warp; r < kDecodeVectors; r += 4) {
    const int v = w.vec0 + r;
    if (v >= w.n_vec) break;
    const int64_t at0 = (static_cast<int64_t>(seq) * gridDim.y + blockIdx.y) * p.splits * kDecodeVectors + r;
    float m_all = -INFINITY;
    for (int c = lane; c < n_splits; c += 32) m_all = fmaxf(m_all, p.part_lse[at0 + c * kDecodeVectors]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m_all = fmaxf(m_all, __shfl_xor_sync(0xffffffffu, m_all, off));
    const float base = m_all == -INFINITY ? 0.f : m_all;
    float acc[kCols] = {}, l_all = 0.f;
    for (int c = 0; c < n_splits; ++c) {
      const int64_t at = at0 + c * kDecodeVectors;
      const float weight = fast_exp2(p.part_lse[at] - base);
      l_all += weight;
#pragma unroll
      for (int k = 0; k < kCols; ++k) acc[k] += weight * p.part_o[at * D + lane * kCols + k];
    }
    const float inv = l_all > 0.f ? 1.f / l_all : 0.f;
    bf16* dst = p.out + static_cast<int64_t>(w.row_begin + v / p.group) * p.out_stride +
                static_cast<int64_t>(g * p.group + v % p.group) * D + lane * kCols;
#pragma unroll
    for (int k = 0; k < kCols; k += 2) *reinterpret_cast<uint32_t*>(dst + k) = pack_bf16(acc[k] * inv, acc[k + 1] * inv);
  }
}

}  // namespace stem::cuda::attn
