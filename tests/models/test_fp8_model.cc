// FP8 models on the CPU backend: the compressed-tensors FP8-Dynamic fixture (tests/fixtures/
// make_fp8_fixtures.py, quantized by torch) holds exactly the codes and scales that quantizing the
// f32 fixture at load gives (kernels/cpu/fp8.h); its logits against the f32 model's within the
// E4M3 bound below, with the same top-1 wherever the f32 model's margin exceeds it; and a clear
// error, naming the tensor and the reason, for each way an FP8 checkpoint can be malformed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/model_config.h"
#include "base/weights.h"
#include "engine/engine.h"
#include "kernels/cpu/fp8.h"
#include "models/backend.h"
#include "models/llama_weights.h"
#include "tests/models/logit_compare.h"
#include "tests/test_util.h"

using namespace stem;
using stem::test::error_of;
using stem::test::TempDir;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& name) { return fs::path(stem::test::fixtures_dir()) / "models" / name; }

// A model folder's layer matrices placed as FP8 (E4M3 codes and f32 scales) in host memory.
struct Fp8Weights {
  LlamaWeights w;
  std::vector<char> buf;
  explicit Fp8Weights(const fs::path& dir) {
    const ModelConfig c = load_model_config(dir);
    const WeightStore store(dir);
    const std::vector<WeightSpec> table = llama_weight_table(c, lm_head_tied(c, &store), w);
    buf.resize(place_weights(c, table, w, DType::F32, nullptr, DType::F8E4M3) + 256);
    char* base = buf.data() + (256 - reinterpret_cast<uintptr_t>(buf.data()) % 256) % 256;
    place_weights(c, table, w, DType::F32, base, DType::F8E4M3);
    load_weights(table, w, c, store, nullptr);
  }
};

bool same_bytes(const TensorView& a, const TensorView& b) {
  return a.dtype == b.dtype && a.numel() == b.numel() && std::memcmp(a.data, b.data, view_bytes(a)) == 0;
}

std::vector<int32_t> tokens(size_t n, int32_t seed) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((seed + 37 * i + i * i) % 256);
  return ids;
}

// Writes a safetensors file of the given tensors (name -> dtype, shape, bytes).
struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
void write_safetensors(const fs::path& p, const std::map<std::string, RawTensor>& tensors) {
  nlohmann::json h = nlohmann::json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  const std::string header = h.dump();
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  stem::test::write_file(p, out + header + data);
}

// The FP8 fixture's tensors, to break one at a time.
std::map<std::string, RawTensor> fp8_tensors() {
  const SafetensorsFile f(fixture("llama-gqa-fp8") / "model.safetensors");
  std::map<std::string, RawTensor> out;
  static const std::map<DType, std::string> names = {
      {DType::F32, "F32"}, {DType::BF16, "BF16"}, {DType::F16, "F16"}, {DType::F8E4M3, "F8_E4M3"}};
  for (const auto& [name, t] : f.tensors())
    out[name] = {names.at(t.dtype), t.shape, std::string(static_cast<const char*>(t.data), t.nbytes)};
  return out;
}

// The error loading the FP8 fixture with its tensors changed by `edit`.
template <typename Edit>
std::string load_error(Edit edit) {
  TempDir dir;
  fs::copy_file(fixture("llama-gqa-fp8") / "config.json", dir / "config.json");
  std::map<std::string, RawTensor> t = fp8_tensors();
  edit(t);
  write_safetensors(dir / "model.safetensors", t);
  EngineOptions o;
  o.load_tokenizer = false;
  return error_of([&] { Engine e(dir.path(), o); });
}

}  // namespace

