// Op benchmarks on the GPU: each CUDA op of kernels/cuda at Llama-3.1-8B sizes, timed with CUDA
// events (median of 20 after 3 warm-ups), printed as TFLOP/s (GEMMs) or GB/s (the memory-bound
// ops) beside two ceilings measured in the same run: a device-to-device copy (bytes read + written)
// and an 8192³ bf16 GEMM through cuBLASLt. Inputs are random, never zeros.
// FP8 (issue 18): the same projections in bf16 and in FP8 side by side (cuda::fp8_matmul, E4M3
// with per-token and per-channel scales), alone and with the per-token quantization of the
// activations the CUDA backend runs before each (the "fp8+q" rows), and with the scales applied by
// our kernel after a unit-scaled cuBLASLt GEMM instead of in cuBLASLt's epilogue (the "fp8-ep"
// rows, the fallback: gemm.cuh's Fp8Scales); FP8 rows count against an 8192³ FP8 GEMM ceiling
// measured in the same run. At M ≤ 8 the decode kernels too: "bf16-gemv" (cuda::gemv) and
// "fp8-gemv" (cuda::fp8_gemv, which fp8_matmul runs at M ≤ kFp8GemvRows; the "fp8" rows stay
// cuBLASLt), on the same operands.
// Usage: bench_ops [--json results.json] [--gemm-only] (only the ceilings and the GEMMs)
//                  [--fp8-gemv-sweep] (the ceilings, then the FP8 projections at M 1..8 with
//                  every variant of fp8_gemv: rows "fp8-gemv-vN")
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cpu/fp8.h"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/fp8_gemv.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/kv_write.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kernels/view.h"

using namespace stem;

namespace {

class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) { CUDA_CHECK(cudaMalloc(&ptr_, bytes)); }
  ~Buffer() { cudaFree(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  TensorView view(DType t, std::initializer_list<int64_t> dims) const { return TensorView(ptr_, t, dims); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

// Random values in ±[0.05, 1) as bf16 (dtype BF16) or f32, tiled from one 8 MiB host block:
// generating a gigabyte of random numbers on the host would take longer than the benchmarks.
void fill_random(const Buffer& buf, DType dtype) {
  static std::vector<char> bf16_block, f32_block;
  if (bf16_block.empty()) {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<float> mag(0.05f, 1.f);
    const size_t n = size_t{1} << 21;
    bf16_block.resize(2 * n);
    f32_block.resize(4 * n);
    for (size_t i = 0; i < n; ++i) {
      const float v = (rng() & 1 ? -1.f : 1.f) * mag(rng);
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(&bf16_block[2 * i], &h, 2);
      std::memcpy(&f32_block[4 * i], &v, 4);
    }
  }
  const std::vector<char>& block = dtype == DType::BF16 ? bf16_block : f32_block;
  for (size_t off = 0; off < buf.bytes(); off += block.size())
    CUDA_CHECK(cudaMemcpy(static_cast<char*>(buf.get()) + off, block.data(), std::min(block.size(), buf.bytes() - off),
                          cudaMemcpyHostToDevice));
}

template <typename T>
void upload(const Buffer& buf, const std::vector<T>& host) {
  CUDA_CHECK(cudaMemcpy(buf.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
}

// Median time of one call in microseconds; `run(i)` does call i (so callers can rotate inputs).
template <typename Run>
double median_us(Run&& run, int warmup = 3, int reps = 20) {
  for (int i = 0; i < warmup; ++i) run(i);
  std::vector<cudaEvent_t> marks(static_cast<size_t>(reps) + 1);
  for (auto& e : marks) CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(marks[0]));
  for (int i = 0; i < reps; ++i) {
    run(warmup + i);
    CUDA_CHECK(cudaEventRecord(marks[static_cast<size_t>(i) + 1]));
  }
  CUDA_CHECK(cudaEventSynchronize(marks.back()));
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, marks[static_cast<size_t>(i)], marks[static_cast<size_t>(i) + 1]));
    us.push_back(1e3 * ms);
  }
  for (auto& e : marks) cudaEventDestroy(e);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

struct Result {
  std::string op, shape;
  double us, tflops, gbps, percent;  // percent of the matching ceiling
};
std::vector<Result> results;
double copy_ceiling_gbps = 0, gemm_ceiling_tflops = 0, fp8_ceiling_tflops = 0;

// ceiling: the GEMM ceiling this op counts against (0: the bf16 one).
void record(const std::string& op, const std::string& shape, double us, double flops, double bytes,
            double ceiling = 0) {
  const double tflops = flops / us * 1e-6, gbps = bytes / us * 1e-3;
  if (ceiling <= 0) ceiling = gemm_ceiling_tflops;
  const bool compute_bound = flops > 0 && tflops / ceiling > gbps / copy_ceiling_gbps;
  const double percent = 100 * (compute_bound ? tflops / ceiling : gbps / copy_ceiling_gbps);
  results.push_back({op, shape, us, tflops, gbps, percent});
  std::printf("%-12s %-30s %10.1f us %8.1f TFLOP/s %8.0f GB/s %5.0f%% of %s\n", op.c_str(), shape.c_str(), us, tflops,
              gbps, percent, compute_bound ? "gemm ceiling" : "copy ceiling");
  std::fflush(stdout);
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t x : d) s += (s.empty() ? "" : "x") + std::to_string(x);
  return s;
}

void measure_ceilings(cuda::GemmContext& ctx) {
  const size_t bytes = size_t{1} << 30;
  Buffer src(bytes), dst(bytes);
  fill_random(src, DType::BF16);
  const double copy_us =
      median_us([&](int) { CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice)); });
  copy_ceiling_gbps = 2.0 * bytes / copy_us * 1e-3;

  const int64_t n = 8192;
  Buffer a(n * n * 2), w(n * n * 2), out(n * n * 2);
  fill_random(a, DType::BF16);
  fill_random(w, DType::BF16);
  const double gemm_us = median_us([&](int) {
    cuda::matmul(ctx, out.view(DType::BF16, {n, n}), a.view(DType::BF16, {n, n}), w.view(DType::BF16, {n, n}), {});
  });
  gemm_ceiling_tflops = 2.0 * n * n * n / gemm_us * 1e-6;
  std::printf("ceilings: device copy %.0f GB/s (read + write), bf16 GEMM 8192^3 %.1f TFLOP/s (%.0f us)\n",
              copy_ceiling_gbps, gemm_ceiling_tflops, gemm_us);
}

