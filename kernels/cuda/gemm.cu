// Row-major ↔ column-major: cuBLASLt thinks in column-major matrices. A row-major [R,C] matrix
// with row stride ld is, byte for byte, a column-major [C,R] matrix with leading dimension ld.
// So our row-major out[M,N] = a[M,K] · w[N,K]ᵀ is, seen column-major,
//     outᶜ [N,M] = wᶜ[K,N]ᵀ · aᶜ[K,M]
// i.e. cuBLASLt's D = op(A)·op(B) with A = w (K×N, transposed: CUBLAS_OP_T, lda = w's row stride),
// B = a (K×M, not transposed, ldb = a's row stride), D = out (N×M, ldd = out's row stride), and
// its m, n, k = our N, M, K. This "TN" form is the one cuBLAS runs fastest, and it makes the
// bias (one value per row of D, i.e. per output feature N) exactly what the BIAS epilogue adds.
//
// FP8 (fp8_matmul): the same TN form, which cuBLASLt's FP8 kernels on Ada and Hopper require (A
// transposed, B not), with A = w and B = a in CUDA_R_8F_E4M3. Their scales are vectors
// (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F: "each (i, j)-th element of product of A and B is
// multiplied by i-th element of A scale and j-th element of B scale", A's having m and B's n
// elements): A's scale is w_scale (our N, the output channels) and B's is a_scale (our M, the tokens).
#include <cuda_bf16.h>
#include <cublasLt.h>

#include <algorithm>
#include <bit>
#include <compare>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/fp8_gemv.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"

#define STEM_CUBLASLT_CHECK(call)                                                                                    \
  do {                                                                                                               \
    const cublasStatus_t stem_lt_status_ = (call);                                                                   \
    if (stem_lt_status_ != CUBLAS_STATUS_SUCCESS)                                                                    \
      ::stem::detail::check_failed(__FILE__, __LINE__, #call,                                                        \
                                   ::stem::detail::concat("cuBLASLt ", cublasLtGetStatusName(stem_lt_status_), ": ", \
                                                          cublasLtGetStatusString(stem_lt_status_)));                \
  } while (0)

