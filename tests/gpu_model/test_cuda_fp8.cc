// The CUDA backend in FP8 (issue 18): E4M3 weights with a scale per output channel, activations
// quantized per token, the four projections of every layer through cuda::fp8_matmul; the LM head
// stays bf16. On random models written as real model folders (gpu_model_util.h; head dims 64 and
// 128, the CUDA attention kernels' sizes: the llama-gqa-fp8 fixture's head dim 16 is not one):
//   1. CUDA FP8 against CPU FP8 (`--quantization fp8` on both: the same codes and scales, since
//      both quantize the same bf16 weights with cpu::quantize_rows_fp8 at load);
//   2. an FP8-Dynamic checkpoint (compressed-tensors: F8_E4M3 weights + `weight_scale`, written
//      here from the same weights by the same rule) against `--quantization fp8` of the bf16
//      checkpoint: the same codes and scales on the device, so the same logits bit for bit;
//   3. CUDA FP8 against CUDA bf16;
//   4. the activations' quantization fused into the RMSNorms and the SwiGLU against the separate
//      quantize op (STEM_FP8_FUSE=0): the same codes, so the same logits bit for bit;
//   5. the FP8 KV cache (--kv-cache-dtype fp8, bf16 weights): CUDA against the CPU's FP8 cache,
//      and against CUDA's bf16 cache, over prefill, mixed and graph-replayed decode steps.
//
// Bounds (‖a − b‖ / ‖b‖ over a step's logit rows), from the arithmetic:
//   - FP8 vs bf16: E4M3 keeps 4 significant bits, so each rounding of a weight or an activation
//     is off by about 2.6% RMS (a step of 2^-3..2^-4 relative, /√12); a GEMM's output then by
//     ≈ 3.7% RMS (both operands), independently per GEMM. Four GEMMs a layer, 2-3 layers, added
//     in quadrature and diluted by the residual stream: about 5-10% on the logits. Bound 0.25.
//   - CUDA FP8 vs CPU FP8: the same weights' codes; the activations differ before quantization
//     by bf16 rounding (δ ≈ 2^-9, what test_cuda_vs_cpu bounds), and an activation whose E4M3
//     rounding that flips moves by a whole step s: the expected squared error per element is
//     (δ/s)·s² = δ·s ≈ 2^-12, 1.6% RMS per GEMM, about half the FP8-vs-bf16 error. Bound 0.15.
//   - FP8 KV vs bf16 KV: one E4M3 rounding of each cached key and value (≈ 2.6% RMS each, as
//     above), no GEMM operand quantized; a score's error averages over D products and the output's
//     over the softmax-weighted values, then the residual dilutes it: a few percent. Bound 0.15.
//   - CUDA FP8 KV vs CPU FP8 KV: K and V differ before quantization by bf16 rounding, codes flip
//     where that crosses a rounding boundary (as the activations above), plus what
//     test_cuda_vs_cpu bounds. Bound 0.15.
// Greedy top-1 must agree wherever the reference's two best logits are further apart than twice
// the bound's worth of error on that row (2·tol·‖row‖₂, which the row's error cannot bridge), and
// over all rows at least half must agree (a broken FP8 path agrees about 1 in V).
#include <algorithm>
#include <cstring>
#include <functional>

#include "base/weights.h"
#include "kernels/cpu/fp8.h"
#include "engine/engine.h"
#include "models/cuda/backend.h"
#include "tests/gpu_model/gpu_model_util.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
using namespace stem::gpu_model_test;

