#include "engine/page_hash.h"

#include <cstdio>
#include <random>

namespace stem {

namespace {

// MurmurHash3's 64-bit finalizer: a bijection that mixes every input bit into every output bit.
uint64_t fmix64(uint64_t z) {
  z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
  z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ull;
  return z ^ (z >> 33);
}

struct Keys {
  uint64_t lo, hi;
};

const Keys& keys() {
  static const Keys k = [] {
    std::random_device rd;
    auto word = [&] { return (uint64_t{rd()} << 32) ^ rd(); };
    return Keys{word(), word()};
  }();
  return k;
}

// Two lanes with independent keys: each absorbs a word as h = fmix(h ^ (word + key)).
struct Hasher {
  uint64_t lo, hi;
  void add(uint64_t w) {
    lo = fmix64(lo ^ (w + keys().lo));
    hi = fmix64(hi ^ (w + keys().hi) ^ 0x9e3779b97f4a7c15ull);
  }
  void add(std::string_view s) {
    add(static_cast<uint64_t>(s.size()));
    for (size_t i = 0; i < s.size(); i += 8) {
      uint64_t w = 0;
      for (size_t j = i; j < s.size() && j < i + 8; ++j) w |= uint64_t{static_cast<unsigned char>(s[j])} << (8 * (j - i));
      add(w);
    }
  }
};

}  // namespace

std::string model_identity(std::string_view model_dir, std::string_view backend, bool dummy_weights,
                           std::string_view quantization, bool kv_cache_fp8) {
  std::string id = std::string(model_dir) + '\n' + std::string(backend);
  if (dummy_weights) id += "\ndummy";
  if (!quantization.empty()) id += "\n" + std::string(quantization);
  if (kv_cache_fp8) id += "\nkv_cache_dtype=fp8";
  return id;
}

PageHash prefix_seed(std::string_view model_identity, std::string_view kv_kind, std::string_view cache_salt) {
  Hasher h{keys().lo, keys().hi};
  h.add(model_identity);
  h.add(kv_kind);
  h.add(cache_salt);
  return {h.lo, h.hi};
}

std::string stem_kv_kind(const StemSettings& s) {
  char buf[512];
  // %a: a double's exact value, so settings that differ in the last bit name different kinds.
  std::snprintf(buf, sizeof buf,
                "stem selector=%s threshold=%a causal=%d budget_rate=%a alpha=%a lambda=%a stride=%lld block=%lld "
                "sink=%lld window=%lld dense_layers=%lld position_decay=%d",
                stem_selector_name(s.selector), s.threshold, s.causal ? 1 : 0, s.budget_rate, s.alpha, s.lambda,
                static_cast<long long>(s.stride), static_cast<long long>(s.block_size),
                static_cast<long long>(s.sink_blocks), static_cast<long long>(s.window_blocks),
                static_cast<long long>(s.dense_layers), s.position_decay ? 1 : 0);
  return buf;
}

PageHash chain_page_hash(const PageHash& parent, std::span<const int32_t> tokens) {
  Hasher h{parent.lo, parent.hi};
  h.add(static_cast<uint64_t>(tokens.size()));
  for (int32_t t : tokens) h.add(static_cast<uint64_t>(static_cast<uint32_t>(t)));
  return {h.lo, h.hi};
}

}  // namespace stem