namespace stem::cuda {

namespace {

// Everything the chosen algorithm depends on. Pointer alignments are in it because cuBLASLt's
// heuristics assume 256-byte-aligned operands unless told otherwise, and some of its kernels need that.
struct PlanKey {
  int64_t m, n, k, lda, ldw, ldo;
  DType out_dtype;
  bool has_bias;
  uint32_t align_a, align_w, align_out, align_bias;
  bool fp8 = false;  // E4M3 operands with a scale vector each (fp8_matmul)
  // FP8 with unit scales in cuBLASLt and both scale vectors applied by scale_kernel after it.
  bool fp8_epilogue = false;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr, a_layout = nullptr, out_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // destructors never throw: failures here are ignored
    if (out_layout) cublasLtMatrixLayoutDestroy(out_layout);
    if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
    if (w_layout) cublasLtMatrixLayoutDestroy(w_layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// The largest power of two (up to 256) that divides the address.
uint32_t alignment_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

// Past this many shapes the cache starts over: a guard against unbounded growth, not a tuning knob.
constexpr size_t kMaxPlans = 8192;

// Tuning: cuBLASLt's first heuristic pick is not always its fastest (the H100 op benchmark found
// o_proj at M=1 at 64% of copy bandwidth and gate_up at M=8192 at 88% of the GEMM ceiling). So the
// first matmul of a shape bucket times up to kTuneCandidates of the heuristic's candidates on its
// real operands and keeps the fastest. A bucket is the shape with M rounded up to a power of two:
// a server meets every prompt length, and tuning each would cost more than it saves; the other
// shapes of a bucket reuse its algorithm when cuBLASLt accepts it for them (AlgoCheck).
// Only decode-sized and small prefill steps are tuned (M ≤ kTuneMaxRows): there the heuristic's
// pick left the most on the table (lm_head, down, qkv at M = 1..256), while at M = 8192 two H100
// runs picked candidates that then ran 9-15% slower than the first pick in the op benchmark
// (timing on repeated operands misleads there), and the whole-model TTFT moved by 1% at most.
// STEM_GEMM_TUNE=0 turns tuning off (the heuristic's first pick, as before).
constexpr int kTuneCandidates = 12;
constexpr int64_t kTuneMaxRows = kGemmTuneMaxRows;
constexpr int kTuneRuns = 3;

// Where matmul runs cuda::gemv (gemv.cuh) instead of cuBLASLt: measured on an H100 (bench_ops and
// bench_model's decode steps, bench/RESULTS.md), gemv is ahead at 1-2 rows, the long-K down
// projection (K = 14336) included; at 3-4 rows it is about even alone and ahead in a decode step,
// where it overlaps the kernel before it (pdl.cuh) and cuBLASLt's kernels do not; from 6 rows on
// it is behind.
constexpr int64_t kGemvDispatchRows = 4;
constexpr int64_t kGemvDispatchMaxK = 16384;

int64_t bucket_of(int64_t m) { return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(m))); }

// STEM_FP8_SCALES: "cublaslt" (vector scales only), "epilogue" (unit scales and our kernel),
// anything else or unset: auto.
Fp8Scales fp8_scales_from_env() {
  const char* v = std::getenv("STEM_FP8_SCALES");
  if (v && std::strcmp(v, "cublaslt") == 0) return Fp8Scales::CublasLt;
  if (v && std::strcmp(v, "epilogue") == 0) return Fp8Scales::Epilogue;
  return Fp8Scales::Auto;
}

bool env_enabled(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// The operands of one matmul call, for timing candidates on them.
struct Operands {
  const void* w;
  const void* a;
  void* out;
  cudaStream_t stream;
  const void* w_scale = nullptr;  // FP8: cuBLASLt's A scale (a vector of N)
  const void* a_scale = nullptr;  // FP8: cuBLASLt's B scale (a vector of M)
};

// FP8: the two scale vectors of this call, set on the plan's descriptor (read by cublasLtMatmul
// at launch, so each call sets its own, as the bias pointer).
void set_scale_pointers(cublasLtMatmulDesc_t desc, const Operands& ops) {
  STEM_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ops.w_scale, sizeof ops.w_scale));
  STEM_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ops.a_scale, sizeof ops.a_scale));
}

// out[m, n] = bf16(out[m, n] · (a_scale[m] · w_scale[n]) + bias[n]) (bias null: none), in f32:
// the FP8 GEMM's scales where cuBLASLt ran it with unit scales (the fallback, fp8_matmul).
__global__ void scale_kernel(__nv_bfloat16* out, int64_t ld, const float* a_scale, const float* w_scale,
                             const __nv_bfloat16* bias, int64_t m, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  const int64_t r = i / n, c = i % n;
  __nv_bfloat16* o = out + r * ld + c;
  const float b = bias ? __bfloat162float(bias[c]) : 0.f;
  *o = __float2bfloat16_rn(__fmaf_rn(__bfloat162float(*o), a_scale[r] * w_scale[c], b));
}

// out[m, n] += bias[n] (bf16, out row-strided): the FP8 GEMM's bias. Not cuBLASLt's BIAS epilogue:
// whether its FP8 kernels with per-row/per-column scales take one, and whether they add it before
// or after the scales, is not documented; a kernel of ours after the GEMM is certain (one more
// bf16 rounding, and a launch for the models with biases, Qwen2's qkv).
__global__ void add_bias_kernel(__nv_bfloat16* out, int64_t ld, const __nv_bfloat16* bias, int64_t m, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  __nv_bfloat16* o = out + (i / n) * ld + i % n;
  *o = __float2bfloat16_rn(__bfloat162float(*o) + __bfloat162float(bias[i % n]));
}

}  // namespace

struct GemmContext::Impl {
  size_t workspace_bytes;
  int device = -1;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  std::map<PlanKey, cublasLtMatmulAlgo_t> tuned;  // by bucket (PlanKey with m = bucket_of(m))
  bool tune = env_enabled("STEM_GEMM_TUNE");
  bool gemv = env_enabled("STEM_GEMV");
  bool fp8_gemv = env_enabled("STEM_FP8_GEMV");
  size_t tunings = 0;
  Fp8Scales fp8_scales = fp8_scales_from_env();
  std::set<PlanKey> fp8_outer_failed;  // FP8 shapes run with unit scales and scale_kernel

