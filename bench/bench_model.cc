// Whole-model benchmarks of the CUDA backend with random (dummy) weights, for any config.json
// (Llama-3.1-8B's by default):
//   ttft    time to first token of one prompt of L tokens, prefilled in chunks of --chunk tokens,
//           from the first step's start to the last token's logits on the host; with dense
//           attention, Stem sparse prefill (default settings: prompts from 8192 tokens), or both
//           side by side (--sparse-prefill);
//   decode  one decode step for B sequences of context C, replayed from a CUDA graph: wall time of
//           a whole forward_sample() (metadata, graph, greedy sampling on the device, tokens to
//           the host: the server's path) and device time (events around the step on the stream),
//           and the GB/s of weights + KV the step must read, beside the device-to-device copy
//           bandwidth measured in the same run.
// The KV cache is filled with random values (not prefilled; never zeros). Where B sequences of C
// tokens do not fit in the pool, sequences share pages (flagged "aliased": the bytes are still
// read once per sequence, but L2 may serve some of them, so the GB/s is an upper bound).
//
//   bench_model [--config F] [--ttft 8192,32768,...] [--chunk N] [--sparse-prefill dense|stem|both]
//               [--batches 1,8,64,256] [--contexts 1024,32768] [--steps N] [--gpu-memory-fraction F]
//               [--json FILE] [--profile] [--runs N]   (an empty list, e.g. --batches '', skips that part)
//               [--stem-selector topk|threshold|adaptive|none] [--stem-threshold X] [--stem-dense-tail N]
//               [--quantization fp8]   (FP8 weights and activations: random E4M3 weights, docs/api.md)
//               [--kv-cache-dtype auto|bf16|fp8]   (fp8: the KV cache in E4M3 with a scale per token and
//               KV head; the pool's capacity is printed in tokens and in sequences of 32K)
// Stem runs the paper's method (StemSettings{}) unless the selector flags say otherwise (the served
// default: --stem-selector threshold --stem-threshold 0.8738).
// --runs N: TTFT runs per prompt and mode (the median is printed); default 3 up to 32K, 1 beyond.
// --profile: after the TTFT table, one more run of the longest prompt per mode with every op timed
// (models/cuda/profile.h), printed as a breakdown (the events perturb that run a little).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "bench/bench_util.h"
#include "kernels/cuda/cuda_check.cuh"
#include "models/cuda/backend.h"

using namespace stem;
using bench::median;
using bench::now_ms;
using bench::parse_list;