namespace {

constexpr double kFp8VsCpuFp8 = 0.15;
constexpr double kFp8VsBf16 = 0.25;
constexpr double kFp8KvVsBf16Kv = 0.15;
constexpr double kFp8KvVsCpuFp8Kv = 0.15;

std::unique_ptr<ModelBackend> make(const std::filesystem::path& dir, const std::string& device, bool fp8,
                                   int64_t num_pages, int32_t page_size, const std::string& kv_cache_dtype = "auto",
                                   const std::vector<int64_t>& kv_unquantized_layers = {}) {
  const ModelConfig c = load_model_config(dir);
  const WeightStore store(dir);  // the backends copy the weights at load
  BackendOptions o;
  o.num_pages = num_pages;
  o.page_size = page_size;
  o.device = device;
  if (fp8) o.quantization = "fp8";
  o.kv_cache_dtype = kv_cache_dtype;
  o.kv_unquantized_layers = kv_unquantized_layers;
  if (device == "cpu") return make_cpu_backend(c, store, o);
  return make_cuda_model_backend(c, &store, o);
}

// Rewrites dir's model as a compressed-tensors FP8-Dynamic checkpoint in out_dir: every layer's
// *_proj.weight as F8_E4M3 with `<name>_scale` f32 [rows, 1] (cpu::quantize_rows_fp8's rule),
// everything else as it was (bf16); config.json gains the quantization_config llm-compressor writes.
void write_fp8_checkpoint(const std::filesystem::path& dir, const std::filesystem::path& out_dir) {
  std::filesystem::create_directories(out_dir);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  const nlohmann::json scheme = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}};
  nlohmann::json weights = scheme, acts = scheme;
  weights["strategy"] = "channel";
  weights["dynamic"] = false;
  acts["strategy"] = "token";
  acts["dynamic"] = true;
  config["quantization_config"] = {
      {"quant_method", "compressed-tensors"},
      {"format", "float-quantized"},
      {"quantization_status", "compressed"},
      {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", acts}}}}},
      {"ignore", {"lm_head"}}};
  std::ofstream(out_dir / "config.json") << config.dump(2);

  WeightStore store(dir);
  struct Out {
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Out> tensors;
  for (const std::string& name : store.names()) {
    const TensorInfo& t = *store.find(name);
    const auto n = static_cast<size_t>(t.numel());
    const bool quantize = name.find(".layers.") != std::string::npos && name.ends_with("_proj.weight");
    if (!quantize) {
      REQUIRE(t.dtype == DType::BF16);
      tensors[name] = {"BF16", t.shape, std::vector<uint8_t>(static_cast<const uint8_t*>(t.data),
                                                             static_cast<const uint8_t*>(t.data) + n * 2)};
      continue;
    }
    const int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<float> f32(n), scales(static_cast<size_t>(rows));
    convert_to_f32(t, f32.data());
    std::vector<uint8_t> codes(n), scale_bytes(scales.size() * 4);
    cpu::quantize_rows_fp8(TensorView(codes.data(), DType::F8E4M3, {rows, cols}),
                           TensorView(scales.data(), DType::F32, {rows}),
                           TensorView(f32.data(), DType::F32, {rows, cols}));
    std::memcpy(scale_bytes.data(), scales.data(), scale_bytes.size());
    tensors[name] = {"F8_E4M3", t.shape, std::move(codes)};
    tensors[name + "_scale"] = {"F32", {rows, 1}, std::move(scale_bytes)};
  }
  nlohmann::json header = {{"__metadata__", {{"format", "pt"}}}};
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(out_dir / "model.safetensors", std::ios::binary);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : tensors)
    out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
}

struct Agreement {
  int64_t rows = 0, agree = 0;
};

