// Stem's estimate on the device (launches 1–4 of kernels/cuda/stem.cuh): pooling, value-norm
// statistics and the pooled GEMM. Include from stem.cu only (device code).
#pragma once
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/stem_params.cuh"

namespace stem::cuda::stem_kernels {

// Stores 8 pooled f32 values as bf16 hi (x rounded) and lo (the rest, rounded): hi + lo holds
// x to about 2^-17, which the GEMM's three products keep.
__device__ __forceinline__ void store_split8(void* hi_plane, void* lo_plane, int64_t at, const float (&x)[kVec]) {
  float lo[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) lo[e] = x[e] - __bfloat162float(__float2bfloat16_rn(x[e]));
  store8(static_cast<bf16*>(hi_plane) + at, x);
  store8(static_cast<bf16*>(lo_plane) + at, lo);
}

// Threads of the pooling kernels: S·(D/8), thread (t, c) owns stride offset t and channels 8c..8c+7.
// 1. Qp_t[i] = Σ_{r<R} q[iB + rS + S−1−t] over the block's rows (positions ≥ key_end count as 0).
// Grid (rows, Hq).
__global__ void pool_queries_kernel(const Params p) {
  const Row row = p.rows[blockIdx.x];
  const int h = blockIdx.y, chunks = p.head_dim / 8, t = threadIdx.x / chunks, c = threadIdx.x % chunks;
  const int rows = p.query_start[row.seq + 1] - p.query_start[row.seq];
  const int64_t row_of_pos0 = int64_t{p.query_start[row.seq]} - (p.kv_lens[row.seq] - rows);
  const bf16* q = static_cast<const bf16*>(p.q) + h * p.head_dim + c * 8;
  float acc[kVec] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int r = 0; r < p.per_block; ++r) {
    const int pos = row.block * p.block + r * p.stride + (p.stride - 1 - t);
    if (pos < row.key_end) {
      float x[kVec];
      load8(q + (row_of_pos0 + pos) * p.q_stride, x);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += x[e];
    }
  }
  const int64_t width = int64_t{p.stride} * p.head_dim;
  store_split8(p.qp_hi, p.qp_lo, (int64_t{blockIdx.x} * p.q_heads + h) * width + t * p.head_dim + c * 8, acc);
}

// 2. Kp_t[j] = Σ_{r<R} k[jB + rS + t] (positions ≥ kv_len count as 0), and for each group n of S
// keys in the block that has a position < kv_len, u[n] = log(max_s ‖v[nS + s]‖₂ + 1e-6).
// Grid (key jobs, Hkv); block S·D/8 threads (a multiple of 32: the norm's shuffles use whole warps).
__global__ void pool_keys_kernel(const Params p) {
  __shared__ float norm2[128];  // [r·S + t]: ‖v‖² of position jB + rS + t, −1 past kv_len (B = 128)
  const KeyJob job = p.key_jobs[blockIdx.x];
  const int g = blockIdx.y, chunks = p.head_dim / 8, t = threadIdx.x / chunks, c = threadIdx.x % chunks;
  const int kv_len = p.kv_lens[job.seq];
  const int32_t* table = p.page_table + int64_t{job.seq} * p.max_pages;
  const bf16* k_cache = static_cast<const bf16*>(p.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(p.v_cache);
  float acc[kVec] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int r = 0; r < p.per_block; ++r) {
    const int pos = job.block * p.block + r * p.stride + t;
    const bool valid = pos < kv_len;
    float sq = 0.f;
    if (valid) {
      const int64_t page = table[pos / p.page_size];
      const int64_t at = ((page * p.page_size + pos % p.page_size) * p.kv_heads + g) * p.head_dim + c * 8;
      float x[kVec], v[kVec];
      load8(k_cache + at, x);
      load8(v_cache + at, v);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        acc[e] += x[e];
        sq += v[e] * v[e];
      }
    }
    // The chunks of one position are adjacent lanes of one warp (chunks divides 32).
    for (int off = chunks / 2; off > 0; off >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, off);
    if (c == 0) norm2[r * p.stride + t] = valid ? sq : -1.f;
  }
  const int64_t width = int64_t{p.stride} * p.head_dim;
  store_split8(p.kp_hi, p.kp_lo, (int64_t{job.kp_row} * p.kv_heads + g) * width + t * p.head_dim + c * 8, acc);
  __syncthreads();
  for (int r = threadIdx.x; r < p.per_block; r += blockDim.x) {
    const int n = job.block * p.per_block + r;
    if (n * p.stride >= kv_len) continue;
    float largest = 0.f;
    for (int s = 0; s < p.stride; ++s) largest = fmaxf(largest, norm2[r * p.stride + s]);
    p.u[g * p.u_stride + job.u_base + n] = logf(sqrtf(largest) + 1e-6f);
  }
}