// Llama-3.1-8B's projections. Weights rotate over enough copies to stay out of the 50 MB L2.
// "gemm" rows are cuBLASLt; at M ≤ 8 a "gemv" row times cuda::gemv on the same operands (matmul
// sends M ≤ 2 with K ≤ 8192 there).
void bench_gemms(cuda::GemmContext& ctx) {
  ctx.set_gemv(false);
  struct Proj {
    const char* name;
    int64_t n, k;
    DType out;
    std::vector<int64_t> ms;
  };
  const std::vector<Proj> projs = {
      {"qkv", 6144, 4096, DType::BF16, {1, 2, 4, 8, 32, 256, 2048, 8192}},
      {"o_proj", 4096, 4096, DType::BF16, {1, 2, 4, 8, 32, 256, 2048, 8192}},
      {"gate_up", 28672, 4096, DType::BF16, {1, 2, 4, 8, 32, 256, 2048, 8192}},
      {"down", 4096, 14336, DType::BF16, {1, 2, 4, 8, 32, 256, 2048, 8192}},
      {"lm_head", 128256, 4096, DType::F32, {1, 2, 4, 8, 32, 256}},
  };
  for (const Proj& p : projs) {
    const size_t w_bytes = static_cast<size_t>(p.n * p.k * 2);
    const size_t copies = std::clamp<size_t>((size_t{200} << 20) / w_bytes + 1, 1, 8);
    std::vector<std::unique_ptr<Buffer>> ws;
    for (size_t c = 0; c < copies; ++c) {
      ws.push_back(std::make_unique<Buffer>(w_bytes));
      fill_random(*ws.back(), DType::BF16);
    }
    const int64_t max_m = *std::max_element(p.ms.begin(), p.ms.end());
    Buffer a(static_cast<size_t>(max_m * p.k * 2)), out(static_cast<size_t>(max_m * p.n) * dtype_size(p.out));
    fill_random(a, DType::BF16);
    for (const int64_t m : p.ms) {
      const double us = median_us([&](int i) {
        cuda::matmul(ctx, out.view(p.out, {m, p.n}), a.view(DType::BF16, {m, p.k}),
                     ws[static_cast<size_t>(i) % copies]->view(DType::BF16, {p.n, p.k}), {});
      });
      const double bytes = 2.0 * (m * p.k + p.n * p.k) + double(dtype_size(p.out)) * m * p.n;
      const std::string shape = "M=" + std::to_string(m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k);
      record(std::string("gemm ") + p.name, shape, us, 2.0 * m * p.n * p.k, bytes);
      if (m <= cuda::kGemvMaxRows) {
        const double gemv_us = median_us([&](int i) {
          cuda::gemv(out.view(p.out, {m, p.n}), a.view(DType::BF16, {m, p.k}),
                     ws[static_cast<size_t>(i) % copies]->view(DType::BF16, {p.n, p.k}), {});
        });
        record(std::string("gemv ") + p.name, shape, gemv_us, 2.0 * m * p.n * p.k, bytes);
      }
    }
  }
  ctx.set_gemv(true);
}

