// Stem sparse prefill on the GPU at Llama-3.1-8B heads (32 q heads over 8 KV heads, D 128), bf16,
// one L-token prompt in one step, L = 16K … 128K, paged cache of 16-token pages in shuffled order:
// one layer's attention time split into estimate (pooling, value statistics, GEMM), select (top-k,
// lists) and attention (block_sparse_prefill over the lists); the whole stem_prefill call; our
// dense prefill (paged_attention); the block density (the listed blocks' FLOPs over the dense
// causal count 4·Hq·D·L²/2, diagonal blocks as half) and the TFLOP/s on the listed blocks.
// Medians of CUDA-event-timed calls after warm-ups; random inputs, never zeros.
// Usage: bench_stem [--json results.json] [--min-len 16384] [--max-len 131072]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_prefill.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/stem.cuh"
#include "kernels/view.h"
#include "models/stem_policy.h"

using namespace stem;

namespace {

constexpr int64_t kHq = 32, kHkv = 8, kD = 128, kPage = 16;

struct Buffer {
  void* ptr = nullptr;
  size_t bytes;
  explicit Buffer(size_t n) : bytes(std::max<size_t>(n, 16)) { CUDA_CHECK(cudaMalloc(&ptr, bytes)); }
  ~Buffer() { cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  TensorView view(DType t, std::initializer_list<int64_t> dims) const { return TensorView(ptr, t, dims); }
  template <typename T>
  void upload(const std::vector<T>& v) {
    CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
};

// Random bf16 in ±[0.05, 1), tiled from one 8 MiB block, with a per-buffer seed so that q, K and V differ.
void fill_random_bf16(const Buffer& buf, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> mag(0.05f, 1.f);
  std::vector<uint16_t> block(size_t{1} << 22);
  for (uint16_t& h : block) h = f32_to_bf16((rng() & 1 ? -1.f : 1.f) * mag(rng));
  const size_t block_bytes = block.size() * 2;
  for (size_t off = 0; off < buf.bytes; off += block_bytes)
    CUDA_CHECK(cudaMemcpy(static_cast<char*>(buf.ptr) + off, block.data(), std::min(block_bytes, buf.bytes - off),
                          cudaMemcpyHostToDevice));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string json;
void json_row(const std::string& row) { json += (json.empty() ? "" : ",\n") + std::string("  ") + row; }

void bench(int64_t len, std::mt19937_64& rng) {
  const int64_t pages = (len + kPage - 1) / kPage;
  Buffer k(pages * kPage * kHkv * kD * 2), v(pages * kPage * kHkv * kD * 2), q(len * kHq * kD * 2),
      out(len * kHq * kD * 2), table(pages * 4), lens(4), starts(8);
  fill_random_bf16(k, rng());
  fill_random_bf16(v, rng());
  fill_random_bf16(q, rng());
  std::vector<int32_t> order(static_cast<size_t>(pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  table.upload(order);
  const std::vector<int32_t> h_lens = {static_cast<int32_t>(len)}, h_starts = {0, static_cast<int32_t>(len)},
                             h_prompts = h_lens;
  lens.upload(h_lens);
  starts.upload(h_starts);
  const StemSettings st;
  // The policy classifies the query blocks once, as the model runner does once per step.
  const std::vector<StemQueryBlock> blocks = stem_query_blocks(h_lens, h_starts, h_prompts, 0, st);
  const cuda::StemBatch batch{h_lens, h_starts, blocks};
  const TensorView q_v = q.view(DType::BF16, {len, kHq, kD}), out_v = out.view(DType::BF16, {len, kHq, kD});
  const TensorView k_v = k.view(DType::BF16, {pages, kPage, kHkv, kD}), v_v = v.view(DType::BF16, {pages, kPage, kHkv, kD});
  const TensorView table_v = table.view(DType::I32, {1, pages}), lens_v = lens.view(DType::I32, {1}),
                   starts_v = starts.view(DType::I32, {2});
  const float scale = 1.f / std::sqrt(float(kD));

  // The listed blocks' FLOPs, from one plan's lists.
  double listed_flops = 0;
  {
    const cuda::StemPlan plan = cuda::stem_plan(q_v, k_v, v_v, table_v, lens_v, starts_v, batch, scale, 0, st, nullptr);
    const int64_t items = plan.n_qblocks() * kHq;
    std::vector<int32_t> qb(static_cast<size_t>(plan.n_qblocks() * 2)), off(static_cast<size_t>(items + 1));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(qb.data(), plan.qblocks().data, qb.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(off.data(), plan.block_offsets().data, off.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<int32_t> idx(static_cast<size_t>(off.back()));
    CUDA_CHECK(cudaMemcpy(idx.data(), plan.block_indices().data, idx.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t x = 0; x < items; ++x)
      for (int32_t e = off[x]; e < off[x + 1]; ++e)
        listed_flops += 4.0 * 128 * 128 * kD * (idx[e] == qb[2 * (x / kHq) + 1] ? 0.5 : 1.0);
  }
  const double dense_flops = 4.0 * kHq * kD * double(len) * double(len) / 2;

  const int reps = static_cast<int>(std::clamp(4e14 / listed_flops, 5.0, 30.0));
  // Calls back to back with no host wait in between, as layers run in a prefill step: the host's
  // planning of call r + 1 overlaps call r's kernels, so the events measure GPU time.
  const int warmup = 2;
  std::vector<cudaEvent_t> marks(static_cast<size_t>(4 * (warmup + reps)));
  for (auto& e : marks) CUDA_CHECK(cudaEventCreate(&e));
  for (int r = 0; r < warmup + reps; ++r) {
    cudaEvent_t* e = &marks[static_cast<size_t>(4 * r)];
    CUDA_CHECK(cudaEventRecord(e[0]));
    const cuda::StemPlan plan = cuda::stem_plan(q_v, k_v, v_v, table_v, lens_v, starts_v, batch, scale, 0, st, nullptr, e[1]);
    CUDA_CHECK(cudaEventRecord(e[2]));
    cuda::block_sparse_prefill(out_v, q_v, k_v, v_v, table_v, lens_v, starts_v, plan.qblocks(), plan.block_offsets(),
                               plan.block_indices(), scale, 0, nullptr);
    CUDA_CHECK(cudaEventRecord(e[3]));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> est_ms, sel_ms, att_ms, total_ms;
  for (int r = warmup; r < warmup + reps; ++r) {
    const cudaEvent_t* e = &marks[static_cast<size_t>(4 * r)];
    float t[3];
    for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaEventElapsedTime(&t[i], e[i], e[i + 1]));
    est_ms.push_back(t[0]);
    sel_ms.push_back(t[1]);
    att_ms.push_back(t[2]);
    total_ms.push_back(double(t[0]) + t[1] + t[2]);
  }
  for (auto& e : marks) cudaEventDestroy(e);
  std::vector<cudaEvent_t> ev(2);
  for (auto& e : ev) CUDA_CHECK(cudaEventCreate(&e));
  // The one call the engine makes, each timed alone from an idle GPU: host planning included.
  auto time_calls = [&](auto&& call, int n) {
    call();
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> ms;
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaEventRecord(ev[0]));
      call();
      CUDA_CHECK(cudaEventRecord(ev[1]));
      CUDA_CHECK(cudaEventSynchronize(ev[1]));
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, ev[0], ev[1]));
      ms.push_back(t);
    }
    return median(ms);
  };
  const double prefill_ms = time_calls(
      [&] {
        cuda::stem_prefill(out_v, q_v, k_v, v_v, table_v, lens_v, starts_v, batch, scale, 0, st, nullptr);
      },
      reps);
  const double dense_ms = time_calls(
      [&] { cuda::paged_attention(out_v, q_v, k_v, v_v, table_v, lens_v, starts_v, scale, 0, nullptr); },
      static_cast<int>(std::clamp(4e14 / dense_flops, 3.0, 20.0)));
  CUDA_CHECK(cudaGetLastError());
  for (auto& e : ev) cudaEventDestroy(e);

  const double est = median(est_ms), sel = median(sel_ms), att = median(att_ms), total = median(total_ms);
  const double density = listed_flops / dense_flops, tflops = listed_flops / att * 1e-9;
  std::printf(
      "stem L=%-7lld density %5.1f%%  estimate %7.3f ms  select %7.3f ms  attention %8.3f ms (%5.1f TFLOP/s listed)  "
      "total %8.3f ms (est+sel %4.2f%%)  stem_prefill %8.3f ms  dense %8.3f ms (%5.1f TFLOP/s)  %4.2fx\n",
      static_cast<long long>(len), 100 * density, est, sel, att, tflops, total, 100 * (est + sel) / total, prefill_ms,
      dense_ms, dense_flops / dense_ms * 1e-9, dense_ms / prefill_ms);
  std::fflush(stdout);
  char row[512];
  std::snprintf(row, sizeof row,
                "{\"op\": \"stem_prefill\", \"len\": %lld, \"density\": %.4f, \"estimate_ms\": %.4f, \"select_ms\": %.4f, "
                "\"attention_ms\": %.4f, \"total_ms\": %.4f, \"stem_prefill_ms\": %.4f, \"dense_ms\": %.4f, "
                "\"tflops_listed\": %.2f, \"dense_tflops\": %.2f}",
                static_cast<long long>(len), density, est, sel, att, total, prefill_ms, dense_ms, tflops,
                dense_flops / dense_ms * 1e-9);
  json_row(row);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int64_t min_len = 16384, max_len = 131072;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--min-len") && i + 1 < argc) min_len = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--max-len") && i + 1 < argc) max_len = std::atoll(argv[++i]);
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; heads %lld q / %lld kv, D %lld, pages of %lld; Stem defaults\n", prop.name,
              prop.multiProcessorCount, static_cast<long long>(kHq), static_cast<long long>(kHkv),
              static_cast<long long>(kD), static_cast<long long>(kPage));
  std::mt19937_64 rng(3);
  for (int64_t len = min_len; len <= max_len; len *= 2) bench(len, rng);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\"device\": \"" << prop.name << "\",\n \"results\": [\n" << json << "\n]}\n";
  }
  return 0;
}
