#include "models/cuda_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "base/weights.h"

namespace stem {

namespace {

constexpr size_t kAlign = 256;  // cuBLASLt's fastest kernels want 256-byte-aligned operands

// Hands out views into one arena. Run once with no base to measure, once more to place.
struct Arena {
  char* base = nullptr;
  size_t used = 0;

  TensorView take(DType dtype, std::initializer_list<int64_t> shape) {
    TensorView v(nullptr, dtype, shape);
    v.data = base ? base + used : nullptr;
    used += (static_cast<size_t>(v.numel()) * dtype_size(dtype) + kAlign - 1) / kAlign * kAlign;
    return v;
  }
};

size_t view_bytes(const TensorView& v) { return v.empty() ? 0 : static_cast<size_t>(v.numel()) * dtype_size(v.dtype); }

void place_all(Arena& a, const ModelConfig& c, bool tied, CudaWeights& w, std::vector<CudaLayerWeights>& layers) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, QKV = c.q_dim() + 2 * c.kv_dim();
  w.embed = a.take(DType::BF16, {c.vocab_size, H});
  w.final_norm = a.take(DType::BF16, {H});
  w.lm_head = tied ? w.embed : a.take(DType::BF16, {c.vocab_size, H});
  w.inv_freq = a.take(DType::F32, {c.head_dim / 2});
  layers.assign(static_cast<size_t>(c.num_hidden_layers), {});
  for (CudaLayerWeights& L : layers) {
    L.input_norm = a.take(DType::BF16, {H});
    L.post_norm = a.take(DType::BF16, {H});
    L.qkv = a.take(DType::BF16, {QKV, H});
    if (c.attention_bias) L.qkv_bias = a.take(DType::BF16, {QKV});
    L.o = a.take(DType::BF16, {H, c.q_dim()});
    if (c.o_proj_bias) L.o_bias = a.take(DType::BF16, {H});
    L.gate_up = a.take(DType::BF16, {2 * I, H});
    if (c.mlp_bias) L.gate_up_bias = a.take(DType::BF16, {2 * I});
    L.down = a.take(DType::BF16, {H, I});
    if (c.mlp_bias) L.down_bias = a.take(DType::BF16, {H});
  }
}

// Rows [row0, row0 + rows) of a bf16 matrix (or elements of a vector), as a byte address.
char* row_address(const TensorView& dst, int64_t row0) {
  const int64_t row = dst.ndim == 1 ? 1 : dst.shape[1];
  return static_cast<char*>(dst.data) + row0 * row * 2;
}

// Copies checkpoint tensor `name` (of `shape`) into rows starting at row0 of dst, as bf16.
void load_rows(const WeightStore& store, const std::string& name, const std::vector<int64_t>& shape,
               const TensorView& dst, int64_t row0) {
  const TensorInfo& t = store.get(name, shape);
  const size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == DType::BF16) {
    CUDA_CHECK(cudaMemcpy(row_address(dst, row0), t.data, n * 2, cudaMemcpyHostToDevice));
    return;
  }
  std::vector<float> f32(n);
  convert_to_f32(t, f32.data());
  std::vector<uint16_t> bf16(n);
  for (size_t i = 0; i < n; ++i) bf16[i] = f32_to_bf16(f32[i]);
  CUDA_CHECK(cudaMemcpy(row_address(dst, row0), bf16.data(), n * 2, cudaMemcpyHostToDevice));
}

void load_checkpoint(const ModelConfig& c, const WeightStore& s, const CudaWeights& w,
                     const std::vector<CudaLayerWeights>& layers, bool tied) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  load_rows(s, "model.embed_tokens.weight", {c.vocab_size, H}, w.embed, 0);
  load_rows(s, "model.norm.weight", {H}, w.final_norm, 0);
  if (!tied) load_rows(s, "lm_head.weight", {c.vocab_size, H}, w.lm_head, 0);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const CudaLayerWeights& L = layers[i];
    load_rows(s, p + "input_layernorm.weight", {H}, L.input_norm, 0);
    load_rows(s, p + "post_attention_layernorm.weight", {H}, L.post_norm, 0);
    load_rows(s, p + "self_attn.q_proj.weight", {Q, H}, L.qkv, 0);
    load_rows(s, p + "self_attn.k_proj.weight", {KV, H}, L.qkv, Q);
    load_rows(s, p + "self_attn.v_proj.weight", {KV, H}, L.qkv, Q + KV);
    if (c.attention_bias) {
      load_rows(s, p + "self_attn.q_proj.bias", {Q}, L.qkv_bias, 0);
      load_rows(s, p + "self_attn.k_proj.bias", {KV}, L.qkv_bias, Q);
      load_rows(s, p + "self_attn.v_proj.bias", {KV}, L.qkv_bias, Q + KV);
    }
    load_rows(s, p + "self_attn.o_proj.weight", {H, Q}, L.o, 0);
    if (c.o_proj_bias) load_rows(s, p + "self_attn.o_proj.bias", {H}, L.o_bias, 0);
    load_rows(s, p + "mlp.gate_proj.weight", {I, H}, L.gate_up, 0);
    load_rows(s, p + "mlp.up_proj.weight", {I, H}, L.gate_up, I);
    load_rows(s, p + "mlp.down_proj.weight", {H, I}, L.down, 0);
    if (c.mlp_bias) {
      load_rows(s, p + "mlp.gate_proj.bias", {I}, L.gate_up_bias, 0);
      load_rows(s, p + "mlp.up_proj.bias", {I}, L.gate_up_bias, I);
      load_rows(s, p + "mlp.down_proj.bias", {H}, L.down_bias, 0);
    }
  }
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random weights without a device kernel of our own: a pool of N(0, 0.02) bf16 values is made once
// on the host (32 MiB, about 0.1 s) and every tensor is filled by device-to-device copies of pool
// chunks taken at random offsets. An 8B model's 16 GB then fill at copy speed (well under a second)
// where host generation and upload would take tens of seconds. Rows repeat only where two chunks
// happen to start at the same offset; for performance work and finiteness checks that is harmless.
class RandomFiller {
 public:
  explicit RandomFiller(uint64_t seed) : state_(seed ^ 0x5eed5eed5eedull) {
    std::vector<uint16_t> host(kPool);
    for (size_t i = 0; i < kPool; i += 2) {  // Box-Muller: two normals per pair of uniforms
      const double u1 = (static_cast<double>(splitmix64(state_) >> 11) + 1.0) * 0x1.0p-53;
      const double u2 = static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53;
      const double r = 0.02 * std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
      host[i] = f32_to_bf16(static_cast<float>(r * std::cos(a)));
      host[i + 1] = f32_to_bf16(static_cast<float>(r * std::sin(a)));
    }
    pool_ = cudabk::DeviceMemory(kPool * 2, "the random-weight pool");
    CUDA_CHECK(cudaMemcpy(pool_.get(), host.data(), kPool * 2, cudaMemcpyHostToDevice));
  }

