// Helpers for the whole-model GPU tests: random Llama-family models written as real model folders
// (config.json + model.safetensors), so the CPU and CUDA backends load the very same weights
// through the real loader; and a tiny paged-sequence bookkeeper that builds ForwardBatches the way
// a continuous-batching scheduler would (several sequences, chunked prefill, decode rows mixed in).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "models/backend.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/test_paths.h"

namespace stem::gpu_model_test {

// The tiny fixtures' folder; STEM_FIXTURES overrides the path compiled in (binaries built on one
// machine and run on another).
inline std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("STEM_FIXTURES")) return env;
  return test::fixtures_dir_path();
}

// The source tree (bench/configs/); STEM_SOURCE overrides the path compiled in.
inline std::filesystem::path source_dir() {
  if (const char* env = std::getenv("STEM_SOURCE")) return env;
  return test::source_dir_path();
}

struct NamedTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;  // already bf16-representable: stored as BF16
};

// A safetensors file of bf16 tensors (header: 8-byte little-endian length, JSON, data).
inline void write_safetensors(const std::filesystem::path& path, const std::map<std::string, NamedTensor>& tensors) {
  nlohmann::json header = {{"__metadata__", {{"format", "pt"}}}};
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const size_t bytes = t.values.size() * 2;
    header[name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : tensors) {
    const std::vector<uint16_t> raw = gpu_test::to_bf16(t.values);
    out.write(reinterpret_cast<const char*>(raw.data()), static_cast<std::streamsize>(raw.size() * 2));
  }
}

// Writes DIR/config.json and DIR/model.safetensors for `config` (a HF config.json object) with
// random weights scaled as the fixture generator does: unit-scale activations, norm gains near 1,
// nonzero biases, logits a few units wide. Every value is bf16-representable, so the CPU backend
// (f32) and the CUDA backend (bf16) start from identical weights; only activation roundings differ.
inline ModelConfig write_random_model(const std::filesystem::path& dir, const nlohmann::json& config, uint64_t seed) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  const ModelConfig c = load_model_config(dir);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::map<std::string, NamedTensor> w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset = 0.f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = offset + scale * normal(rng);
    w[name] = {shape, gpu_test::round_to_bf16(std::move(v))};
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  const float h_scale = 1.f / std::sqrt(static_cast<float>(H));
  add("model.embed_tokens.weight", {c.vocab_size, H}, 1.f);
  add("model.norm.weight", {H}, 0.1f, 1.f);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H}, 2.f * h_scale);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, 0.1f, 1.f);
    add(p + "post_attention_layernorm.weight", {H}, 0.1f, 1.f);
    add(p + "self_attn.q_proj.weight", {Q, H}, h_scale);
    add(p + "self_attn.k_proj.weight", {KV, H}, h_scale);
    add(p + "self_attn.v_proj.weight", {KV, H}, h_scale);
    add(p + "self_attn.o_proj.weight", {H, Q}, 1.f / std::sqrt(static_cast<float>(Q)));
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {Q}, 0.5f);
      add(p + "self_attn.k_proj.bias", {KV}, 0.5f);
      add(p + "self_attn.v_proj.bias", {KV}, 0.5f);
    }
    if (c.o_proj_bias) add(p + "self_attn.o_proj.bias", {H}, 0.5f);
    add(p + "mlp.gate_proj.weight", {I, H}, h_scale);
    add(p + "mlp.up_proj.weight", {I, H}, h_scale);
    add(p + "mlp.down_proj.weight", {H, I}, 1.f / std::sqrt(static_cast<float>(I)));
    if (c.mlp_bias) {
      add(p + "mlp.gate_proj.bias", {I}, 0.5f);
      add(p + "mlp.up_proj.bias", {I}, 0.5f);
      add(p + "mlp.down_proj.bias", {H}, 0.5f);
    }
  }
  write_safetensors(dir / "model.safetensors", w);
  return c;
}

// A Llama config.json object with the given shape; callers add the variant's own fields.
inline nlohmann::json llama_config(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t layers,
                                   int64_t vocab = 512, int64_t intermediate = 0) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", hidden},
          {"intermediate_size", intermediate ? intermediate : 3 * hidden},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"head_dim", head_dim},
          {"vocab_size", vocab},
          {"max_position_embeddings", 4096},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