namespace {

struct Args {
  std::string config = "bench/configs/llama-3.1-8b.json";
  std::vector<int64_t> ttft = {8192, 32768, 65536, 131072};
  int64_t chunk = 16384;
  std::string sparse_prefill = "both";
  std::vector<int64_t> batches = {1, 8, 64, 256}, contexts = {1024, 32768};
  int steps = 30;
  double fraction = 0.9;
  std::string json;
  bool profile = false;
  int runs = 0;  // 0: 3 up to 32K, 1 beyond
  StemSettings stem;  // the paper's method unless --stem-selector / --stem-threshold say otherwise
  std::string quantization;  // "" or "fp8" (BackendOptions::quantization)
  std::string kv_cache_dtype = "auto";  // BackendOptions::kv_cache_dtype
};

Args parse_args(int argc, char** argv) {
  Args a;
  bench::parse_flags(argc, argv, {"--profile"}, [&a](const std::string& k, const std::string& v) {
    if (k == "--config") a.config = v;
    else if (k == "--ttft") a.ttft = parse_list(v);
    else if (k == "--chunk") a.chunk = std::stoll(v);
    else if (k == "--sparse-prefill") a.sparse_prefill = v;
    else if (k == "--batches") a.batches = parse_list(v);
    else if (k == "--contexts") a.contexts = parse_list(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--gpu-memory-fraction") a.fraction = std::stod(v);
    else if (k == "--json") a.json = v;
    else if (k == "--profile") a.profile = true;
    else if (k == "--runs") a.runs = std::stoi(v);
    else if (k == "--stem-selector") a.stem.selector = parse_stem_selector(v);
    else if (k == "--stem-threshold") a.stem.threshold = std::stod(v);
    else if (k == "--stem-dense-tail") a.stem.dense_tail_blocks = std::stoll(v);
    else if (k == "--quantization") a.quantization = v;
    else if (k == "--kv-cache-dtype") a.kv_cache_dtype = v;
    else throw Error("unknown argument " + k);
  });
  if (a.sparse_prefill != "dense" && a.sparse_prefill != "stem" && a.sparse_prefill != "both")
    throw Error("--sparse-prefill takes dense, stem or both, got " + a.sparse_prefill);
  check_stem_settings(a.stem);
  kv_cache_fp8(a.kv_cache_dtype);  // refuses an unknown dtype
  return a;
}

// Device-to-device copy bandwidth (bytes read + written per second), the ceiling for decode.
double copy_bandwidth_gbs() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  CUDA_CHECK(cudaMalloc(&a, bytes));
  CUDA_CHECK(cudaMalloc(&b, bytes));
  CUDA_CHECK(cudaMemset(a, 0x3c, bytes));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int i = 0; i < 12; ++i) {
    CUDA_CHECK(cudaEventRecord(e0));
    CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 2) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (median(ms) * 1e-3) / 1e9;
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

// One prompt of L tokens in pages 0.., prefilled in chunks (with Stem when `stem`: every chunk
// carries the whole prompt length, as the engine sends it); returns ms to the last logits.
double time_to_first_token(ModelBackend& m, int64_t L, int64_t chunk, bool stem, std::mt19937_64& rng) {
  const int32_t P = m.page_size();
  const std::vector<int32_t> prompt = random_tokens(rng, L, m.config().vocab_size);
  Tensor logits;
  const double t0 = now_ms();
  for (int64_t begin = 0; begin < L; begin += chunk) {
    const int64_t end = std::min(L, begin + chunk);
    ForwardBatch b;
    b.tokens.assign(prompt.begin() + begin, prompt.begin() + end);
    for (int64_t i = begin; i < end; ++i) {
      b.positions.push_back(static_cast<int32_t>(i));
      b.slots.push_back(static_cast<int32_t>(i));  // page i / P, offset i % P: pages 0, 1, 2, ...
    }
    b.query_start = {0, static_cast<int32_t>(end - begin)};
    b.kv_lens = {static_cast<int32_t>(end)};
    b.max_pages = static_cast<int32_t>((end + P - 1) / P);
    for (int32_t p = 0; p < b.max_pages; ++p) b.page_table.push_back(p);
    if (end == L) b.logit_rows = {static_cast<int32_t>(end - begin - 1)};
    b.prompt_lens = {static_cast<int32_t>(L)};
    b.stem = {static_cast<uint8_t>(stem ? 1 : 0)};
    m.forward(b, logits);
  }
  return now_ms() - t0;
}

struct DecodeResult {
  double wall_ms, device_ms, gbs;
  bool aliased;
};

DecodeResult time_decode(CudaModelBackend& m, int64_t B, int64_t C, int steps) {
  const int32_t P = m.page_size();
  const int64_t pages_per_seq = (C + 1 + P - 1) / P;
  const int64_t fit = std::max<int64_t>(1, m.num_pages() / pages_per_seq);
  STEM_CHECK(pages_per_seq <= m.num_pages(), "a context of ", C, " does not fit the KV pool");
  ForwardBatch b;
  b.max_pages = static_cast<int32_t>(pages_per_seq);
  for (int64_t s = 0; s < B; ++s) {
    const int64_t first = (s % fit) * pages_per_seq;  // sequences beyond `fit` share pages
    b.tokens.push_back(static_cast<int32_t>((s * 7919) % m.config().vocab_size));
    b.positions.push_back(static_cast<int32_t>(C));
    b.slots.push_back(static_cast<int32_t>((first + C / P) * P + C % P));
    b.query_start.push_back(static_cast<int32_t>(s));
    b.kv_lens.push_back(static_cast<int32_t>(C + 1));
    b.logit_rows.push_back(static_cast<int32_t>(s));
    for (int64_t p = 0; p < pages_per_seq; ++p) b.page_table.push_back(static_cast<int32_t>(first + p));
  }
  b.query_start.push_back(static_cast<int32_t>(B));
  // Greedy, as a benchmark client asks; sampled on the device as the server does.
  SamplingBatch sampling;
  SamplingRow greedy;
  greedy.temperature = 0;
  for (int64_t s = 0; s < B; ++s) sampling.add_row(greedy);
  SampledTokens tokens;
  for (int i = 0; i < 3; ++i) m.forward_sample(b, sampling, tokens);  // capture, then warm replays
  std::vector<double> wall, dev;
  for (int i = 0; i < steps; ++i) {
    const double t0 = now_ms();
    m.forward_sample(b, sampling, tokens);
    wall.push_back(now_ms() - t0);
    dev.push_back(m.stats().last_step_device_ms);
  }
  const CudaBackendStats st = m.stats();
  const double bytes = static_cast<double>(st.weight_step_read_bytes) +
                       static_cast<double>(B * (C + 1)) * static_cast<double>(st.kv_bytes_per_token);
  const double d = median(dev);
  return {median(wall), d, bytes / (d * 1e-3) / 1e9, B > fit};
}

// One run of the longest prompt per mode with every op timed: where the time to first token goes.
void profile_ttft(CudaModelBackend& m, const Args& a, const std::vector<std::pair<std::string, bool>>& modes,
                  std::mt19937_64& rng, nlohmann::json& out) {
  const int64_t L = *std::max_element(a.ttft.begin(), a.ttft.end());
  if (L > m.num_pages() * m.page_size()) return;
  const ModelConfig& c = m.config();
  for (const auto& [name, stem] : modes) {
    m.clear_profile();
    m.set_profiling(true);
    const double wall = time_to_first_token(m, L, a.chunk, stem, rng);
    m.set_profiling(false);
    double total = 0;
    for (const auto& [op, ms] : m.profile()) total += ms;
    std::printf("\nprofile: %s, %lld tokens, chunks of %lld: wall %.1f ms, device %.1f ms\n", name.c_str(),
                static_cast<long long>(L), static_cast<long long>(a.chunk), wall, total);
    nlohmann::json prof = {{"tokens", L}, {"mode", name}, {"wall_ms", wall}, {"device_ms", total}};
    for (const auto& [op, ms] : m.profile()) {
      // GEMM FLOPs over the whole prompt (the last layer skips o/MLP for chunks without logits:
      // the figure is then a lower bound).
      const double T = static_cast<double>(L), H = static_cast<double>(c.hidden_size);
      const double layers = static_cast<double>(c.num_hidden_layers);
      double flops = 0;
      if (op == "gemm qkv") flops = 2 * T * H * static_cast<double>(c.q_dim() + 2 * c.kv_dim()) * layers;
      else if (op == "gemm o") flops = 2 * T * H * static_cast<double>(c.q_dim()) * (layers - 1);
      else if (op == "gemm gate_up") flops = 2 * T * H * 2 * static_cast<double>(c.intermediate_size) * (layers - 1);
      else if (op == "gemm down") flops = 2 * T * H * static_cast<double>(c.intermediate_size) * (layers - 1);
      std::printf("  %-20s %10.1f ms %6.1f%%", op.c_str(), ms, 100 * ms / total);
      if (flops > 0) std::printf("  >= %5.0f TFLOP/s", flops / (ms * 1e-3) / 1e12);
      std::printf("\n");
      prof["ops"][op] = ms;
    }
    out["profile"].push_back(prof);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  std::ifstream in(a.config);
  if (!in) throw Error(a.config + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  const ModelConfig c = parse_model_config(text.str(), a.config);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = copy_bandwidth_gbs();
  std::printf("device: %s, %d SMs; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, copy_gbs);

  BackendOptions o;
  o.device = "cuda";
  o.gpu_memory_fraction = a.fraction;
  o.stem = a.stem;
  o.quantization = a.quantization;
  o.kv_cache_dtype = a.kv_cache_dtype;
  const std::string kv_dtype = kv_cache_fp8(a.kv_cache_dtype) ? "fp8" : "bf16";
  std::printf("stem: %s; weights and activations: %s; KV cache: %s\n", stem_selection_name(a.stem).c_str(),
              a.quantization.empty() ? "bf16" : a.quantization.c_str(), kv_dtype.c_str());
  CudaBackendOptions co;
  co.reserve_step_tokens = a.chunk;
  const double t_load = now_ms();
  auto m = make_cuda_model_backend(c, nullptr, o, co);
  m->fill_kv_random(7);
  const CudaBackendStats st0 = m->stats();
  std::printf("model: %s config %s, weights %.2f GB (a decode step reads %.2f GB), KV pool %lld pages x %d = "
              "%.1f GB (%lld tokens), ready in %.1f s\n",
              c.architecture.c_str(), a.config.c_str(), st0.weight_bytes / 1e9, st0.weight_step_read_bytes / 1e9,
              static_cast<long long>(m->num_pages()), m->page_size(), st0.kv_bytes / 1e9,
              static_cast<long long>(m->num_pages() * m->page_size()), (now_ms() - t_load) / 1e3);
  // The pool's capacity: tokens, and whole sequences of 32K (each needs its own pages).
  const int64_t pages_32k = (32768 + m->page_size() - 1) / m->page_size(), fit_32k = m->num_pages() / pages_32k;
  std::printf("KV cache %s: %zu bytes a token (all layers, K and V%s), pool %lld tokens = %lld sequences of 32K\n",
              kv_dtype.c_str(), st0.kv_bytes_per_token, kv_dtype == "fp8" ? ", codes and scales" : "",
              static_cast<long long>(m->num_pages() * m->page_size()), static_cast<long long>(fit_32k));
  nlohmann::json out = {{"device", prop.name},
                        {"copy_gbs", copy_gbs},
                        {"config", a.config},
                        {"quantization", a.quantization.empty() ? "bf16" : a.quantization},
                        {"weights_gb", st0.weight_bytes / 1e9},
                        {"kv_cache_dtype", kv_dtype},
                        {"kv_bytes_per_token", st0.kv_bytes_per_token},
                        {"kv_pool_tokens", m->num_pages() * m->page_size()},
                        {"kv_pool_seqs_32k", fit_32k},
                        {"chunk", a.chunk},
                        {"sparse_prefill", a.sparse_prefill}};

  std::mt19937_64 rng(1);
  if (!a.batches.empty() && !a.contexts.empty())
    std::printf("\n%-8s %-8s %12s %12s %14s %12s %s\n", "batch", "context", "wall ms", "device ms", "GB/s", "of copy",
                "");
  for (int64_t C : a.contexts)
    for (int64_t B : a.batches) {
      const DecodeResult r = time_decode(*m, B, C, a.steps);
      std::printf("%-8lld %-8lld %12.3f %12.3f %14.0f %11.0f%% %s\n", static_cast<long long>(B),
                  static_cast<long long>(C), r.wall_ms, r.device_ms, r.gbs, 100 * r.gbs / copy_gbs,
                  r.aliased ? "aliased KV (does not fit: upper bound)" : "");
      out["decode"].push_back({{"batch", B}, {"context", C}, {"wall_ms", r.wall_ms}, {"device_ms", r.device_ms},
                               {"gbs", r.gbs}, {"of_copy", r.gbs / copy_gbs}, {"aliased", r.aliased}});
      std::fflush(stdout);
    }

  if (!a.ttft.empty()) {
    std::vector<std::pair<std::string, bool>> modes;
    if (a.sparse_prefill != "stem") modes.emplace_back("dense", false);
    if (a.sparse_prefill != "dense") modes.emplace_back("stem", true);
    // Warm-up: first launches, GEMM plans, the stream-ordered pool; Stem's needs a prompt it
    // makes sparse (16K: blocks 55..127 are).
    time_to_first_token(*m, std::min<int64_t>(2048, a.ttft.front()), a.chunk, false, rng);
    if (a.sparse_prefill != "dense") time_to_first_token(*m, 16384, a.chunk, true, rng);
    std::printf("\n%-10s", "prompt");
    for (const auto& [name, stem] : modes) std::printf(" %14s", (name + " TTFT ms").c_str());
    std::printf(" %10s %s\n", "runs", modes.size() == 2 ? "  dense / stem" : "");
    for (int64_t L : a.ttft) {
      if (L > m->num_pages() * m->page_size()) {
        std::printf("%-10lld does not fit the KV pool\n", static_cast<long long>(L));
        continue;
      }
      const int runs = a.runs > 0 ? a.runs : L <= 32768 ? 3 : 1;
      std::printf("%-10lld", static_cast<long long>(L));
      std::vector<double> medians;
      for (const auto& [name, stem] : modes) {
        std::vector<double> ms;
        for (int i = 0; i < runs; ++i) ms.push_back(time_to_first_token(*m, L, a.chunk, stem, rng));
        medians.push_back(median(ms));
        std::printf(" %14.1f", medians.back());
        out["ttft"].push_back({{"tokens", L}, {"mode", name}, {"ms", medians.back()}, {"runs", runs}});
      }
      std::printf(" %10d", runs);
      if (medians.size() == 2) std::printf("  %.2fx", medians[0] / medians[1]);
      std::printf("\n");
      std::fflush(stdout);
    }
    if (a.profile) profile_ttft(*m, a, modes, rng, out);
  }
  if (!a.json.empty()) std::ofstream(a.json) << out.dump(2) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_model: %s\n", e.what());
  return 1;
}