// 3. p1[c] = Σ_{n<c} u[n] and p2[c] = Σ_{n<c} u[n]² in f64 (the variance comes from their
// difference), in two passes over chunks of kScanThreads groups: (a) each chunk's inclusive scan
// and its total, (b) the totals of the chunks before it, summed in order, added on. The chunking
// is fixed by the group index, so every prefix sums the same elements in the same order whatever
// the sequence's length, and chunks of a prompt see the same statistics. Grid (max chunks of a
// job, stats jobs, Hkv).
constexpr int kScanThreads = 256;
__global__ void __launch_bounds__(kScanThreads) value_chunks_kernel(const Params p) {
  using Scan = cub::BlockScan<double, kScanThreads>;
  __shared__ typename Scan::TempStorage temp1, temp2;
  const StatsJob job = p.stats_jobs[blockIdx.y];
  const int c = blockIdx.x, g = blockIdx.z;
  if (c * kScanThreads >= job.n_groups) return;
  double* p1 = p.p1 + g * p.p_stride + job.p_base;
  double* p2 = p.p2 + g * p.p_stride + job.p_base;
  const int n = c * kScanThreads + static_cast<int>(threadIdx.x);
  const double x = n < job.n_groups ? double{p.u[g * p.u_stride + job.u_base + n]} : 0.0;
  double sum1, sum2, total1, total2;
  Scan(temp1).InclusiveSum(x, sum1, total1);
  Scan(temp2).InclusiveSum(x * x, sum2, total2);
  if (n < job.n_groups) {
    p1[n + 1] = sum1;
    p2[n + 1] = sum2;
  }
  if (threadIdx.x == 0) {
    double* t = p.chunk_sums + 2 * (int64_t{g} * p.stat_chunks + job.chunk_base + c);
    t[0] = total1;
    t[1] = total2;
    if (c == 0) p1[0] = p2[0] = 0.0;
  }
}

__global__ void __launch_bounds__(kScanThreads) value_prefix_kernel(const Params p) {
  __shared__ double before[2];
  const StatsJob job = p.stats_jobs[blockIdx.y];
  const int c = blockIdx.x, g = blockIdx.z;
  if (c == 0 || c * kScanThreads >= job.n_groups) return;
  if (threadIdx.x == 0) {
    const double* t = p.chunk_sums + 2 * (int64_t{g} * p.stat_chunks + job.chunk_base);
    double run1 = 0.0, run2 = 0.0;
    for (int k = 0; k < c; ++k) {
      run1 += t[2 * k];
      run2 += t[2 * k + 1];
    }
    before[0] = run1;
    before[1] = run2;
  }
  __syncthreads();
  const int n = c * kScanThreads + static_cast<int>(threadIdx.x);
  if (n < job.n_groups) {
    p.p1[g * p.p_stride + job.p_base + n + 1] += before[0];
    p.p2[g * p.p_stride + job.p_base + n + 1] += before[1];
  }
}