  explicit Impl(size_t bytes) : workspace_bytes(bytes) {}
  ~Impl() {
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  // Creates the handle and workspace on first use, on the device current then; later calls must
  // stay on that device (the workspace lives there).
  void ensure_ready() {
    if (handle) {
      int current = -1;
      CUDA_CHECK(cudaGetDevice(&current));
      STEM_CHECK(current == device, "matmul: this GemmContext was set up on device ", device,
                 " but the current device is ", current);
      return;
    }
    CUDA_CHECK(cudaGetDevice(&device));
    STEM_CUBLASLT_CHECK(cublasLtCreate(&handle));
    if (workspace_bytes > 0) CUDA_CHECK(cudaMalloc(&workspace, workspace_bytes));
  }

  // may_fail: return null instead of throwing when cuBLASLt has no algorithm for the plan.
  Plan* plan_for(const PlanKey& key, const void* bias, const Operands& ops, bool may_fail = false) {
    if (auto it = plans.find(key); it != plans.end()) return it->second.get();
    if (plans.size() >= kMaxPlans) plans.clear();
    auto plan = std::make_unique<Plan>();
    const cudaDataType_t out_type = key.out_dtype == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t in_type = key.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    STEM_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_w = CUBLAS_OP_T, trans_a = CUBLAS_OP_N;
    STEM_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_w, sizeof trans_w));
    STEM_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_a, sizeof trans_a));
    if (key.fp8) {
      // Fast accumulation off (the default, set to say so): the tensor cores' partial sums are
      // promoted to f32 as the CPU twin sums.
      const int8_t fast_accum = 0;
      STEM_CUBLASLT_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof fast_accum));
    }
    if (key.fp8 && !key.fp8_epilogue) {
      const int32_t outer_vec = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
      STEM_CUBLASLT_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer_vec, sizeof outer_vec));
      STEM_CUBLASLT_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer_vec, sizeof outer_vec));
      set_scale_pointers(plan->desc, ops);
    }
    STEM_CHECK(!(key.fp8 && key.has_bias), "fp8_matmul: the bias is added after cuBLASLt, not in its epilogue");
    if (key.has_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const auto bias_type = static_cast<int32_t>(out_type);
      STEM_CUBLASLT_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
      STEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                         sizeof bias_type));
      // The heuristics read the bias pointer's alignment from here.
      STEM_CUBLASLT_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    STEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->w_layout, in_type, key.k, key.n, key.ldw));
    STEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->a_layout, in_type, key.k, key.m, key.lda));
    STEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->out_layout, out_type, key.n, key.m, key.ldo));

    cublasLtMatmulPreference_t pref = nullptr;
    STEM_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_w,
                                         sizeof key.align_w);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a,
                                         sizeof key.align_a);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_out,
                                         sizeof key.align_out);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_out,
                                         sizeof key.align_out);
    cublasLtMatmulHeuristicResult_t results[kTuneCandidates]{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->w_layout, plan->a_layout, plan->out_layout,
                                       plan->out_layout, pref, kTuneCandidates, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (may_fail && !((status == CUBLAS_STATUS_SUCCESS || status == CUBLAS_STATUS_NOT_SUPPORTED) && found > 0))
      return nullptr;
    STEM_CHECK((status == CUBLAS_STATUS_SUCCESS || status == CUBLAS_STATUS_NOT_SUPPORTED) && found > 0,
               key.fp8 ? "fp8_matmul" : "matmul", ": cuBLASLt found no algorithm for M=", key.m, " N=", key.n,
               " K=", key.k, " (lda ", key.lda, ", ldw ", key.ldw, ", ldo ", key.ldo, ", out ",
               dtype_name(key.out_dtype), key.has_bias ? ", bias" : "",
               key.fp8 ? ", E4M3 operands; run the model without --quantization fp8 (bf16)" : "",
               "): ", cublasLtGetStatusString(status));
    plan->algo = results[0].algo;
    if (tune && key.m <= kTuneMaxRows) {
      PlanKey bucket = key;
      bucket.m = bucket_of(key.m);
      if (auto it = tuned.find(bucket); it != tuned.end()) {
        if (accepts(*plan, it->second)) plan->algo = it->second;
      } else if (can_time(ops.stream)) {
        plan->algo = fastest(*plan, results, found, ops);
        tuned.emplace(bucket, plan->algo);
        ++tunings;
      }
    }
    return plans.emplace(key, std::move(plan)).first->second.get();
  }

  // Whether cuBLASLt can run `algo` for the plan's shapes (an algorithm tuned on another M).
  bool accepts(const Plan& plan, const cublasLtMatmulAlgo_t& algo) const {
    cublasLtMatmulHeuristicResult_t check{};
    return cublasLtMatmulAlgoCheck(handle, plan.desc, plan.w_layout, plan.a_layout, plan.out_layout, plan.out_layout,
                                   &algo, &check) == CUBLAS_STATUS_SUCCESS &&
           check.workspaceSize <= workspace_bytes;
  }

  // Timing needs to synchronise the stream, which a stream being captured into a graph cannot do.
  static bool can_time(cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    return capture == cudaStreamCaptureStatusNone;
  }

  cublasStatus_t run(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const Operands& ops) {
    const float alpha = 1.f, beta = 0.f;  // beta = 0: out is never read, so a poisoned buffer is fine
    return cublasLtMatmul(handle, plan.desc, &alpha, ops.w, plan.w_layout, ops.a, plan.a_layout, &beta, ops.out,
                          plan.out_layout, ops.out, plan.out_layout, &algo, workspace, workspace_bytes, ops.stream);
  }

  // The candidate that runs the plan fastest on these operands (writing `out`, which the caller
  // overwrites right after). Clocks drift while a GPU warms up, so every candidate is timed in two
  // rounds (its best run counts), and another beats the heuristic's first pick only by more than
  // kTuneMargin. Candidates that fail to launch are skipped.
  cublasLtMatmulAlgo_t fastest(const Plan& plan, const cublasLtMatmulHeuristicResult_t* candidates, int n,
                               const Operands& ops) {
    constexpr float kTuneMargin = 0.97f;
    cudaEvent_t events[kTuneRuns + 1];
    for (cudaEvent_t& e : events) CUDA_CHECK(cudaEventCreate(&e));
    std::vector<float> best_ms(static_cast<size_t>(n), -1.f);
    for (int round = 0; round < 2; ++round)
      for (int c = 0; c < n; ++c) {
        if (candidates[c].state != CUBLAS_STATUS_SUCCESS || (round > 0 && best_ms[c] < 0)) continue;
        if (run(plan, candidates[c].algo, ops) != CUBLAS_STATUS_SUCCESS) continue;  // warm-up
        bool ok = true;
        CUDA_CHECK(cudaEventRecord(events[0], ops.stream));
        for (int r = 0; r < kTuneRuns && ok; ++r) {
          ok = run(plan, candidates[c].algo, ops) == CUBLAS_STATUS_SUCCESS;
          CUDA_CHECK(cudaEventRecord(events[r + 1], ops.stream));
        }
        CUDA_CHECK(cudaEventSynchronize(events[kTuneRuns]));
        if (!ok) continue;
        for (int r = 0; r < kTuneRuns; ++r) {
          float ms = 0;
          CUDA_CHECK(cudaEventElapsedTime(&ms, events[r], events[r + 1]));
          if (best_ms[c] < 0 || ms < best_ms[c]) best_ms[c] = ms;
        }
      }
    for (cudaEvent_t e : events) cudaEventDestroy(e);
    int best = 0;
    for (int c = 1; c < n; ++c)
      if (best_ms[c] >= 0 && (best_ms[best] < 0 || best_ms[c] < best_ms[best] * (best == 0 ? kTuneMargin : 1.f)))
        best = c;
    return candidates[best].algo;
  }
};