// Sequences in a paged KV pool, as an engine's scheduler keeps them: each owns pages handed out
// from a shuffled free list (so page tables are not contiguous), and a step is a list of
// (sequence, new tokens) pairs.
class PagedSequences {
 public:
  PagedSequences(int64_t num_pages, int32_t page_size, uint64_t seed) : page_size_(page_size), rng_(seed) {
    for (int32_t p = 0; p < num_pages; ++p) free_.push_back(p);
    std::shuffle(free_.begin(), free_.end(), rng_);
  }

  int add() {
    seqs_.push_back({});
    return static_cast<int>(seqs_.size()) - 1;
  }
  int64_t length(int s) const { return static_cast<int64_t>(seqs_[s].tokens.size()); }

  struct Part {
    int seq;
    std::vector<int32_t> tokens;  // this step's new tokens of the sequence
  };
  // The step's batch; logit rows: every row when all_rows, else the last row of each sequence.
  ForwardBatch step(const std::vector<Part>& parts, bool all_rows = false) {
    ForwardBatch b;
    b.query_start.push_back(0);
    int32_t max_pages = 1;
    for (const Part& part : parts) {
      Seq& s = seqs_[part.seq];
      const int64_t start = static_cast<int64_t>(s.tokens.size());
      const int64_t end = start + static_cast<int64_t>(part.tokens.size());
      while (static_cast<int64_t>(s.pages.size()) * page_size_ < end) {
        STEM_CHECK(!free_.empty(), "test KV pool is too small");
        s.pages.push_back(free_.back());
        free_.pop_back();
      }
      for (int64_t i = start; i < end; ++i) {
        b.tokens.push_back(part.tokens[i - start]);
        b.positions.push_back(static_cast<int32_t>(i));
        b.slots.push_back(s.pages[i / page_size_] * page_size_ + static_cast<int32_t>(i % page_size_));
        if (all_rows) b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
      }
      if (!all_rows) b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
      b.query_start.push_back(static_cast<int32_t>(b.tokens.size()));
      b.kv_lens.push_back(static_cast<int32_t>(end));
      max_pages = std::max(max_pages, static_cast<int32_t>(s.pages.size()));
      s.tokens.insert(s.tokens.end(), part.tokens.begin(), part.tokens.end());
    }
    b.max_pages = max_pages;
    b.page_table.assign(parts.size() * static_cast<size_t>(max_pages), -1);  // padding is never read
    for (size_t i = 0; i < parts.size(); ++i) {
      const Seq& s = seqs_[parts[i].seq];
      std::copy(s.pages.begin(), s.pages.end(), b.page_table.begin() + static_cast<int64_t>(i) * max_pages);
    }
    return b;
  }

  void release(int s) {
    free_.insert(free_.end(), seqs_[s].pages.begin(), seqs_[s].pages.end());
    seqs_[s].pages.clear();
  }

 private:
  struct Seq {
    std::vector<int32_t> tokens, pages;
  };
  int32_t page_size_;
  std::mt19937_64 rng_;
  std::vector<int32_t> free_;
  std::vector<Seq> seqs_;
};

inline std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(3 + rng() % static_cast<uint64_t>(vocab - 3));
  return t;
}

inline int32_t argmax_row(const Tensor& logits, int64_t row) {
  const int64_t V = logits.shape()[1];
  const float* p = logits.ptr<float>() + row * V;
  return static_cast<int32_t>(std::max_element(p, p + V) - p);
}

// ‖a − b‖ / ‖b‖ over rows [0, rows) of two [rows, V] logit tensors.
inline double logits_error(const Tensor& out, const Tensor& ref) {
  STEM_CHECK(out.shape() == ref.shape(), "logits shapes differ");
  const std::vector<float> a(out.ptr<float>(), out.ptr<float>() + out.numel());
  const std::vector<float> b(ref.ptr<float>(), ref.ptr<float>() + ref.numel());
  return gpu_test::rel_error(a, b);
}

}  // namespace stem::gpu_model_test