// 4. The estimate GEMM on the tensor cores: M = factor · Qp·Kpᵀ with each operand split into bf16
// hi + lo and three products summed in f32 (hi·hi + hi·lo + lo·hi; lo·lo is below 2^-16), which
// keeps the estimate within about 1e-5 of an f32 GEMM's, so selections differ from the CPU's only
// on near-ties. A CTA computes a 128×128 tile of M for one query head; 8 warps of 64×32 outputs,
// mma.sync m16n8k16 from ldmatrix fragments (the attention kernel's indexing); K in chunks of 64
// through a two-stage cp.async pipeline of four swizzled tiles (A hi/lo, B hi/lo). Grid (tiles, Hq).
constexpr int kGemmTile = 128, kGemmK = 64, kGemmThreads = 256;
constexpr int kGemmTileBytes = kGemmTile * kGemmK * 2;
constexpr int kGemmSmemBytes = 2 * 4 * kGemmTileBytes;  // 128 KB: one CTA per SM
__global__ void __launch_bounds__(kGemmThreads, 1) estimate_gemm_kernel(const Params p) {
  using attn::cp_async_16;
  using attn::ldmatrix_x4;
  using attn::mma_bf16;
  using attn::tile_offset;
  extern __shared__ __align__(128) unsigned char smem[];
  const Tile tile = p.tiles[blockIdx.x];
  const int h = blockIdx.y, g = h / p.group, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // rows wm·64.., columns wn·32..
  const int64_t width = int64_t{p.stride} * p.head_dim;  // K, a multiple of 64 (S·D with D = 64 or 128, S ≥ 4)
  const int64_t a_stride = int64_t{p.q_heads} * width, b_stride = int64_t{p.kv_heads} * width;
  const int64_t a_at = (int64_t{tile.row0} * p.q_heads + h) * width;
  const int64_t b_at = (int64_t{tile.kp_base + tile.col0} * p.kv_heads + g) * width;
  const bf16* planes[4] = {static_cast<const bf16*>(p.qp_hi) + a_at, static_cast<const bf16*>(p.qp_lo) + a_at,
                           static_cast<const bf16*>(p.kp_hi) + b_at, static_cast<const bf16*>(p.kp_lo) + b_at};
  const uint32_t smem_base = attn::smem_u32(smem);

  // One stage: 4 tiles × 128 rows × 8 chunks of 16 bytes; rows past the tile read as zeros.
  auto load_stage = [&](int stage, int chunk_k) {
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int part = 0; part < kGemmTile * 8 / kGemmThreads; ++part) {
        const int x = part * kGemmThreads + tid, row = x >> 3, chunk = x & 7;
        const bool valid = row < (t < 2 ? tile.rows : tile.cols);
        const bf16* src = planes[t] + (valid ? row * (t < 2 ? a_stride : b_stride) + chunk_k * kGemmK + chunk * 8 : 0);
        cp_async_16(smem_base + (stage * 4 + t) * kGemmTileBytes + tile_offset<kGemmK>(row, chunk), src, valid);
      }
    attn::cp_async_commit();
  };

  float acc[4][4][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

  const int chunks = static_cast<int>(width / kGemmK);
  load_stage(0, 0);
  for (int kc = 0; kc < chunks; ++kc) {
    if (kc + 1 < chunks)
      load_stage((kc + 1) & 1, kc + 1);
    else
      attn::cp_async_commit();  // an empty group keeps the wait count uniform
    attn::cp_async_wait<1>();
    __syncthreads();
    const uint32_t a_hi = smem_base + ((kc & 1) * 4 + 0) * kGemmTileBytes, a_lo = a_hi + kGemmTileBytes;
    const uint32_t b_hi = a_hi + 2 * kGemmTileBytes, b_lo = a_hi + 3 * kGemmTileBytes;
#pragma unroll
    for (int kk = 0; kk < kGemmK / 16; ++kk) {
      uint32_t ah[4][4], al[4][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        const uint32_t at = tile_offset<kGemmK>(wm * 64 + mt * 16 + (lane & 15), 2 * kk + (lane >> 4));
        ldmatrix_x4(ah[mt], a_hi + at);
        ldmatrix_x4(al[mt], a_lo + at);
      }
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        uint32_t bh[4], bl[4];
        const uint32_t at = tile_offset<kGemmK>(wn * 32 + nn * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1));
        ldmatrix_x4(bh, b_hi + at);
        ldmatrix_x4(bl, b_lo + at);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          mma_bf16(acc[mt][2 * nn], al[mt], bh[0], bh[1]);
          mma_bf16(acc[mt][2 * nn + 1], al[mt], bh[2], bh[3]);
          mma_bf16(acc[mt][2 * nn], ah[mt], bl[0], bl[1]);
          mma_bf16(acc[mt][2 * nn + 1], ah[mt], bl[2], bl[3]);
          mma_bf16(acc[mt][2 * nn], ah[mt], bh[0], bh[1]);
          mma_bf16(acc[mt][2 * nn + 1], ah[mt], bh[2], bh[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }
  attn::cp_async_wait<0>();

  // Rows past tile.rows are not written; columns past tile.cols hold 0 (zero keys) and stay inside
  // the row (cols is a multiple of 4 and covers every tile's columns).
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = wm * 64 + mt * 16 + (lane >> 2) + half * 8;
      if (row >= tile.rows) continue;
      float* out = p.estimate + (int64_t{tile.row0 + row} * p.q_heads + h) * p.cols + tile.col0;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int col = wn * 32 + nt * 8 + (lane & 3) * 2;
        if (tile.col0 + col >= p.cols) continue;
        *reinterpret_cast<float2*>(out + col) =
            make_float2(acc[mt][nt][2 * half] * p.factor, acc[mt][nt][2 * half + 1] * p.factor);
      }
    }
}

}  // namespace stem::cuda::stem_kernels