GemmContext::GemmContext(size_t workspace_bytes) : impl_(std::make_unique<Impl>(workspace_bytes)) {}
void GemmContext::set_fp8_scales(Fp8Scales how) { impl_->fp8_scales = how; }
size_t GemmContext::fp8_epilogue_plans() const {
  size_t n = 0;
  for (const auto& [key, plan] : impl_->plans) n += key.fp8_epilogue;
  return n;
}
GemmContext::~GemmContext() = default;
size_t GemmContext::cached_plans() const { return impl_->plans.size(); }
size_t GemmContext::tunings() const { return impl_->tunings; }
void GemmContext::set_gemv(bool on) { impl_->gemv = on; }
void GemmContext::set_fp8_gemv(bool on) { impl_->fp8_gemv = on; }

void matmul(GemmContext& ctx, const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias,
            cudaStream_t stream) {
  STEM_CHECK(out.dtype == DType::BF16 || out.dtype == DType::F32, "matmul out must be bf16 or f32, got ", out.str());
  cpu::check_rows(out, "matmul out", out.dtype, 2);
  cpu::check_rows(a, "matmul a", DType::BF16, 2);
  cpu::check_rows(w, "matmul w", DType::BF16, 2);
  const int64_t m = a.shape[0], k = a.shape[1], n = w.shape[0];
  STEM_CHECK(w.shape[1] == k, "matmul: w ", w.str(), " must be [N,K] with K = ", k, " as in a ", a.str());
  STEM_CHECK(out.shape[0] == m && out.shape[1] == n, "matmul: out ", out.str(), " must be [", m, ",", n, "] for a ",
             a.str(), " and w ", w.str());
  if (!bias.empty()) {
    cpu::check_packed(bias, "matmul bias", out.dtype, 1);
    cpu::check_dim(bias, "matmul bias", 0, n, "N, the rows of w");
  }
  if (m == 0 || n == 0) return;
  STEM_CHECK(k > 0, "matmul: K must be positive, got a ", a.str());

  GemmContext::Impl& impl = ctx.impl();
  if (impl.gemv && m <= kGemvDispatchRows && k <= kGemvDispatchMaxK && gemv_accepts(out, a, w)) {
    gemv(out, a, w, bias, stream);
    return;
  }
  impl.ensure_ready();
  const PlanKey key{m,
                    n,
                    k,
                    cpu::row_stride(a),
                    cpu::row_stride(w),
                    cpu::row_stride(out),
                    out.dtype,
                    !bias.empty(),
                    alignment_of(a.data),
                    alignment_of(w.data),
                    alignment_of(out.data),
                    bias.empty() ? 0u : alignment_of(bias.data)};
  const Operands ops{w.data, a.data, out.data, stream};
  Plan& plan = *impl.plan_for(key, bias.data, ops);
  if (!bias.empty())
    STEM_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.data, sizeof bias.data));
  STEM_CUBLASLT_CHECK(impl.run(plan, plan.algo, ops));
}

