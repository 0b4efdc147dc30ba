// The FP8 decode kernel that widens in registers (--kv-cache-dtype fp8, the default since it was
// measured against the shared-memory widening of attention_decode_kernel.cuh: bench/RESULTS.md).
//
// Each warp reads its keys' E4M3 codes straight from the stage into registers and turns them into
// f16 MMA fragments there: no widened tile, no widening barrier, one barrier a tile. Every E4M3
// value is an f16 value, so the codes go through f16 tensor-core MMAs (f32 accumulate) exactly.
// Two facts make the fragments cheap to build:
//  * q·k is a sum over d, and P·V a sum over keys: any order of d (the same for q and k) and any
//    order of the keys gives the same sums. So d is laid out, for q and k alike, such that a
//    thread's four values of an m16n8k16 K fragment are four consecutive bytes of its key's row
//    (physical d = c·D/4 + 4·kk + j for quad lane c, k-step kk and j = 0..3, standing for logical
//    columns 2c, 2c+1, 2c+8, 2c+9 of the step);
//  * V's output columns are laid out such that the D/8 columns a lane owns as the n index of the
//    P·V fragments are D/8 consecutive bytes of a value row (physical d = n·D/8 + dn), so a lane
//    reads 4 rows (its keys 2c, 2c+1, 2c+8, 2c+9) and pairs their bytes with byte permutes; the
//    output fragment's columns are mapped back when the warps merge.
// Codes become f16 either with the conversion instruction (cvt.rn.f16x2.e4m3x2, kIntCvt false) or
// with integer operations (kIntCvt true): sign | (code & 0x7f) << 7 read as f16 is the code's value
// times 2^-8 (normals and subnormals alike), which the f32 scales take back. Scales as the
// shared-memory kernel's: a key's scale multiplies its scores after q·codes, a value's scale its
// probability before P·V (rounded to f16 with a factor 2^8 that keeps small products off f16's
// subnormals; taken back in f32). q is rounded to f16 once (a bf16 value is an f16 value between
// 2^-14 and 65504; outside, clamped or rounded: queries that large do not occur in practice).
#pragma once
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/attention_decode_kernel.cuh"

namespace stem::cuda::attn {

constexpr int kFp8RegStages = 4;  // tiles in flight: three while one is computed

// A stage: K codes (64 rows of D bytes, 16-byte chunks swizzled by row), V codes alike, then the
// 64 K scales and the 64 V scales.
template <int D>
constexpr int fp8_reg_smem_bytes() {
  return kDecodeVectors * D * 2 + kFp8RegStages * fp8_stage_bytes<D>();
}
static_assert(4 * kDecodeVectors * (128 + 2) * 4 <= kFp8RegStages * fp8_stage_bytes<128>() &&
                  4 * kDecodeVectors * (64 + 2) * 4 <= kFp8RegStages * fp8_stage_bytes<64>(),
              "the merge area reuses the stages");

// Where 16-byte chunk `chunk` of a stage's row `row` lives: chunks XOR-swizzled by the row, so the
// lanes of a quarter warp reading rows (g, g+1) at chunks 2c (D 128) or rows 2c.. at chunk g fall
// in different banks.
template <int D>
__device__ __forceinline__ uint32_t fp8_row_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * D + ((chunk ^ (row & (D / 16 - 1))) << 4));
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The four codes of w (byte 0 first) as two f16 pairs: lo = (byte 0, byte 1), hi = (byte 2, byte 3).
// kIntCvt: each value times 2^-8 (see the file comment).
template <bool kIntCvt>
__device__ __forceinline__ void codes_to_f16(uint32_t w, uint32_t& lo, uint32_t& hi) {
  if constexpr (kIntCvt) {
    // Bytes to the low byte of each half, shifted to bits 7..14: the sign lands on bit 14, and
    // adding bit 14 to itself moves it to bit 15 (bit 15 is clear, so nothing carries further).
    const uint32_t a = __byte_perm(w, 0u, 0x4140) << 7, b = __byte_perm(w, 0u, 0x4342) << 7;
    lo = a + (a & 0x40004000u);
    hi = b + (b & 0x40004000u);
  } else {
    const __half2_raw l = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), __NV_E4M3);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3);
    lo = static_cast<uint32_t>(l.x) | (static_cast<uint32_t>(l.y) << 16);
    hi = static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
  }
}

// The async copies of one FP8 tile with the page ids looked up a tile ahead: thread t copies
// 16-byte chunk t % (D/16) of rows t / (D/16) + j·(128 / (D/16)), and the scale row t % 64 (K's
// for t < 64, V's after).
template <int D>
struct Fp8RegLoader {
  static constexpr int kChunks = D / 16;
  static constexpr int kRowStep = kThreads / kChunks;
  static constexpr int kRows = kTileKeys / kRowStep;
  int chunk, row0, page[kRows], scale_page = 0;