// The logits' error bound, and greedy top-1 where the reference's top-2 gap exceeds what the
// row's share of the error can bridge (see the file's comment).
void check_logits(const std::string& what, const Tensor& got, const Tensor& ref, double tol, Agreement& a) {
  REQUIRE(got.shape() == ref.shape());
  const std::vector<float> out(got.ptr<float>(), got.ptr<float>() + got.numel());
  const std::vector<float> want(ref.ptr<float>(), ref.ptr<float>() + ref.numel());
  STEM_CHECK_CLOSE(what, out, want, tol);
  const int64_t R = ref.shape()[0], V = ref.shape()[1];
  for (int64_t r = 0; r < R; ++r) {
    const float* p = want.data() + r * V;
    double norm = 0;
    for (int64_t v = 0; v < V; ++v) norm += double{p[v]} * p[v];
    std::vector<float> sorted(p, p + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const double gap = double{sorted[0]} - sorted[1];
    const bool same = argmax_row(got, r) == argmax_row(ref, r);
    ++a.rows;
    a.agree += same;
    if (gap > 2 * tol * std::sqrt(norm)) {
      INFO(what << " row " << r << ": top-2 gap " << gap << ", row norm " << std::sqrt(norm));
      CHECK(same);
    }
  }
}

void check_agreement(const std::string& what, const Agreement& a) {
  INFO(what << ": greedy top-1 agrees on " << a.agree << " of " << a.rows << " rows");
  gpu_test::report_error(what + " top-1 disagreement", 1.0 - static_cast<double>(a.agree) / a.rows);
  CHECK(2 * a.agree >= a.rows);
}

// Prefill (chunked, several sequences, decode rows mixed in), then decode steps through the
// graphs, on `got` and `ref` alike; greedy on ref's logits so both see the same tokens.
void run_pair(ModelBackend& got, ModelBackend& ref, const ModelConfig& c, int64_t num_pages, int32_t page_size,
              uint64_t seed, double tol, const std::string& name) {
  std::mt19937_64 rng(seed);
  PagedSequences seqs(num_pages, page_size, seed + 1);
  const int64_t V = c.vocab_size;
  Agreement agreement;
  Tensor lg, lr;
  auto step = [&](const ForwardBatch& b, const std::string& what) {
    got.forward(b, lg);
    ref.forward(b, lr);
    check_logits(name + " " + what, lg, lr, tol, agreement);
  };
  const int a = seqs.add(), b = seqs.add(), d = seqs.add();
  const std::vector<int32_t> prompt_b = random_tokens(rng, 300, V);
  step(seqs.step({{a, random_tokens(rng, 37, V)}, {b, {prompt_b.begin(), prompt_b.begin() + 200}},
                  {d, random_tokens(rng, 5, V)}}),
       "prefill-1");
  std::vector<int32_t> tok = {argmax_row(lr, 0), argmax_row(lr, 2)};
  step(seqs.step({{a, {tok[0]}}, {b, {prompt_b.begin() + 200, prompt_b.end()}}, {d, {tok[1]}}}), "mixed-2");
  tok = {argmax_row(lr, 0), argmax_row(lr, 1), argmax_row(lr, 2)};
  step(seqs.step({{a, random_tokens(rng, 64, V)}}, true), "all-rows-3");
  tok[0] = argmax_row(lr, lr.shape()[0] - 1);
  for (int it = 0; it < 12; ++it) {
    step(seqs.step({{a, {tok[0]}}, {b, {tok[1]}}, {d, {tok[2]}}}), "decode-3");
    for (int i = 0; i < 3; ++i) tok[i] = argmax_row(lr, i);
  }
  check_agreement(name, agreement);
}

nlohmann::json model_hd64() {
  nlohmann::json cfg = llama_config(256, 4, 2, 64, 3);
  cfg["attention_bias"] = true;  // a bias on an FP8 GEMM (cuBLASLt's epilogue, or ours after it)
  return cfg;
}

nlohmann::json model_hd128() {
  nlohmann::json cfg = llama_config(256, 8, 2, 128, 2);
  cfg["tie_word_embeddings"] = true;  // the LM head is the (bf16) embedding table
  return cfg;
}

}  // namespace

TEST_CASE("cuda FP8 matches cpu FP8 (--quantization fp8 of a bf16 checkpoint)") {
  STEM_REQUIRE_GPU();
  const auto [cfg, seed, name] = GENERATE(table<nlohmann::json, uint64_t, std::string>(
      {{model_hd64(), 31, "fp8 hd64-qkv-bias"}, {model_hd128(), 32, "fp8 hd128-tied"}}));
  stem::test::TempDir tmp;
  const ModelConfig c = write_random_model(tmp.path(), cfg, seed);
  auto gpu = make(tmp.path(), "cuda", true, 128, 16);
  auto cpu = make(tmp.path(), "cpu", true, 128, 16);
  run_pair(*gpu, *cpu, c, 128, 16, seed + 100, kFp8VsCpuFp8, "model_cuda_fp8_vs_cpu_fp8 " + name);
  const CudaBackendStats st = static_cast<CudaModelBackend&>(*gpu).stats();
  CHECK(st.graph_replays >= 8);  // the FP8 path captured into decode graphs and replayed
}