  void normal(const TensorView& dst) {
    const size_t n = static_cast<size_t>(dst.numel());
    for (size_t done = 0; done < n;) {
      const size_t len = std::min(kChunk, n - done);
      const size_t start = (splitmix64(state_) % (kPool - kChunk)) & ~size_t{7};
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.data) + done * 2, pool_.bytes_ptr(start * 2), len * 2,
                                 cudaMemcpyDeviceToDevice, nullptr));
      done += len;
    }
  }

  static void ones(const TensorView& dst) {
    const std::vector<uint16_t> host(static_cast<size_t>(dst.numel()), f32_to_bf16(1.f));
    CUDA_CHECK(cudaMemcpy(dst.data, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  }

 private:
  static constexpr size_t kPool = size_t{16} << 20, kChunk = size_t{1} << 20;
  uint64_t state_;
  cudabk::DeviceMemory pool_;
};

}  // namespace

void fill_random_bf16(void* dst, size_t count, uint64_t seed) {
  RandomFiller fill(seed);
  fill.normal(TensorView(dst, DType::BF16, {static_cast<int64_t>(count)}));
  CUDA_CHECK(cudaDeviceSynchronize());
}

namespace {

void fill_random(const ModelConfig& c, uint64_t seed, const CudaWeights& w, const std::vector<CudaLayerWeights>& layers,
                 bool tied) {
  RandomFiller fill(seed);
  fill.normal(w.embed);
  RandomFiller::ones(w.final_norm);
  if (!tied) fill.normal(w.lm_head);
  for (const CudaLayerWeights& L : layers) {
    RandomFiller::ones(L.input_norm);
    RandomFiller::ones(L.post_norm);
    for (const TensorView* m : {&L.qkv, &L.qkv_bias, &L.o, &L.o_bias, &L.gate_up, &L.gate_up_bias, &L.down,
                                &L.down_bias})
      if (!m->empty()) fill.normal(*m);
  }
  CUDA_CHECK(cudaDeviceSynchronize());  // the pool goes when `fill` does
}

}  // namespace

CudaWeights::CudaWeights(const ModelConfig& c, const WeightStore* store, uint64_t seed) {
  STEM_CHECK(c.head_dim % 2 == 0 && c.hidden_size > 0 && c.vocab_size > 0, "CUDA backend: bad model shape");
  // Some tied checkpoints still store lm_head.weight; then it is used as stored (as on the CPU).
  const bool tied = c.tie_word_embeddings && !(store && store->has("lm_head.weight"));
  Arena measure;
  place_all(measure, c, tied, *this, layers);
  arena_ = cudabk::DeviceMemory(measure.used, "the model weights");
  Arena arena{arena_.bytes_ptr(), 0};
  place_all(arena, c, tied, *this, layers);

  if (store)
    load_checkpoint(c, *store, *this, layers, tied);
  else
    fill_random(c, seed, *this, layers, tied);
  const std::vector<float> inv = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  STEM_CHECK(static_cast<int64_t>(inv.size()) == c.head_dim / 2, "rope frequencies: ", inv.size(), " for head dim ",
             c.head_dim);
  CUDA_CHECK(cudaMemcpy(inv_freq.data, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));

  step_read_bytes_ = view_bytes(final_norm) + view_bytes(lm_head);
  for (const CudaLayerWeights& L : layers)
    for (const TensorView* v : {&L.input_norm, &L.post_norm, &L.qkv, &L.qkv_bias, &L.o, &L.o_bias, &L.gate_up,
                                &L.gate_up_bias, &L.down, &L.down_bias})
      step_read_bytes_ += view_bytes(*v);
}

}  // namespace stem