  __device__ __forceinline__ explicit Fp8RegLoader(int tid) : chunk(tid % kChunks), row0(tid / kChunks) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) page[r] = 0;
  }

  // The pages of the tile at k0 (plain loads: a thread waits for them only when it issues the tile).
  __device__ __forceinline__ void fetch(const DecodeParams& p, const int32_t* table_row, int k0, int kv_len, int tid) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int tok = k0 + row0 + r * kRowStep;
      page[r] = tok < kv_len ? __ldg(table_row + (tok >> p.kv.log2_page)) : 0;
    }
    const int tok = k0 + (tid & (kTileKeys - 1));
    scale_page = tok < kv_len ? __ldg(table_row + (tok >> p.kv.log2_page)) : 0;
  }

  __device__ __forceinline__ void issue(const DecodeParams& p, int g, int k0, int kv_len, unsigned char* stage,
                                        int tid) const {
    const uint32_t base = smem_u32(stage);
    const int in_page = p.kv.page_size - 1;
    const int64_t row_bytes = static_cast<int64_t>(p.kv.kv_heads) * D;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + r * kRowStep, tok = k0 + row;
      const bool valid = tok < kv_len;
      const int64_t off =
          valid ? ((static_cast<int64_t>(page[r]) << p.kv.log2_page) + (tok & in_page)) * row_bytes + g * D + chunk * 16 : 0;
      const uint32_t dst = fp8_row_offset<D>(row, chunk);
      cp_async_16(base + dst, p.k_codes + off, valid);
      cp_async_16(base + kTileKeys * D + dst, p.v_codes + off, valid);
    }
    const bool is_v = tid >= kTileKeys;
    const int tok = k0 + (tid & (kTileKeys - 1));
    const bool valid = tok < kv_len;
    const int64_t at =
        valid ? ((static_cast<int64_t>(scale_page) << p.kv.log2_page) + (tok & in_page)) * p.kv.kv_heads + g : 0;
    cp_async_4(base + 2 * kTileKeys * D + tid * 4, (is_v ? p.v_scale : p.k_scale) + at, valid);
  }
};
static_assert(kThreads == 2 * kTileKeys, "one thread a scale");

template <int D, bool kIntCvt>
__global__ void __launch_bounds__(kThreads, 2) decode_fp8_reg_kernel(const __grid_constant__ DecodeParams p) {
  constexpr int S = kFp8RegStages;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  unsigned char* s_stages = smem + kDecodeVectors * D * 2;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, c4 = lane & 3;
  const int seq = blockIdx.x, g = blockIdx.y / p.mtiles, split = blockIdx.z;
  pdl_wait();
  pdl_launch_dependents();
  DecodeWork w;
  if (!w.load(p, seq, blockIdx.y % p.mtiles) || !w.range(p, split)) return;
  const int start = w.start, end = w.end, n_tiles = w.n_tiles;
  issue_q_tile<D>(p, w, g, s_q, tid);
  cp_async_commit();

  const int32_t* table_row = p.kv.page_table + static_cast<int64_t>(seq) * p.kv.max_pages;
  Fp8RegLoader<D> loader(tid);
  auto stage_of = [&](int t) { return s_stages + (t % S) * fp8_stage_bytes<D>(); };
#pragma unroll
  for (int t = 0; t < S - 1; ++t) {
    if (t < n_tiles) {
      loader.fetch(p, table_row, start + t * kTileKeys, w.kv_len, tid);
      loader.issue(p, g, start + t * kTileKeys, w.kv_len, stage_of(t), tid);
    }
    cp_async_commit();
  }
  if (S - 1 < n_tiles) loader.fetch(p, table_row, start + (S - 1) * kTileKeys, w.kv_len, tid);
  cp_async_wait<S - 1>();  // the Q group
  __syncthreads();

  // q in f16 fragments, its d in the order of the file comment: a lane's k-step kk holds physical
  // columns c·D/4 + 4kk + 0..3 of its rows g and g+8.
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int col = c4 * (D / 4) + 4 * kk;
      const uint2 raw = *reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned char*>(s_q) +
                                                        tile_offset<D>(g4 + 8 * hf, col / 8) + (col % 8) * 2);
      const __nv_bfloat162 x01 = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
      const __nv_bfloat162 x23 = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
      auto clamp = [](float x) { return fminf(fmaxf(x, -65504.f), 65504.f); };
      qa[kk][hf] = pack_f16(clamp(__low2float(x01)), clamp(__high2float(x01)));
      qa[kk][2 + hf] = pack_f16(clamp(__low2float(x23)), clamp(__high2float(x23)));
    }

  int qpos[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) qpos[hf] = w.first_pos + min(w.vec0 + g4 + hf * 8, w.n_vec - 1) / p.group;

  constexpr float kKeyFactor = kIntCvt ? 256.f : 1.f;  // undoes the codes' 2^-8 (kIntCvt)
  float o[D / 8][4], row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dn][e] = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait<S - 2>();  // tile t has landed
    __syncthreads();         // ... for every thread, and every thread is done with tile t - 1
    if (t + S - 1 < n_tiles) {
      loader.issue(p, g, start + (t + S - 1) * kTileKeys, w.kv_len, stage_of(t + S - 1), tid);
      if (t + S < n_tiles) loader.fetch(p, table_row, start + (t + S) * kTileKeys, w.kv_len, tid);
    }
    cp_async_commit();
    const int k0 = start + t * kTileKeys + warp * 16;  // this warp's 16 keys
    if (k0 >= end) continue;
    const unsigned char* stage = stage_of(t);
    const float* s_scale = reinterpret_cast<const float*>(stage + 2 * kTileKeys * D);

    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int row = warp * 16 + n * 8 + g4;
      uint32_t kw[D / 16];  // bytes c·D/4 .. +D/4 of the key's row