// Valid E4M3 codes of N(0, 1) values (never NaN), tiled from one host block as fill_random does.
void fill_random_fp8(const Buffer& buf) {
  static std::vector<uint8_t> block;
  if (block.empty()) {
    std::mt19937_64 rng(43);
    std::normal_distribution<float> normal;
    block.resize(size_t{1} << 23);
    for (uint8_t& c : block) c = cpu::f32_to_fp8(normal(rng));
  }
  for (size_t off = 0; off < buf.bytes(); off += block.size())
    CUDA_CHECK(cudaMemcpy(static_cast<char*>(buf.get()) + off, block.data(), std::min(block.size(), buf.bytes() - off),
                          cudaMemcpyHostToDevice));
}

void fill_scales(const Buffer& buf, float value) {
  upload(buf, std::vector<float>(buf.bytes() / 4, value));
}

void measure_fp8_ceiling(cuda::GemmContext& ctx) {
  const int64_t n = 8192;
  Buffer a(n * n), w(n * n), out(n * n * 2), sa(n * 4), sw(n * 4);
  fill_random_fp8(a);
  fill_random_fp8(w);
  fill_scales(sa, 1e-2f);
  fill_scales(sw, 1e-2f);
  const double us = median_us([&](int) {
    cuda::fp8_matmul(ctx, out.view(DType::BF16, {n, n}), a.view(DType::F8E4M3, {n, n}), sa.view(DType::F32, {n}),
                     w.view(DType::F8E4M3, {n, n}), sw.view(DType::F32, {n}), {});
  });
  fp8_ceiling_tflops = 2.0 * n * n * n / us * 1e-6;
  std::printf("ceilings: FP8 GEMM 8192^3 (per-row and per-column scales) %.1f TFLOP/s (%.0f us), %.2fx bf16\n",
              fp8_ceiling_tflops, us, fp8_ceiling_tflops / gemm_ceiling_tflops);
}

// Llama-3.1-8B's four layer projections in bf16 and FP8, at decode (M 1..256) and prefill
// (M 4096, 8192) sizes; weights rotate over copies to stay out of L2, as in bench_gemms. The
// "bf16" and "fp8" rows are cuBLASLt only (gemv and fp8_gemv off), so that the two columns compare
// the same library; at M ≤ 8 the "bf16-gemv" and "fp8-gemv" rows time our decode kernels.
bool fp8_gemv_sweep = false;  // --fp8-gemv-sweep: decode sizes only, every fp8_gemv variant timed

