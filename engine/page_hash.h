// The identity of a full KV page in the prefix cache (docs/prefix_caching.md): a 128-bit hash
// chained over the tokens of every page up to and including it, starting from a seed that holds
// everything else that decides the page's K/V (the model and its backend, the kind of attention
// that computed it) and the request's cache_salt. Two pages with the same hash hold the same K/V
// (up to the rounding of the batch shape that computed them). Keyed with a random per-process
// key, so a client cannot craft colliding prompts offline; the cache also compares each page's
// tokens on a hit.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "models/stem_policy.h"

namespace stem {

struct PageHash {
  uint64_t lo = 0, hi = 0;
  bool operator==(const PageHash&) const = default;
};

// What an engine's pages depend on besides their tokens and the attention that computed them: its
// model folder, backend, random weights or not, weight quantization, and the KV cache's dtype
// (an FP8 cache's pages hold E4M3 codes of the values: never shared with a bf16 cache's; "auto" and
// "bf16" keep the same pages). The model identity prefix_seed takes.
std::string model_identity(std::string_view model_dir, std::string_view backend, bool dummy_weights,
                           std::string_view quantization, bool kv_cache_fp8);
// The chain's start. Each field is length-prefixed, so ("ab", "c") and ("a", "bc") differ.
PageHash prefix_seed(std::string_view model_identity, std::string_view kv_kind, std::string_view cache_salt);
// The KV kinds a seed names. Dense attention's K/V: "dense". A Stem prefill whose selection is
// causal (stem_selection_causal): "stem" and every setting that changes the K/V it computes
// (selector, threshold, schedule, budget rate, alpha, lambda, stride, block, sink and window
// blocks, dense layers, position decay; not min_prompt_len, which only decides whether a prompt
// is sparse at all: shorter prompts are dense and use "dense"), doubles written exactly.
inline constexpr std::string_view kDenseKvKind = "dense";
std::string stem_kv_kind(const StemSettings& settings);
// The hash of a page holding `tokens`, whose predecessor page (or the seed) hashes to `parent`.
PageHash chain_page_hash(const PageHash& parent, std::span<const int32_t> tokens);

}  // namespace stem