TEST_CASE("fp8: an FP8 checkpoint placed in bf16 (the CUDA backend today) is dequantized: code times scale") {
  const fs::path dir = fixture("llama-gqa-fp8");
  const ModelConfig c = load_model_config(dir);
  const WeightStore store(dir);
  LlamaWeights w;
  const std::vector<WeightSpec> table = llama_weight_table(c, lm_head_tied(c, &store), w);
  std::vector<char> buf(place_weights(c, table, w, DType::BF16, nullptr) + 256);
  place_weights(c, table, w, DType::BF16, buf.data() + (256 - reinterpret_cast<uintptr_t>(buf.data()) % 256) % 256);
  load_weights(table, w, c, store, nullptr);
  const LlamaLayerWeights& l = w.layers[2];
  CHECK(l.o_scale.empty());
  const TensorInfo &codes = store.get("model.layers.2.self_attn.o_proj.weight", {64, 64}),
                   &scales = *store.find("model.layers.2.self_attn.o_proj.weight_scale");
  REQUIRE(l.o.dtype == DType::BF16);
  int64_t differ = 0;
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t k = 0; k < 64; ++k) {
      const float want = cpu::fp8_to_f32(static_cast<const uint8_t*>(codes.data)[r * 64 + k]) *
                         static_cast<const float*>(scales.data)[r];
      differ += l.o.ptr<uint16_t>()[r * 64 + k] != f32_to_bf16(want);
    }
  CHECK(differ == 0);
  // The norms and the embedding (bf16 in the checkpoint) are copied as they are.
  CHECK(std::memcmp(w.embed.data, store.get("model.embed_tokens.weight", {256, 64}).data, 256 * 64 * 2) == 0);
}

TEST_CASE("fp8: the FP8-Dynamic fixture holds the codes and scales that quantizing at load gives") {
  CHECK(load_model_config(fixture("llama-gqa-fp8")).quantization == "fp8");
  const Fp8Weights from_checkpoint(fixture("llama-gqa-fp8")), at_load(fixture("llama-gqa"));
  REQUIRE(from_checkpoint.w.layers.size() == 3);
  for (size_t l = 0; l < 3; ++l) {
    const LlamaLayerWeights &a = from_checkpoint.w.layers[l], &b = at_load.w.layers[l];
    INFO("layer " << l);
    for (auto [x, y] : {std::pair{a.qkv, b.qkv}, {a.o, b.o}, {a.gate_up, b.gate_up}, {a.down, b.down}}) {
      CHECK(x.dtype == DType::F8E4M3);
      CHECK(same_bytes(x, y));
    }
    for (auto [x, y] : {std::pair{a.qkv_scale, b.qkv_scale}, {a.o_scale, b.o_scale},
                        {a.gate_up_scale, b.gate_up_scale}, {a.down_scale, b.down_scale}}) {
      CHECK(x.dtype == DType::F32);
      CHECK(same_bytes(x, y));
    }
  }
}

namespace {

// The bound, from the E4M3 step: rounding to nearest moves a value by at most half a step, u8 = 2^-4
// of it (normals), so a product of a quantized weight and a quantized activation is off by at most
// (2·u8 + u8²) of itself, and so is a GEMM's output of terms of one sign. It is a first-order bound
// for one GEMM, not a proof for the network (like tests/rounding.h's): the rounding errors of a
// GEMM's many terms mostly cancel, and the norms keep later layers from growing them. Checked:
// the logits' relative (Frobenius) error, and each logit within that fraction of the largest
// |logit| of its sequence; top-1 the same wherever the f32 model's top-two margin exceeds twice
// that. Measured on llama-gqa: relative error 0.07, largest logit error 0.09 of the largest logit;
// top-1 the same on 85% of the positions (the others within 0.02 of a tie).
constexpr double kU8 = 0x1p-4, kFp8Bound = 2 * kU8 + kU8 * kU8;


void check_fp8_logits(const std::string& name, const fs::path& fp8_dir, const fs::path& f32_dir, bool flag) {
  EngineOptions o;
  o.load_tokenizer = false;
  Engine ref(f32_dir, o);
  o.quantization = flag ? "fp8" : "";
  Engine fp8(fp8_dir, o);
  int64_t rows = 0, same = 0, must = 0;
  for (size_t n : {8, 23, 40}) {
    const test::LogitComparison c =
        test::compare_logits(fp8.score(tokens(n, static_cast<int32_t>(n))), ref.score(tokens(n, int32_t(n))), kFp8Bound);
    INFO(name << ", " << n << " tokens: relative error " << c.rel << ", largest logit error " << c.max_diff
              << " (largest logit " << c.max_ref << "), top-1 the same on " << c.same_top1 << " of " << c.rows
              << ", " << c.agree << " of the " << c.must_agree << " beyond the bound");
    test::check_within(c, kFp8Bound);
    rows += c.rows;
    same += c.same_top1;
    must += c.must_agree;
  }
  INFO(name << ": top-1 the same on " << same << " of " << rows << " positions");
  CHECK(same >= rows * 3 / 4);
  CHECK(must > 0);
}

}  // namespace