void bench_fp8_gemms(cuda::GemmContext& ctx) {
  measure_fp8_ceiling(ctx);
  ctx.set_gemv(false);
  ctx.set_fp8_gemv(false);
  cuda::GemmContext ep_ctx;
  ep_ctx.set_fp8_scales(cuda::Fp8Scales::Epilogue);
  ep_ctx.set_fp8_gemv(false);
  struct Proj {
    const char* name;
    int64_t n, k;
  };
  const std::vector<Proj> projs = {{"qkv", 6144, 4096}, {"o_proj", 4096, 4096}, {"gate_up", 28672, 4096},
                                   {"down", 4096, 14336}};
  const std::vector<int64_t> ms = fp8_gemv_sweep ? std::vector<int64_t>{1, 2, 4, 8}
                                                 : std::vector<int64_t>{1, 2, 4, 8, 32, 64, 128, 256, 4096, 8192};
  for (const Proj& p : projs) {
    const size_t w_bytes = static_cast<size_t>(p.n * p.k * 2);
    const size_t copies = std::clamp<size_t>((size_t{200} << 20) / w_bytes + 1, 1, 8);
    std::vector<std::unique_ptr<Buffer>> ws, ws8;
    for (size_t c = 0; c < copies; ++c) {
      ws.push_back(std::make_unique<Buffer>(w_bytes));
      fill_random(*ws.back(), DType::BF16);
      ws8.push_back(std::make_unique<Buffer>(w_bytes / 2));
      fill_random_fp8(*ws8.back());
    }
    const int64_t max_m = ms.back();
    Buffer a(static_cast<size_t>(max_m * p.k * 2)), a8(static_cast<size_t>(max_m * p.k));
    Buffer sa(static_cast<size_t>(max_m * 4)), sw(static_cast<size_t>(p.n * 4));
    Buffer out(static_cast<size_t>(max_m * p.n * 2));
    fill_random(a, DType::BF16);
    fill_random_fp8(a8);
    fill_scales(sa, 1e-2f);
    fill_scales(sw, 1e-2f);
    for (const int64_t m : ms) {
      const std::string shape = "M=" + std::to_string(m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k);
      const double flops = 2.0 * m * p.n * p.k;
      const double bf16_us = median_us([&](int i) {
        cuda::matmul(ctx, out.view(DType::BF16, {m, p.n}), a.view(DType::BF16, {m, p.k}),
                     ws[static_cast<size_t>(i) % copies]->view(DType::BF16, {p.n, p.k}), {});
      });
      record(std::string("bf16 ") + p.name, shape, bf16_us, flops, 2.0 * (m * p.k + p.n * p.k + m * p.n));
      auto fp8_in = [&](cuda::GemmContext& c, int i) {
        cuda::fp8_matmul(c, out.view(DType::BF16, {m, p.n}), a8.view(DType::F8E4M3, {m, p.k}),
                         sa.view(DType::F32, {m}), ws8[static_cast<size_t>(i) % copies]->view(DType::F8E4M3, {p.n, p.k}),
                         sw.view(DType::F32, {p.n}), {});
      };
      auto fp8 = [&](int i) { fp8_in(ctx, i); };
      const double fp8_bytes = 1.0 * (m * p.k + p.n * p.k) + 2.0 * m * p.n + 4.0 * (m + p.n);
      const double fp8_us = median_us(fp8);
      record(std::string("fp8 ") + p.name, shape, fp8_us, flops, fp8_bytes, fp8_ceiling_tflops);
      const double fp8q_us = median_us([&](int i) {
        cuda::quantize_rows_fp8(a8.view(DType::F8E4M3, {m, p.k}), sa.view(DType::F32, {m}),
                                a.view(DType::BF16, {m, p.k}));
        fp8(i);
      });
      record(std::string("fp8+q ") + p.name, shape, fp8q_us, flops, fp8_bytes + 3.0 * m * p.k, fp8_ceiling_tflops);
      const double ep_us = median_us([&](int i) { fp8_in(ep_ctx, i); });
      record(std::string("fp8-ep ") + p.name, shape, ep_us, flops, fp8_bytes + 4.0 * m * p.n, fp8_ceiling_tflops);
      std::printf("%-12s %-30s FP8 GEMM %.2fx bf16, with the quantization %.2fx\n", p.name, shape.c_str(),
                  bf16_us / fp8_us, bf16_us / fp8q_us);
      if (m <= cuda::kFp8GemvMaxRows) {
        const double gemv_us = median_us([&](int i) {
          cuda::gemv(out.view(DType::BF16, {m, p.n}), a.view(DType::BF16, {m, p.k}),
                     ws[static_cast<size_t>(i) % copies]->view(DType::BF16, {p.n, p.k}), {});
        });
        record(std::string("bf16-gemv ") + p.name, shape, gemv_us, flops, 2.0 * (m * p.k + p.n * p.k + m * p.n));
        const double fp8_gemv_us = median_us([&](int i) {
          cuda::fp8_gemv(out.view(DType::BF16, {m, p.n}), a8.view(DType::F8E4M3, {m, p.k}), sa.view(DType::F32, {m}),
                         ws8[static_cast<size_t>(i) % copies]->view(DType::F8E4M3, {p.n, p.k}),
                         sw.view(DType::F32, {p.n}), {});
        });
        record(std::string("fp8-gemv ") + p.name, shape, fp8_gemv_us, flops, fp8_bytes, fp8_ceiling_tflops);
        if (fp8_gemv_sweep) {  // each variant of the kernel (fp8_gemv.cuh), the default above
          const int before = cuda::fp8_gemv_variant();
          for (int v = 0; v < cuda::fp8_gemv_variants(); ++v) {
            cuda::set_fp8_gemv_variant(v);
            const double us = median_us([&](int i) {
              cuda::fp8_gemv(out.view(DType::BF16, {m, p.n}), a8.view(DType::F8E4M3, {m, p.k}), sa.view(DType::F32, {m}),
                             ws8[static_cast<size_t>(i) % copies]->view(DType::F8E4M3, {p.n, p.k}),
                             sw.view(DType::F32, {p.n}), {});
            });
            record(std::string("fp8-gemv-v") + std::to_string(v) + " " + p.name, shape, us, flops, fp8_bytes,
                   fp8_ceiling_tflops);
          }
          cuda::set_fp8_gemv_variant(before);
        }
        std::printf("%-12s %-30s fp8-gemv %.2fx fp8 (cuBLASLt), %.2fx bf16-gemv\n", p.name, shape.c_str(),
                    fp8_us / fp8_gemv_us, gemv_us / fp8_gemv_us);
      }
    }
  }
  ctx.set_gemv(true);
  ctx.set_fp8_gemv(true);
  std::printf("FP8 shapes that fell back to our scaling kernel (cuBLASLt without vector scales): %zu\n",
              ctx.fp8_epilogue_plans());
}

