// Stem's estimate on the device (launches 1–4 of kernels/cuda/stem.cuh): pooling, value-norm
// statistics and the pooled GEMM. Include from stem.cu only (device code).
#pragma once
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/stem_params.cuh"

namespace stem::cuda::stem_kernels {

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
  store8(p.qp + (int64_t{blockIdx.x} * p.q_heads + h) * width + t * p.head_dim + c * 8, acc);
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
  store8(p.kp + (int64_t{job.kp_row} * p.kv_heads + g) * width + t * p.head_dim + c * 8, acc);
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
// difference). Every prefix sums the same elements in the same order whatever the sequence's
// length, so chunks of a prompt see the same statistics. Grid (stats jobs, Hkv).
constexpr int kScanThreads = 256;
__global__ void __launch_bounds__(kScanThreads) value_stats_kernel(const Params p) {
  using Scan = cub::BlockScan<double, kScanThreads>;
  __shared__ typename Scan::TempStorage temp1, temp2;
  const StatsJob job = p.stats_jobs[blockIdx.x];
  const int g = blockIdx.y;
  const float* u = p.u + g * p.u_stride + job.u_base;
  double* p1 = p.p1 + g * p.p_stride + job.p_base;
  double* p2 = p.p2 + g * p.p_stride + job.p_base;
  if (threadIdx.x == 0) p1[0] = p2[0] = 0.0;
  double run1 = 0.0, run2 = 0.0;
  for (int base = 0; base < job.n_groups; base += kScanThreads) {
    const int n = base + static_cast<int>(threadIdx.x);
    const double x = n < job.n_groups ? double{u[n]} : 0.0;
    double sum1, sum2, total1, total2;
    Scan(temp1).InclusiveSum(x, sum1, total1);
    Scan(temp2).InclusiveSum(x * x, sum2, total2);
    if (n < job.n_groups) {
      p1[n + 1] = run1 + sum1;
      p2[n + 1] = run2 + sum2;
    }
    run1 += total1;
    run2 += total2;
    __syncthreads();  // temp1/temp2 are reused by the next chunk
  }
}

// 4. The estimate GEMM, f32 on the CUDA cores (a few GFLOP at 128K; f32 keeps the CUDA estimate
// within rounding of the CPU's, so selections differ only on true ties). A CTA computes a 128×128
// tile of M for one query head: 256 threads, 8×8 outputs each (two 4×4 quads 64 apart, so the
// shared-memory reads are float4 and conflict-free), K in steps of 8 through double-buffered
// shared memory. Grid (tiles, Hq).
constexpr int kGemmTile = 128, kGemmK = 8, kGemmThreads = 256;
__global__ void __launch_bounds__(kGemmThreads) estimate_gemm_kernel(const Params p) {
  __shared__ __align__(16) float a_s[2][kGemmK][kGemmTile];
  __shared__ __align__(16) float b_s[2][kGemmK][kGemmTile];
  const Tile tile = p.tiles[blockIdx.x];
  const int h = blockIdx.y, g = h / p.group, tid = threadIdx.x;
  const int64_t width = int64_t{p.stride} * p.head_dim;  // K, a multiple of 8
  // Loader: thread loads one float4 of A and one of B per step: row tid / 2, k offset 4·(tid % 2).
  const int load_row = tid / 2, load_k = (tid % 2) * 4;
  const float* a_src =
      load_row < tile.rows ? p.qp + (int64_t{tile.row0 + load_row} * p.q_heads + h) * width + load_k : nullptr;
  const float* b_src =
      load_row < tile.cols ? p.kp + (int64_t{tile.kp_base + tile.col0 + load_row} * p.kv_heads + g) * width + load_k
                           : nullptr;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  auto stage = [&](int buf, float4 a, float4 b) {
    a_s[buf][load_k + 0][load_row] = a.x, a_s[buf][load_k + 1][load_row] = a.y;
    a_s[buf][load_k + 2][load_row] = a.z, a_s[buf][load_k + 3][load_row] = a.w;
    b_s[buf][load_k + 0][load_row] = b.x, b_s[buf][load_k + 1][load_row] = b.y;
    b_s[buf][load_k + 2][load_row] = b.z, b_s[buf][load_k + 3][load_row] = b.w;
  };
  stage(0, a_src ? *reinterpret_cast<const float4*>(a_src) : zero, b_src ? *reinterpret_cast<const float4*>(b_src) : zero);
  __syncthreads();

  const int ty = tid / 16, tx = tid % 16;
  float acc[8][8];
#pragma unroll
  for (int m = 0; m < 8; ++m)
#pragma unroll
    for (int n = 0; n < 8; ++n) acc[m][n] = 0.f;

  const int steps = static_cast<int>(width / kGemmK);
  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    float4 a_next = zero, b_next = zero;
    if (s + 1 < steps) {
      if (a_src) a_next = *reinterpret_cast<const float4*>(a_src + (s + 1) * kGemmK);
      if (b_src) b_next = *reinterpret_cast<const float4*>(b_src + (s + 1) * kGemmK);
    }
#pragma unroll
    for (int kk = 0; kk < kGemmK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&a_s[buf][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&a_s[buf][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&b_s[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&b_s[buf][kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int m = 0; m < 8; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc[m][n] = fmaf(a[m], b[n], acc[m][n]);
    }
    if (s + 1 < steps) stage(buf ^ 1, a_next, b_next);  // the other buffer: last read before the previous sync
    __syncthreads();
  }

  // Rows past tile.rows are not written; columns past tile.cols hold 0 (zero keys) and stay inside
  // the row (cols is a multiple of 4 and covers every tile's columns).
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const int row = (m < 4 ? ty * 4 + m : 64 + ty * 4 + m - 4);
    if (row >= tile.rows) continue;
    float* out = p.estimate + (int64_t{tile.row0 + row} * p.q_heads + h) * p.cols + tile.col0;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int col = half * 64 + tx * 4;
      if (tile.col0 + col >= p.cols) continue;
      *reinterpret_cast<float4*>(out + col) =
          make_float4(acc[m][4 * half] * p.factor, acc[m][4 * half + 1] * p.factor, acc[m][4 * half + 2] * p.factor,
                      acc[m][4 * half + 3] * p.factor);
    }
  }
}

}  // namespace stem::cuda::stem_kernels