TEST_CASE("cuda FP8 against cuda bf16 on the same checkpoint") {
  STEM_REQUIRE_GPU();
  const auto [cfg, seed, name] = GENERATE(table<nlohmann::json, uint64_t, std::string>(
      {{model_hd64(), 41, "hd64-qkv-bias"}, {model_hd128(), 42, "hd128-tied"}}));
  stem::test::TempDir tmp;
  const ModelConfig c = write_random_model(tmp.path(), cfg, seed);
  auto fp8 = make(tmp.path(), "cuda", true, 128, 16);
  auto bf16 = make(tmp.path(), "cuda", false, 128, 16);
  run_pair(*fp8, *bf16, c, 128, 16, seed + 100, kFp8VsBf16, "model_cuda_fp8_vs_bf16 " + name);
  // FP8 weights take about half the bytes of bf16 ones (the LM head and embeddings stay bf16).
  const auto& f = static_cast<CudaModelBackend&>(*fp8);
  const auto& b = static_cast<CudaModelBackend&>(*bf16);
  CHECK(f.stats().weight_step_read_bytes < b.stats().weight_step_read_bytes);
}

TEST_CASE("cuda FP8-Dynamic checkpoint equals --quantization fp8 of its bf16 source, and fused quantization the "
          "separate op, bit for bit") {
  STEM_REQUIRE_GPU();
  // The heuristic's first cuBLASLt algorithm in both backends (GemmContext times candidates
  // otherwise, and two contexts may keep different ones: another summation order).
  setenv("STEM_GEMM_TUNE", "0", 1);
  stem::test::TempDir tmp;
  const std::filesystem::path src = tmp.path() / "bf16", ckpt = tmp.path() / "fp8";
  const ModelConfig c = write_random_model(src, model_hd64(), 51);
  write_fp8_checkpoint(src, ckpt);
  REQUIRE(load_model_config(ckpt).quantization == "fp8");
  auto from_ckpt = make(ckpt, "cuda", false, 128, 16);  // an FP8 checkpoint runs in FP8 without the flag
  auto quantized = make(src, "cuda", true, 128, 16);
  setenv("STEM_FP8_FUSE", "0", 1);  // read when the backend's ops are made
  auto unfused = make(src, "cuda", true, 128, 16);
  unsetenv("STEM_FP8_FUSE");
  std::mt19937_64 rng(52);
  PagedSequences seqs(128, 16, 53);
  const int a = seqs.add(), b = seqs.add();
  Tensor l1, l2, l3;
  ForwardBatch batch = seqs.step({{a, random_tokens(rng, 70, c.vocab_size)}, {b, random_tokens(rng, 9, c.vocab_size)}});
  for (int it = 0; it < 6; ++it) {
    from_ckpt->forward(batch, l1);
    quantized->forward(batch, l2);
    REQUIRE(l1.shape() == l2.shape());
    CHECK(std::memcmp(l1.data(), l2.data(), static_cast<size_t>(l1.numel()) * 4) == 0);
    unfused->forward(batch, l3);
    REQUIRE(l3.shape() == l2.shape());
    CHECK(std::memcmp(l3.data(), l2.data(), static_cast<size_t>(l3.numel()) * 4) == 0);
    batch = seqs.step({{a, {argmax_row(l2, 0)}}, {b, {argmax_row(l2, 1)}}});
  }
  // And the CPU backend on the checkpoint within the FP8-vs-FP8 bound.
  auto cpu = make(ckpt, "cpu", false, 128, 16);
  auto gpu = make(ckpt, "cuda", false, 128, 16);
  run_pair(*gpu, *cpu, c, 128, 16, 54, kFp8VsCpuFp8, "model_cuda_fp8_ckpt_vs_cpu");
}

TEST_CASE("cuda FP8 refuses shapes cuBLASLt's FP8 GEMM cannot take, with the reason") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  write_random_model(tmp.path(), llama_config(256, 4, 2, 64, 1, 512, 200), 61);  // intermediate 200
  STEM_CHECK_ERROR(make(tmp.path(), "cuda", true, 64, 16), "multiples of 16");
}

TEST_CASE("cuda FP8 KV cache matches cpu FP8 KV cache (--kv-cache-dtype fp8)") {
  STEM_REQUIRE_GPU();
  const auto [cfg, seed, name] = GENERATE(table<nlohmann::json, uint64_t, std::string>(
      {{model_hd64(), 71, "fp8-kv hd64-qkv-bias"}, {model_hd128(), 72, "fp8-kv hd128-tied"}}));
  const int32_t page_size = GENERATE(16, 4);
  stem::test::TempDir tmp;
  const ModelConfig c = write_random_model(tmp.path(), cfg, seed);
  const int64_t pages = 128 * 16 / page_size;
  auto gpu = make(tmp.path(), "cuda", false, pages, page_size, "fp8");
  auto cpu = make(tmp.path(), "cpu", false, pages, page_size, "fp8");
  run_pair(*gpu, *cpu, c, pages, page_size, seed + 100, kFp8KvVsCpuFp8Kv,
           "model_cuda_fp8kv_vs_cpu_fp8kv " + name + " page" + std::to_string(page_size));
  const CudaBackendStats st = static_cast<CudaModelBackend&>(*gpu).stats();
  CHECK(st.graph_replays >= 8);  // the FP8 decode kernel captured into decode graphs and replayed
}