// The memory-bound ops at a prefill step of 8192 tokens (several times the L2), plus decode-sized norms.
void bench_elementwise() {
  const int64_t hidden = 4096, inter = 14336, q_heads = 32, kv_heads = 8, head_dim = 128, vocab = 128256;
  for (const int64_t t : {int64_t{1}, int64_t{64}, int64_t{8192}}) {
    Buffer res(t * hidden * 4), x(t * hidden * 2), out(t * hidden * 2), w(hidden * 2);
    fill_random(res, DType::F32);
    fill_random(x, DType::BF16);
    fill_random(w, DType::BF16);
    const std::string shape = "T=" + std::to_string(t) + " H=" + std::to_string(hidden);
    record("rmsnorm", shape + " f32->bf16", median_us([&](int) {
             cuda::rmsnorm(out.view(DType::BF16, {t, hidden}), res.view(DType::F32, {t, hidden}),
                           w.view(DType::BF16, {hidden}), 1e-5f);
           }),
           0, t * hidden * 6.0 + hidden * 2);
    record("add_rmsnorm", shape, median_us([&](int) {
             cuda::add_rmsnorm(out.view(DType::BF16, {t, hidden}), res.view(DType::F32, {t, hidden}),
                               x.view(DType::BF16, {t, hidden}), w.view(DType::BF16, {hidden}), 1e-5f);
           }),
           0, t * hidden * 12.0 + hidden * 2);
  }

  const int64_t t = 8192;
  {
    Buffer table(vocab * hidden * 2), ids(t * 4), out(t * hidden * 4);
    fill_random(table, DType::BF16);
    std::mt19937 rng(1);
    std::vector<int32_t> id(static_cast<size_t>(t));
    for (auto& i : id) i = static_cast<int32_t>(rng() % vocab);
    upload(ids, id);
    record("embedding", dims({t, hidden}) + " ->f32", median_us([&](int) {
             cuda::embedding(out.view(DType::F32, {t, hidden}), ids.view(DType::I32, {t}),
                             table.view(DType::BF16, {vocab, hidden}));
           }),
           0, t * hidden * 6.0 + t * 4);
  }
  {
    Buffer gate_up(t * 2 * inter * 2), out(t * inter * 2);
    fill_random(gate_up, DType::BF16);
    TensorView gate(gate_up.get(), DType::BF16, {t, inter}), up = gate;
    gate.stride[0] = up.stride[0] = 2 * inter;
    up.data = static_cast<uint16_t*>(gate_up.get()) + inter;
    record("swiglu", dims({t, inter}), median_us([&](int) {
             cuda::swiglu(out.view(DType::BF16, {t, inter}), gate, up);
           }),
           0, t * inter * 6.0);
  }
  const int64_t width = (q_heads + 2 * kv_heads) * head_dim;
  Buffer qkv(t * width * 2);
  fill_random(qkv, DType::BF16);
  auto heads = [&](int64_t col0, int64_t n) {
    TensorView v(static_cast<uint16_t*>(qkv.get()) + col0, DType::BF16, {t, n, head_dim});
    v.stride[0] = width;
    return v;
  };
  {
    Buffer pos(t * 4), freq(head_dim / 2 * 4);
    std::vector<int32_t> p(static_cast<size_t>(t));
    for (int64_t i = 0; i < t; ++i) p[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::vector<float> f(static_cast<size_t>(head_dim / 2));
    for (size_t i = 0; i < f.size(); ++i) f[i] = std::pow(500000.f, -2.f * i / head_dim);
    upload(pos, p);
    upload(freq, f);
    record("rope", "T=8192 32+8 heads D=128", median_us([&](int) {
             cuda::rope(heads(0, q_heads), heads(q_heads * head_dim, kv_heads), pos.view(DType::I32, {t}),
                        freq.view(DType::F32, {head_dim / 2}));
           }),
           0, t * (q_heads + kv_heads) * head_dim * 4.0);
  }
  {
    const int64_t page = 16, pages = 2 * t / page;
    Buffer kc(pages * page * kv_heads * head_dim * 2), vc(pages * page * kv_heads * head_dim * 2), slots(t * 4);
    std::vector<int32_t> s(static_cast<size_t>(pages * page));
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<int32_t>(i);
    std::shuffle(s.begin(), s.end(), std::mt19937(3));
    s.resize(static_cast<size_t>(t));
    upload(slots, s);
    record("kv_write", "T=8192 8 heads D=128 page 16", median_us([&](int) {
             cuda::kv_write(kc.view(DType::BF16, {pages, page, kv_heads, head_dim}),
                            vc.view(DType::BF16, {pages, page, kv_heads, head_dim}),
                            heads((q_heads)*head_dim, kv_heads), heads((q_heads + kv_heads) * head_dim, kv_heads),
                            slots.view(DType::I32, {t}));
           }),
           0, t * kv_heads * head_dim * 8.0 + t * 4);
  }
}

void write_json(const std::string& path) {
  std::ofstream f(path);
  f << "{\n  \"copy_ceiling_gbps\": " << copy_ceiling_gbps << ",\n  \"gemm_ceiling_tflops\": " << gemm_ceiling_tflops
    << ",\n  \"fp8_gemm_ceiling_tflops\": " << fp8_ceiling_tflops << ",\n  \"results\": [\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    f << "    {\"op\": \"" << r.op << "\", \"shape\": \"" << r.shape << "\", \"us\": " << r.us
      << ", \"tflops\": " << r.tflops << ", \"gbps\": " << r.gbps << ", \"percent_of_ceiling\": " << r.percent << "}"
      << (i + 1 < results.size() ? ",\n" : "\n");
  }
  f << "  ]\n}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  bool gemm_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--json" && i + 1 < argc)
      json = argv[++i];
    else if (std::string(argv[i]) == "--gemm-only")
      gemm_only = true;
    else if (std::string(argv[i]) == "--fp8-gemv-sweep")
      fp8_gemv_sweep = true;
  }
  try {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, %.0f MB L2\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
    cuda::GemmContext ctx;
    measure_ceilings(ctx);
    if (!fp8_gemv_sweep) bench_gemms(ctx);
    bench_fp8_gemms(ctx);
    if (!gemm_only && !fp8_gemv_sweep) bench_elementwise();
    CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  if (!json.empty()) write_json(json);
  return 0;
}
