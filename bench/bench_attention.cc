// Attention benchmarks on the GPU at Llama-3.1-8B heads (32 q heads over 8 KV heads, D 128), bf16,
// paged cache of 16-token pages in shuffled order.
//  * Dense causal prefill of one L-token prompt, L = 8K … 128K: TFLOP/s with the usual causal count
//    FLOPs = 4 · Hq · D · L²/2 (two GEMMs of 2·L·L·D each, half of the score matrix), through the
//    explicit dense plan (dense_causal_plan) and through the router (lists and plan on the device).
//  * Block-sparse prefill with Stem-shaped lists at 32K and 128K: TFLOP/s over the listed blocks.
//  * Decode, one row per sequence: GB/s counting the K/V bytes read once (kv_len · Hkv · D · 2 B ·
//    2) plus q and out, beside a device-to-device copy (bytes read + written) measured in the run.
// Times are medians of CUDA-event-timed calls after warm-ups; inputs are random, never zeros.
//  * The same decode over an FP8 cache (E4M3 codes and a scale per token and head), with each FP8
//    decode kernel (cuda::Fp8DecodeKernel): GB/s on the codes and scales read.
// Usage: bench_attention [--json results.json] [--max-len 131072] [--decode-only]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_prefill.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/view.h"

using namespace stem;

namespace {

constexpr int64_t kHq = 32, kHkv = 8, kD = 128, kPage = 16;

class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(std::max<size_t>(bytes, 16)) { CUDA_CHECK(cudaMalloc(&ptr_, bytes_)); }
  ~Buffer() { cudaFree(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  TensorView view(DType t, std::initializer_list<int64_t> dims) const { return TensorView(ptr_, t, dims); }
  template <typename T>
  void upload(const std::vector<T>& host) {
    CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

// Random bf16 in ±[0.05, 1), tiled from one 8 MiB block (a gigabyte of host randoms is too slow).
void fill_random_bf16(const Buffer& buf) {
  static std::vector<uint16_t> block;
  if (block.empty()) {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<float> mag(0.05f, 1.f);
    block.resize(size_t{1} << 22);
    for (uint16_t& h : block) h = f32_to_bf16((rng() & 1 ? -1.f : 1.f) * mag(rng));
  }
  const size_t block_bytes = block.size() * 2;
  for (size_t off = 0; off < buf.bytes(); off += block_bytes)
    CUDA_CHECK(cudaMemcpy(static_cast<char*>(buf.get()) + off, block.data(), std::min(block_bytes, buf.bytes() - off),
                          cudaMemcpyHostToDevice));
}

// Median milliseconds of one call; run(i) does call i.
template <typename Run>
double median_ms(Run&& run, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) run(i);
  std::vector<cudaEvent_t> marks(static_cast<size_t>(reps) + 1);
  for (auto& e : marks) CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(marks[0]));
  for (int i = 0; i < reps; ++i) {
    run(warmup + i);
    CUDA_CHECK(cudaEventRecord(marks[static_cast<size_t>(i) + 1]));
  }
  CUDA_CHECK(cudaEventSynchronize(marks.back()));
  CUDA_CHECK(cudaGetLastError());
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, marks[static_cast<size_t>(i)], marks[static_cast<size_t>(i) + 1]));
    ms.push_back(t);
  }
  for (auto& e : marks) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A paged cache holding `copies` disjoint sets of the given sequences' K/V (decode rotates among