void fp8_matmul(GemmContext& ctx, const TensorView& out, const TensorView& a, const TensorView& a_scale,
                const TensorView& w, const TensorView& w_scale, const TensorView& bias, cudaStream_t stream) {
  cpu::check_rows(out, "fp8_matmul out", DType::BF16, 2);
  cpu::check_rows(a, "fp8_matmul a", DType::F8E4M3, 2);
  cpu::check_rows(w, "fp8_matmul w", DType::F8E4M3, 2);
  const int64_t m = a.shape[0], k = a.shape[1], n = w.shape[0];
  STEM_CHECK(w.shape[1] == k, "fp8_matmul: w ", w.str(), " must be [N,K] with K = ", k, " as in a ", a.str());
  STEM_CHECK(out.shape[0] == m && out.shape[1] == n, "fp8_matmul: out ", out.str(), " must be [", m, ",", n,
             "] for a ", a.str(), " and w ", w.str());
  cpu::check_packed(a_scale, "fp8_matmul a_scale", DType::F32, 1);
  cpu::check_dim(a_scale, "fp8_matmul a_scale", 0, m, "one scale per row of a");
  cpu::check_packed(w_scale, "fp8_matmul w_scale", DType::F32, 1);
  cpu::check_dim(w_scale, "fp8_matmul w_scale", 0, n, "one scale per row of w");
  if (!bias.empty()) {
    cpu::check_packed(bias, "fp8_matmul bias", DType::BF16, 1);
    cpu::check_dim(bias, "fp8_matmul bias", 0, n, "N, the rows of w");
  }
  if (m == 0 || n == 0) return;
  STEM_CHECK(k > 0, "fp8_matmul: K must be positive, got a ", a.str());
  // cuBLASLt's FP8 kernels want every operand 16-byte aligned (its documented FP8 requirements).
  STEM_CHECK(k % 16 == 0 && n % 16 == 0, "fp8_matmul: cuBLASLt's FP8 GEMM needs K and N multiples of 16, got K=", k,
             " N=", n);
  STEM_CHECK(cpu::row_stride(a) % 16 == 0 && cpu::row_stride(w) % 16 == 0 && cpu::row_stride(out) % 8 == 0,
             "fp8_matmul: row strides must be 16-byte multiples (a ", cpu::row_stride(a), ", w ", cpu::row_stride(w),
             " E4M3 values; out ", cpu::row_stride(out), " bf16 values)");
  for (const TensorView* v : {&a, &w, &out, &a_scale, &w_scale})
    STEM_CHECK(alignment_of(v->data) >= 16, "fp8_matmul: every operand must be 16-byte aligned, got ", v->str(),
               " at ", v->data);

  GemmContext::Impl& impl = ctx.impl();
  if (impl.fp8_gemv && m <= kFp8GemvRows && fp8_gemv_accepts(out, a, w)) {
    fp8_gemv(out, a, a_scale, w, w_scale, bias, stream);
    return;
  }
  impl.ensure_ready();
  PlanKey key{m,
              n,
              k,
              cpu::row_stride(a),
              cpu::row_stride(w),
              cpu::row_stride(out),
              DType::BF16,
              false,  // the bias: add_bias_kernel, after
              alignment_of(a.data),
              alignment_of(w.data),
              alignment_of(out.data),
              0u,
              true};
  const Operands ops{w.data, a.data, out.data, stream, w_scale.data, a_scale.data};
  constexpr int kThreads = 256;
  const auto blocks = static_cast<unsigned>((m * n + kThreads - 1) / kThreads);
  // cuBLASLt's vector scales first; where it has no algorithm for them (or they fail to run), unit
  // scales and scale_kernel, for this shape from then on (counted: fp8_epilogue_plans).
  if (impl.fp8_scales != Fp8Scales::Epilogue && !impl.fp8_outer_failed.contains(key)) {
    if (Plan* plan = impl.plan_for(key, nullptr, ops, impl.fp8_scales == Fp8Scales::Auto)) {
      set_scale_pointers(plan->desc, ops);
      const cublasStatus_t status = impl.run(*plan, plan->algo, ops);
      if (status == CUBLAS_STATUS_SUCCESS) {
        if (!bias.empty()) {
          add_bias_kernel<<<blocks, kThreads, 0, stream>>>(out.ptr<__nv_bfloat16>(), cpu::row_stride(out),
                                                           bias.ptr<__nv_bfloat16>(), m, n);
          STEM_CUDA_CHECK_LAUNCH();
        }
        return;
      }
      STEM_CHECK(impl.fp8_scales == Fp8Scales::Auto, "fp8_matmul M=", m, " N=", n, " K=", k,
                 " with cuBLASLt's per-row/per-column scales: cuBLASLt ", cublasLtGetStatusName(status), ": ",
                 cublasLtGetStatusString(status));
    }
    impl.fp8_outer_failed.insert(key);
  }
  key.fp8_epilogue = true;
  Plan& plan = *impl.plan_for(key, nullptr, ops);
  STEM_CUBLASLT_CHECK(impl.run(plan, plan.algo, ops));
  scale_kernel<<<blocks, kThreads, 0, stream>>>(out.ptr<__nv_bfloat16>(), cpu::row_stride(out), a_scale.ptr<float>(),
                                                w_scale.ptr<float>(),
                                                bias.empty() ? nullptr : bias.ptr<__nv_bfloat16>(), m, n);
  STEM_CUDA_CHECK_LAUNCH();
}

}  // namespace stem::cuda