#pragma unroll
      for (int h = 0; h < D / 64; ++h) {
        const uint4 x = *reinterpret_cast<const uint4*>(stage + fp8_row_offset<D>(row, c4 * (D / 64) + h));
        kw[4 * h] = x.x;
        kw[4 * h + 1] = x.y;
        kw[4 * h + 2] = x.z;
        kw[4 * h + 3] = x.w;
      }
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b0, b1;
        codes_to_f16<kIntCvt>(kw[kk], b0, b1);
        mma_f16(s[n], qa[kk], b0, b1);
      }
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = warp * 16 + n * 8 + 2 * c4 + (e & 1);
        s[n][e] *= s_scale[key] * kKeyFactor;
        const int kpos = start + t * kTileKeys + key, qp = qpos[e >> 1];
        if (kpos > qp || (p.window > 0 && qp - kpos >= p.window)) s[n][e] = -INFINITY;
      }
    online_softmax_tile<D>(s, row_max, row_sum, o, p.scale_log2);
    // Probabilities times the value scales (and 2^8: f16 keeps its precision down to 2^-14).
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= s_scale[kTileKeys + warp * 16 + n * 8 + 2 * c4 + (e & 1)] * 256.f;
    const uint32_t a[4] = {pack_f16(s[0][0], s[0][1]), pack_f16(s[0][2], s[0][3]), pack_f16(s[1][0], s[1][1]),
                           pack_f16(s[1][2], s[1][3])};
    // Value rows 2c, 2c+1, 2c+8, 2c+9 of the warp's keys, bytes g·D/8 .. +D/8 (output columns
    // (dn, g) for dn = 0 .. D/8-1).
    constexpr int kWords = D / 32;
    uint32_t vw[4][kWords];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = warp * 16 + 2 * c4 + (i & 1) + 8 * (i >> 1);
      const unsigned char* v_rows = stage + kTileKeys * D;
      if constexpr (D == 128) {
        const uint4 x = *reinterpret_cast<const uint4*>(v_rows + fp8_row_offset<D>(row, g4));
        vw[i][0] = x.x;
        vw[i][1] = x.y;
        vw[i][2] = x.z;
        vw[i][3] = x.w;
      } else {
        const uint2 x = *reinterpret_cast<const uint2*>(v_rows + fp8_row_offset<D>(row, g4 >> 1) + (g4 & 1) * 8);
        vw[i][0] = x.x;
        vw[i][1] = x.y;
      }
    }
#pragma unroll
    for (int m = 0; m < kWords; ++m) {
      uint32_t b0[4], b1[4];  // dn = 4m .. 4m+3
      codes_to_f16<kIntCvt>(__byte_perm(vw[0][m], vw[1][m], 0x5140), b0[0], b0[1]);
      codes_to_f16<kIntCvt>(__byte_perm(vw[0][m], vw[1][m], 0x7362), b0[2], b0[3]);
      codes_to_f16<kIntCvt>(__byte_perm(vw[2][m], vw[3][m], 0x5140), b1[0], b1[1]);
      codes_to_f16<kIntCvt>(__byte_perm(vw[2][m], vw[3][m], 0x7362), b1[2], b1[3]);
#pragma unroll
      for (int i = 0; i < 4; ++i) mma_f16(o[4 * m + i], a, b0[i], b1[i]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  // Undo P's 2^8 (and with the conversion instruction nothing else; the integer codes' 2^-8 cancels it).
  constexpr float kOutFactor = kIntCvt ? 1.f : 1.f / 256.f;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dn][e] *= kOutFactor;
  // Output fragment column (dn, 2c + j) is physical column (2c + j)·D/8 + dn.
  decode_merge_store<D>(p, w, reinterpret_cast<float*>(s_stages), o, row_max, row_sum, seq, g, split,
                        [](int dn, int j, int c) { return (2 * c + j) * (D / 8) + dn; });
}

}  // namespace stem::cuda::attn