TEST_CASE("cuda FP8 KV cache with unquantized layers (large key biases): as the CPU's, and bf16 where asked") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  const ModelConfig c = write_random_model(tmp.path(), model_hd64(), 91);
  REQUIRE(c.num_hidden_layers >= 2);
  // Layer 0 unquantized, the others FP8: the layout of mixed layers against the CPU's twin.
  auto gpu = make(tmp.path(), "cuda", false, 128, 16, "fp8", {0});
  auto cpu = make(tmp.path(), "cpu", false, 128, 16, "fp8", {0});
  run_pair(*gpu, *cpu, c, 128, 16, 191, kFp8KvVsCpuFp8Kv, "model_cuda_fp8kv_mixed_vs_cpu layer 0 bf16");
  const size_t mixed = static_cast<CudaModelBackend&>(*gpu).stats().kv_bytes_per_token;
  const size_t L = static_cast<size_t>(c.num_hidden_layers), kv = static_cast<size_t>(c.kv_dim());
  CHECK(mixed == 2 * (kv * 2) + (L - 1) * 2 * (kv + static_cast<size_t>(c.num_key_value_heads) * 4));
  // Every layer unquantized: the bf16 cache's arithmetic (GEMM plans tuned apart may differ in the
  // last bits, so a bound far under the FP8 cache's).
  std::vector<int64_t> all(L);
  for (size_t l = 0; l < L; ++l) all[l] = static_cast<int64_t>(l);
  auto none = make(tmp.path(), "cuda", false, 128, 16, "fp8", all);
  auto bf16 = make(tmp.path(), "cuda", false, 128, 16, "bf16");
  run_pair(*none, *bf16, c, 128, 16, 192, 0.02, "model_cuda_fp8kv_all_unquantized_vs_bf16kv");
  CHECK(static_cast<CudaModelBackend&>(*none).stats().kv_bytes_per_token ==
        static_cast<CudaModelBackend&>(*bf16).stats().kv_bytes_per_token);
}

TEST_CASE("cuda FP8 KV cache against cuda bf16 KV cache, and about half the bytes a token") {
  STEM_REQUIRE_GPU();
  const auto [cfg, seed, name] = GENERATE(table<nlohmann::json, uint64_t, std::string>(
      {{model_hd64(), 81, "hd64-qkv-bias"}, {model_hd128(), 82, "hd128-tied"}}));
  stem::test::TempDir tmp;
  const ModelConfig c = write_random_model(tmp.path(), cfg, seed);
  auto fp8 = make(tmp.path(), "cuda", false, 128, 16, "fp8");
  auto bf16 = make(tmp.path(), "cuda", false, 128, 16, "bf16");
  run_pair(*fp8, *bf16, c, 128, 16, seed + 100, kFp8KvVsBf16Kv, "model_cuda_fp8kv_vs_bf16kv " + name);
  const size_t f = static_cast<CudaModelBackend&>(*fp8).stats().kv_bytes_per_token;
  const size_t b = static_cast<CudaModelBackend&>(*bf16).stats().kv_bytes_per_token;
  // Codes (1 byte an element) and an f32 scale per head: D + 4 bytes against 2·D.
  CHECK(f * 2 * c.head_dim == b * (c.head_dim + 4));
  // And with FP8 weights too: both kinds of quantization at once, against the bf16 model.
  auto both = make(tmp.path(), "cuda", true, 128, 16, "fp8");
  auto bf16_again = make(tmp.path(), "cuda", false, 128, 16);
  run_pair(*both, *bf16_again, c, 128, 16, seed + 200, kFp8VsBf16, "model_cuda_fp8_fp8kv_vs_bf16 " + name);
}