// them so that repeated calls do not run out of L2), pages shuffled.
struct PagedCache {
  int64_t pages, max_pages;
  std::vector<std::vector<int32_t>> tables;  // [copy]: [S, max_pages]
  Buffer k, v;
  PagedCache(const std::vector<int32_t>& kv_lens, int copies, std::mt19937_64& rng)
      : pages(0),
        max_pages(0),
        k(bytes(kv_lens, copies)),
        v(bytes(kv_lens, copies)) {
    int64_t per_copy = 0;
    for (int32_t len : kv_lens) {
      per_copy += (len + kPage - 1) / kPage;
      max_pages = std::max<int64_t>(max_pages, (len + kPage - 1) / kPage);
    }
    pages = per_copy * copies;
    std::vector<int32_t> order(static_cast<size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    size_t next = 0;
    for (int c = 0; c < copies; ++c) {
      std::vector<int32_t> table(kv_lens.size() * max_pages, 0);
      for (size_t s = 0; s < kv_lens.size(); ++s)
        for (int64_t i = 0; i * kPage < kv_lens[s]; ++i) table[s * max_pages + i] = order[next++];
      tables.push_back(std::move(table));
    }
    fill_random_bf16(k);
    fill_random_bf16(v);
  }
  static size_t bytes(const std::vector<int32_t>& kv_lens, int copies) {
    int64_t pages = 0;
    for (int32_t len : kv_lens) pages += (len + kPage - 1) / kPage;
    return static_cast<size_t>(pages * copies * kPage * kHkv * kD * 2);
  }
  TensorView k_view() const { return k.view(DType::BF16, {pages, kPage, kHkv, kD}); }
  TensorView v_view() const { return v.view(DType::BF16, {pages, kPage, kHkv, kD}); }
};

std::string json;  // the rows written with --json
void json_row(const std::string& row) { json += (json.empty() ? "" : ",\n") + std::string("  ") + row; }

void bench_prefill(int64_t len, std::mt19937_64& rng) {
  const std::vector<int32_t> kv_lens = {static_cast<int32_t>(len)}, query_start = {0, static_cast<int32_t>(len)};
  PagedCache cache(kv_lens, 1, rng);
  Buffer q(len * kHq * kD * 2), out(len * kHq * kD * 2), table(cache.tables[0].size() * 4), lens(4), starts(8);
  fill_random_bf16(q);
  table.upload(cache.tables[0]);
  lens.upload(kv_lens);
  starts.upload(query_start);
  const cuda::BlockSparsePlan plan = cuda::dense_causal_plan(kv_lens, query_start, kHq);
  Buffer qblocks(plan.qblocks.size() * 4), offsets(plan.block_offsets.size() * 4),
      indices(plan.block_indices.size() * 4);
  qblocks.upload(plan.qblocks);
  offsets.upload(plan.block_offsets);
  indices.upload(plan.block_indices);

  const TensorView q_v = q.view(DType::BF16, {len, kHq, kD}), out_v = out.view(DType::BF16, {len, kHq, kD});
  const TensorView table_v = table.view(DType::I32, {1, cache.max_pages}), lens_v = lens.view(DType::I32, {1}),
                   starts_v = starts.view(DType::I32, {2});
  const float scale = 1.f / std::sqrt(float(kD));
  const double flops = 4.0 * kHq * kD * double(len) * double(len) / 2;
  // About a second of timed work per size, at least 3 calls.
  const int reps = static_cast<int>(std::clamp(1e15 / 4 / flops, 3.0, 30.0));
  const double plan_ms = median_ms(
      [&](int) {
        cuda::block_sparse_prefill(out_v, q_v, cache.k_view(), cache.v_view(), table_v, lens_v, starts_v,
                                   qblocks.view(DType::I32, {plan.n_qblocks(), 2}),
                                   offsets.view(DType::I32, {int64_t(plan.block_offsets.size())}),
                                   indices.view(DType::I32, {int64_t(plan.block_indices.size())}), scale, 0, nullptr);
      },
      2, reps);
  const double router_ms = median_ms(
      [&](int) {
        cuda::paged_attention(out_v, q_v, cache.k_view(), cache.v_view(), table_v, lens_v, starts_v, scale, 0,
                              nullptr);
      },
      1, reps);
  const double tf_plan = flops / plan_ms * 1e-9, tf_router = flops / router_ms * 1e-9;
  std::printf("prefill  L=%-7lld %9.3f ms %7.1f TFLOP/s (plan)   %9.3f ms %7.1f TFLOP/s (router)\n",
              static_cast<long long>(len), plan_ms, tf_plan, router_ms, tf_router);
  std::fflush(stdout);
  char row[256];
  std::snprintf(row, sizeof row,
                "{\"op\": \"prefill_dense_causal\", \"len\": %lld, \"ms\": %.4f, \"tflops\": %.2f, \"router_ms\": %.4f, "
                "\"router_tflops\": %.2f}",
                static_cast<long long>(len), plan_ms, tf_plan, router_ms, tf_router);
  json_row(row);
}

// Block lists shaped like Stem's (DESIGN.md §3 budget k(i) with α = 0.7: 4 sink blocks, 4 window
// blocks, then random causal blocks up to k(i)), to time the block-sparse path; the selection
// itself is not Stem's (random, not top-k). Also returns the FLOPs of the blocks it lists, counted
// as the dense figure counts them (diagonal blocks as half).
cuda::BlockSparsePlan stem_like_plan(const std::vector<int32_t>& kv_lens, const std::vector<int32_t>& query_start,
                                     std::mt19937_64& rng, double* flops) {
  const int64_t nb = (kv_lens[0] + 127) / 128;
  const int64_t ks = nb < 56 ? nb : nb < 160 ? static_cast<int64_t>(0.2 * nb + 30) : static_cast<int64_t>(0.1 * nb) + 30;
  cuda::BlockSparsePlan plan;
  plan.qblocks = cuda::prefill_query_blocks(kv_lens, query_start);
  plan.block_offsets.push_back(0);
  *flops = 0;
  std::vector<int32_t> candidates;
  for (int64_t b = 0; b < plan.n_qblocks(); ++b) {
    const int64_t i = plan.qblocks[2 * b + 1];
    int64_t k = ks;
    if (i >= ks) {
      const double step = double(i - ks) / double(std::max<int64_t>(1, nb - ks - 1)) * (0.7 - 1) * double(ks);
      k = std::clamp<int64_t>(static_cast<int64_t>(std::floor(double(ks) + step)), 1, ks);
    }
    for (int64_t h = 0; h < kHq; ++h) {
      std::vector<char> chosen(static_cast<size_t>(i + 1), 0);
      int64_t size = 0;
      for (int64_t j = 0; j <= i; ++j)
        if (j < 4 || j > i - 4) chosen[j] = 1, ++size;
      candidates.clear();
      for (int64_t j = 4; j <= i - 4; ++j) candidates.push_back(static_cast<int32_t>(j));
      std::shuffle(candidates.begin(), candidates.end(), rng);
      for (size_t c = 0; c < candidates.size() && size < k; ++c) chosen[candidates[c]] = 1, ++size;
      for (int64_t j = i; j >= 0; --j)
        if (chosen[j]) {
          plan.block_indices.push_back(static_cast<int32_t>(j));
          *flops += 4.0 * 128 * 128 * kD * (j == i ? 0.5 : 1.0);
        }
      plan.block_offsets.push_back(static_cast<int32_t>(plan.block_indices.size()));
    }
  }
  return plan;
}

void bench_prefill_sparse(int64_t len, std::mt19937_64& rng) {
  const std::vector<int32_t> kv_lens = {static_cast<int32_t>(len)}, query_start = {0, static_cast<int32_t>(len)};
  PagedCache cache(kv_lens, 1, rng);
  Buffer q(len * kHq * kD * 2), out(len * kHq * kD * 2), table(cache.tables[0].size() * 4), lens(4), starts(8);
  fill_random_bf16(q);
  table.upload(cache.tables[0]);
  lens.upload(kv_lens);
  starts.upload(query_start);
  double flops = 0;
  const cuda::BlockSparsePlan plan = stem_like_plan(kv_lens, query_start, rng, &flops);
  Buffer qblocks(plan.qblocks.size() * 4), offsets(plan.block_offsets.size() * 4),
      indices(plan.block_indices.size() * 4);
  qblocks.upload(plan.qblocks);
  offsets.upload(plan.block_offsets);
  indices.upload(plan.block_indices);
  const double dense_flops = 4.0 * kHq * kD * double(len) * double(len) / 2;
  const int reps = static_cast<int>(std::clamp(1e15 / 4 / flops, 3.0, 30.0));
  const double ms = median_ms(
      [&](int) {
        cuda::block_sparse_prefill(out.view(DType::BF16, {len, kHq, kD}), q.view(DType::BF16, {len, kHq, kD}),
                                   cache.k_view(), cache.v_view(), table.view(DType::I32, {1, cache.max_pages}),
                                   lens.view(DType::I32, {1}), starts.view(DType::I32, {2}),
                                   qblocks.view(DType::I32, {plan.n_qblocks(), 2}),
                                   offsets.view(DType::I32, {int64_t(plan.block_offsets.size())}),
                                   indices.view(DType::I32, {int64_t(plan.block_indices.size())}),
                                   1.f / std::sqrt(float(kD)), 0, nullptr);
      },
      2, reps);
  const double tflops = flops / ms * 1e-9;
  std::printf("sparse   L=%-7lld density %4.1f%% %9.3f ms %7.1f TFLOP/s on the listed blocks\n",
              static_cast<long long>(len), 100 * flops / dense_flops, ms, tflops);
  std::fflush(stdout);
  char row[256];
  std::snprintf(row, sizeof row,
                "{\"op\": \"prefill_stem_like\", \"len\": %lld, \"density\": %.4f, \"ms\": %.4f, \"tflops\": %.2f}",
                static_cast<long long>(len), flops / dense_flops, ms, tflops);
  json_row(row);
}

void bench_decode(int64_t seqs, int64_t kv_len, double copy_gbps, std::mt19937_64& rng) {
  const std::vector<int32_t> kv_lens(static_cast<size_t>(seqs), static_cast<int32_t>(kv_len));
  std::vector<int32_t> query_start(static_cast<size_t>(seqs) + 1);
  std::iota(query_start.begin(), query_start.end(), 0);
  const double kv_bytes = double(seqs) * kv_len * kHkv * kD * 2 * 2;
  const int copies = static_cast<int>(std::clamp(std::ceil(512e6 / kv_bytes), 1.0, 16.0));
  PagedCache cache(kv_lens, copies, rng);
  Buffer q(seqs * kHq * kD * 2), out(seqs * kHq * kD * 2), lens(seqs * 4), starts((seqs + 1) * 4);
  fill_random_bf16(q);
  lens.upload(kv_lens);
  starts.upload(query_start);
  std::vector<std::unique_ptr<Buffer>> tables;
  for (const auto& t : cache.tables) {
    tables.push_back(std::make_unique<Buffer>(t.size() * 4));
    tables.back()->upload(t);
  }
  const float scale = 1.f / std::sqrt(float(kD));
  const double ms = median_ms(
      [&](int i) {
        cuda::paged_decode(out.view(DType::BF16, {seqs, kHq, kD}), q.view(DType::BF16, {seqs, kHq, kD}),
                           cache.k_view(), cache.v_view(),
                           tables[static_cast<size_t>(i % copies)]->view(DType::I32, {seqs, cache.max_pages}),
                           lens.view(DType::I32, {seqs}), starts.view(DType::I32, {seqs + 1}), scale, 0, nullptr);
      },
      3, 30);
  const double bytes = kv_bytes + 2.0 * seqs * kHq * kD * 2;
  const double gbps = bytes / ms * 1e-6;
  std::printf("decode   S=%-4lld kv=%-6lld %9.1f us %7.0f GB/s (%3.0f%% of copy)\n", static_cast<long long>(seqs),
              static_cast<long long>(kv_len), ms * 1e3, gbps, 100 * gbps / copy_gbps);
  std::fflush(stdout);
  char row[256];
  std::snprintf(row, sizeof row, "{\"op\": \"decode\", \"seqs\": %lld, \"kv_len\": %lld, \"us\": %.2f, \"gbps\": %.1f}",
                static_cast<long long>(seqs), static_cast<long long>(kv_len), ms * 1e3, gbps);
  json_row(row);
}

// The same decode over an FP8 cache (random codes, none NaN; scales near 1/448), each FP8 decode
// kernel in turn: GB/s counting the codes and scales read once, plus q and out.
void bench_decode_fp8(int64_t seqs, int64_t kv_len, double copy_gbps, std::mt19937_64& rng) {
  const std::vector<int32_t> kv_lens(static_cast<size_t>(seqs), static_cast<int32_t>(kv_len));
  std::vector<int32_t> query_start(static_cast<size_t>(seqs) + 1);
  std::iota(query_start.begin(), query_start.end(), 0);
  const double kv_bytes = double(seqs) * kv_len * kHkv * (kD + 4) * 2;
  const int copies = static_cast<int>(std::clamp(std::ceil(512e6 / kv_bytes), 1.0, 16.0));
  // Page tables as the bf16 cache's (its K/V are not used; the codes live in their own buffers).
  int64_t pages = 0, max_pages = 0;
  for (int32_t len : kv_lens) {
    pages += (len + kPage - 1) / kPage;
    max_pages = std::max<int64_t>(max_pages, (len + kPage - 1) / kPage);
  }
  pages *= copies;
  std::vector<int32_t> order(static_cast<size_t>(pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::unique_ptr<Buffer>> tables;
  size_t next = 0;
  for (int c = 0; c < copies; ++c) {
    std::vector<int32_t> table(kv_lens.size() * max_pages, 0);
    for (size_t i = 0; i < kv_lens.size(); ++i)
      for (int64_t j = 0; j * kPage < kv_lens[i]; ++j) table[i * max_pages + j] = order[next++];
    tables.push_back(std::make_unique<Buffer>(table.size() * 4));
    tables.back()->upload(table);
  }
  const int64_t rows = pages * kPage * kHkv;
  Buffer kc(rows * kD), vc(rows * kD), ks(rows * 4), vs(rows * 4);
  {
    std::vector<uint8_t> codes(static_cast<size_t>(std::min<int64_t>(rows * kD, int64_t{1} << 24)));
    for (uint8_t& c : codes) c = static_cast<uint8_t>(rng() % 0x7f) | static_cast<uint8_t>(rng() & 0x80);  // no 0x7f/0xff
    for (Buffer* b : {&kc, &vc})
      for (size_t off = 0; off < b->bytes(); off += codes.size())
        CUDA_CHECK(cudaMemcpy(static_cast<char*>(b->get()) + off, codes.data(), std::min(codes.size(), b->bytes() - off),
                              cudaMemcpyHostToDevice));
    std::vector<float> scales(static_cast<size_t>(rows));
    for (float& x : scales) x = (0.5f + static_cast<float>(rng() % 1000) / 1000.f) / 448.f;
    ks.upload(scales);
    vs.upload(scales);
  }
  Buffer q(seqs * kHq * kD * 2), out(seqs * kHq * kD * 2), lens(seqs * 4), starts((seqs + 1) * 4);
  fill_random_bf16(q);
  lens.upload(kv_lens);
  starts.upload(query_start);
  const float scale = 1.f / std::sqrt(float(kD));
  const cuda::Fp8DecodeKernel before = cuda::fp8_decode_kernel();
  for (auto [kernel, name] : {std::pair{cuda::Fp8DecodeKernel::kWiden, "widen"}, {cuda::Fp8DecodeKernel::kRegisters, "regs"},
                              {cuda::Fp8DecodeKernel::kRegistersInt, "regs-int"}}) {
    cuda::set_fp8_decode_kernel(kernel);
    const double ms = median_ms(
        [&](int i) {
          cuda::paged_decode_fp8(out.view(DType::BF16, {seqs, kHq, kD}), q.view(DType::BF16, {seqs, kHq, kD}),
                                 kc.view(DType::F8E4M3, {pages, kPage, kHkv, kD}), vc.view(DType::F8E4M3, {pages, kPage, kHkv, kD}),
                                 ks.view(DType::F32, {pages, kPage, kHkv}), vs.view(DType::F32, {pages, kPage, kHkv}),
                                 tables[static_cast<size_t>(i % copies)]->view(DType::I32, {seqs, max_pages}),
                                 lens.view(DType::I32, {seqs}), starts.view(DType::I32, {seqs + 1}), scale, 0, nullptr);
        },
        3, 30);
    const double bytes = kv_bytes + 2.0 * seqs * kHq * kD * 2;
    const double gbps = bytes / ms * 1e-6;
    std::printf("decode-fp8 %-8s S=%-4lld kv=%-6lld %9.1f us %7.0f GB/s (%3.0f%% of copy)\n", name,
                static_cast<long long>(seqs), static_cast<long long>(kv_len), ms * 1e3, gbps, 100 * gbps / copy_gbps);
    std::fflush(stdout);
    char row[256];
    std::snprintf(row, sizeof row,
                  "{\"op\": \"decode_fp8\", \"kernel\": \"%s\", \"seqs\": %lld, \"kv_len\": %lld, \"us\": %.2f, \"gbps\": %.1f}",
                  name, static_cast<long long>(seqs), static_cast<long long>(kv_len), ms * 1e3, gbps);
    json_row(row);
  }
  cuda::set_fp8_decode_kernel(before);
}

double copy_ceiling_gbps() {
  const size_t bytes = size_t{1} << 30;
  Buffer src(bytes), dst(bytes);
  fill_random_bf16(src);
  const double ms =
      median_ms([&](int) { CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
  return 2.0 * bytes / ms * 1e-6;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int64_t max_len = 131072;
  bool decode_only = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--decode-only")) decode_only = true;
    else if (!std::strcmp(argv[i], "--max-len") && i + 1 < argc) max_len = std::atoll(argv[++i]);
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; heads %lld q / %lld kv, D %lld, pages of %lld\n", prop.name,
              prop.multiProcessorCount, static_cast<long long>(kHq), static_cast<long long>(kHkv),
              static_cast<long long>(kD), static_cast<long long>(kPage));
  std::mt19937_64 rng(1);
  if (!decode_only) {
    for (int64_t len = 8192; len <= max_len; len *= 2) bench_prefill(len, rng);
    for (int64_t len = 32768; len <= max_len; len *= 4) bench_prefill_sparse(len, rng);
  }
  const double copy = copy_ceiling_gbps();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy);
  for (auto [seqs, kv] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 8192}, {1, 32768}, {1, 131072}, {16, 8192}, {64, 4096}, {64, 32768}, {128, 2048}}) {
    bench_decode(seqs, kv, copy, rng);
    bench_decode_fp8(seqs, kv, copy, rng);
  }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\"device\": \"" << prop.name << "\", \"copy_gbps\": " << copy << ",\n \"results\": [\n" << json << "\n]}\n";
  }
  return 0;
}
