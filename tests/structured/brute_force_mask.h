// Shared by the structured tests: a token mask computed the slow way, the oracle of the trie walk
// (TokenMasker).
#pragma once
#include <cstdint>
#include <vector>

#include "structured/grammar.h"
#include "structured/token_mask.h"

namespace stem::structured {

// Trying each token's bytes on a copy of the matcher (and the end-of-sequence ids where it may
// end): what the trie walk must equal.
inline std::vector<uint32_t> brute_force_mask(const TokenVocab& v, const GrammarMatcher& m) {
  std::vector<uint32_t> mask(v.mask_words(), 0);
  for (size_t id = 0; id < v.num_tokens(); ++id) {
    GrammarMatcher copy = m;
    if (!v.bytes(static_cast<int32_t>(id)).empty() && copy.advance(v.bytes(static_cast<int32_t>(id))))
      mask[id >> 5] |= 1u << (id & 31);
  }
  if (m.can_end())
    for (int32_t id : v.eos_ids()) mask[static_cast<size_t>(id) >> 5] |= 1u << (id & 31);
  return mask;
}

}  // namespace stem::structured