TEST_CASE("fp8: an FP8-Dynamic checkpoint's logits against the f32 model's, within the E4M3 bound") {
  check_fp8_logits("llama-gqa-fp8", fixture("llama-gqa-fp8"), fixture("llama-gqa"), false);
}

TEST_CASE("fp8: --quantization fp8 of an f32 checkpoint against the f32 model, within the E4M3 bound") {
  check_fp8_logits("llama-gqa --quantization fp8", fixture("llama-gqa"), fixture("llama-gqa"), true);
  check_fp8_logits("qwen2-bias --quantization fp8", fixture("qwen2-bias"), fixture("qwen2-bias"), true);
}

TEST_CASE("fp8: a malformed FP8 checkpoint fails at load, naming the tensor and the reason") {
  const std::string k = "model.layers.1.self_attn.k_proj.weight", ks = k + "_scale";
  CHECK(load_error([](auto&) {}).empty());
  CHECK_THAT(load_error([&](auto& t) { t.erase(ks); }),
             Contains("tensor '" + k + "' is F8_E4M3 but '" + ks + "' is missing"));
  CHECK_THAT(load_error([&](auto& t) {
               t[ks].shape = {31, 1};
               t[ks].bytes.resize(31 * 4);
             }),
             Contains("'" + k + "' is F8_E4M3 of 32 rows, but '" + ks + "' has shape [31,1]: it must be [32,1]"));
  CHECK_THAT(load_error([&](auto& t) { t[ks] = {"F8_E4M3", {32, 1}, std::string(32, '\x38')}; }),
             Contains("its scale '" + ks + "' is f8e4m3: scales must be f32, bf16 or f16"));
  CHECK_THAT(load_error([&](auto& t) {
               const float minus = -1.f;
               std::memcpy(t[ks].bytes.data() + 5 * 4, &minus, 4);
             }),
             Contains("its scale '" + ks + "' holds -1.000000 at row 5: scales must be positive and finite"));
  const std::string norm = "model.layers.0.input_layernorm.weight";
  CHECK_THAT(load_error([&](auto& t) { t[norm] = {"F8_E4M3", {64}, std::string(64, '\x38')}; }),
             Contains("tensor '" + norm + "' is F8_E4M3: only matrices may be"));
  // One scale for the whole tensor (the per-tensor strategy) is taken.
  CHECK(load_error([&](auto& t) { t[ks] = {"F32", {1}, t[ks].bytes.substr(0, 4)}; }).empty());
}

TEST_CASE("fp8: a GPU below compute capability 8.9 refuses FP8, and an unknown quantization is refused") {
  CHECK_THAT(error_of([] { check_fp8_gpu(8, 0, "NVIDIA A100-SXM4-80GB"); }),
             Contains("FP8 needs a GPU of compute capability 8.9 or newer") &&
                 Contains("NVIDIA A100-SXM4-80GB is 8.0"));
  CHECK_THAT(error_of([] { check_fp8_gpu(8, 6, "NVIDIA A10"); }), Contains("NVIDIA A10 is 8.6"));
  CHECK(error_of([] { check_fp8_gpu(8, 9, "NVIDIA L4"); }).empty());
  CHECK(error_of([] { check_fp8_gpu(9, 0, "NVIDIA H100 80GB HBM3"); }).empty());
  const ModelConfig f32 = load_model_config(fixture("llama-gqa")), fp8 = load_model_config(fixture("llama-gqa-fp8"));
  BackendOptions o;
  CHECK_FALSE(wants_fp8(f32, o));
  CHECK(wants_fp8(fp8, o));
  o.quantization = "fp8";
  CHECK(wants_fp8(f32, o));
  o.quantization = "int8";
  CHECK_THAT(error_of([&] { wants_fp8(f32, o); }), Contains("quantization 'int8' is not supported (fp8)"));
}