TEST_CASE("cuda FP8 KV cache: the pool from --gpu-memory-fraction holds about twice the bf16 pool's tokens") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  nlohmann::json cfg = model_hd128();
  cfg["max_position_embeddings"] = 4096;
  const ModelConfig c = write_random_model(tmp.path(), cfg, 91);
  const WeightStore store(tmp.path());
  int64_t pages[2];
  for (int fp8 = 0; fp8 < 2; ++fp8) {
    BackendOptions o;
    o.device = "cuda";
    o.gpu_memory_fraction = 0.3;
    o.kv_cache_dtype = fp8 ? "fp8" : "bf16";
    pages[fp8] = make_cuda_model_backend(c, &store, o)->num_pages();  // freed before the next one
  }
  INFO("bf16 pool " << pages[0] << " pages, fp8 pool " << pages[1]);
  // (2·D) / (D + 4) = 1.94 for D = 128, less the staging taken first (4096 tokens of bf16).
  CHECK(pages[1] > pages[0] * 19 / 10);
  CHECK(pages[1] < pages[0] * 2);
}

// The staging of an FP8 cache holds one max_model_len sequence's context (reserved at load, inside
// the memory the pool is sized around); the engine's scheduler keeps the contexts of each step's
// prefilling sequences within it (ModelBackend::max_prefill_context). Three 1200-token prompts
// added together (3600 tokens of context, against staging for 2048) prefill in turns, the staging
// never grows, and each answers as it does alone.
TEST_CASE("cuda FP8 KV cache: an engine's concurrent prompts prefill within the staging reserved at load") {
  STEM_REQUIRE_GPU();
  stem::test::TempDir tmp;
  nlohmann::json cfg = model_hd128();
  cfg["max_position_embeddings"] = 2048;
  const ModelConfig c = write_random_model(tmp.path(), cfg, 95);
  EngineOptions o;
  o.device = "cuda";
  o.load_tokenizer = false;
  o.kv_cache_dtype = "fp8";
  o.kv_cache_tokens = 16384;
  o.max_num_batched_tokens = 4096;  // a budget that takes all three prompts in one step
  o.sparse_prefill = SparsePrefill::Dense;
  o.enable_prefix_caching = false;  // the second run computes every prompt again
  Engine e(tmp.path(), o);
  const auto& cuda = static_cast<const CudaModelBackend&>(e.backend());
  const int64_t staged = cuda.stats().kv_stage_pages;
  CHECK(staged == 2048 / 16);
  CHECK(e.backend().max_prefill_context() == 2048);

  std::mt19937_64 rng(96);
  struct Out {
    std::vector<int32_t> tokens;
    std::vector<SampleResult> samples;
    bool done = false;
  };
  auto request = [](const std::vector<int32_t>& prompt) {
    GenerateRequest r;
    r.prompt = prompt;
    r.sampling.temperature = 0;
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = 2;
    r.stop.max_tokens = 6;
    r.stop.ignore_eos = true;
    return r;
  };
  auto sink = [](Out& out) {
    return [&out](const TokenEvent& ev) {
      if (ev.token >= 0) {
        out.tokens.push_back(ev.token);
        out.samples.push_back(ev.sample);
      }
      if (ev.finished) out.done = true;
    };
  };
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(random_tokens(rng, 1200, c.vocab_size));
  std::vector<Out> alone(3), together(3);
  for (int i = 0; i < 3; ++i) {
    e.add_request(request(prompts[i]), sink(alone[i]));
    while (!alone[i].done) e.step();
  }
  for (int i = 0; i < 3; ++i) e.add_request(request(prompts[i]), sink(together[i]));
  int64_t steps = 0, max_prefilling = 0;
  while (e.has_work()) {
    const StepStats st = e.step();
    max_prefilling = std::max(max_prefilling, st.num_seqs - st.num_decode);
    ++steps;
  }
  CHECK(max_prefilling == 1);  // one 1200-token context at a time fits 2048, two do not
  CHECK(cuda.stats().kv_stage_pages == staged);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(together[i].done);
    // Batched with other rows, the prefill's GEMMs round differently, and a code of the cache may
    // round to its neighbour: the FP8 cache's tolerance against bf16 (near-ties may differ).
    test::check_same_greedy(alone[i].tokens, alone[i].samples, together[i].tokens, kFp8KvVsBf16Kv);
  }
}
