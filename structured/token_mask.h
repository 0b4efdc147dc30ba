// Grammars over a tokenizer's tokens: which token ids may come next (a bitmask the sampler
// applies before it samples), and the token that was chosen.
//
// A token is its byte string; one token may span several JSON lexical units ("},{\"", "\":\"")
// and a UTF-8 character may span several tokens: the grammar works on bytes, so neither matters.
// The mask for a grammar state is found by walking the vocabulary's byte trie with the matcher
// (a subtree is cut at the first byte the grammar refuses), and cached per state: a schema has
// few distinct states (inside a string, the same state recurs every token), so most steps are a
// cache hit. EOS tokens are allowed exactly when the value is complete.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "structured/grammar.h"

namespace stem {
class Tokenizer;
}

namespace stem::structured {

// The vocabulary as byte strings in a trie. Ids with no bytes (special tokens, tokens whose bytes
// are unknown) are never allowed, except the EOS ids at the end.
class TokenVocab {
 public:
  // bytes[id] for id < bytes.size(); masks cover mask_size ids (the model's vocabulary, which
  // may be larger than the tokenizer's).
  TokenVocab(std::vector<std::string> bytes, std::vector<int32_t> eos_ids, int64_t mask_size);
  // The bytes of each token of a tokenizer.json (ByteLevel or Metaspace/ByteFallback) or
  // SentencePiece tokenizer.
  static std::shared_ptr<const TokenVocab> from_tokenizer(const Tokenizer& tok, int64_t mask_size);

  int64_t mask_size() const { return mask_size_; }
  size_t mask_words() const { return static_cast<size_t>((mask_size_ + 31) / 32); }
  const std::vector<int32_t>& eos_ids() const { return eos_; }
  const std::string& bytes(int32_t id) const { return bytes_[static_cast<size_t>(id)]; }
  size_t num_tokens() const { return bytes_.size(); }
  size_t max_token_bytes() const { return max_bytes_; }

  struct Node {
    uint32_t child_begin = 0, child_end = 0;  // into children()
    uint32_t token_begin = 0, token_end = 0;  // into tokens(): ids whose bytes end here
  };
  struct Child {
    uint8_t byte;
    uint32_t node;
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<Child>& children() const { return children_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  uint32_t build(const std::vector<int32_t>& sorted, size_t begin, size_t end, size_t depth);

  std::vector<std::string> bytes_;
  std::vector<int32_t> eos_;
  int64_t mask_size_;
  size_t max_bytes_ = 0;
  std::vector<Node> nodes_;  // nodes_[0]: the root
  std::vector<Child> children_;
  std::vector<int32_t> tokens_;
};

// A grammar for one vocabulary, shared by the sequences of a request (and only used on the
// engine's thread; the cache is locked all the same).
class TokenGrammar {
 public:
  TokenGrammar(Grammar grammar, std::shared_ptr<const TokenVocab> vocab);
  const Grammar& grammar() const { return grammar_; }
  const TokenVocab& vocab() const { return *vocab_; }
  // The allowed ids after the bytes that led to `m`: vocab().mask_words() words, bit i of word
  // i/32 for id i. Valid while this TokenGrammar lives, or, when the cache is full and the mask
  // is written to `spill`, while spill is unchanged.
  const uint32_t* mask(const GrammarMatcher& m, std::vector<uint32_t>& spill);
  // The mask computed without the cache (for tests and the benchmark).
  std::vector<uint32_t> compute_mask(const GrammarMatcher& m) const;
  size_t cached_states() const;

 private:
  Grammar grammar_;
  std::shared_ptr<const TokenVocab> vocab_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<std::vector<uint32_t>>> cache_;
};

// One sequence's place in its grammar.
class TokenMatcher {
 public:
  explicit TokenMatcher(std::shared_ptr<TokenGrammar> grammar);
  // The ids allowed next (TokenGrammar::mask).
  const uint32_t* mask();
  // Takes the chosen token; false (and no change) when the grammar does not allow it. After an
  // EOS id the matcher is finished and allows only EOS.
  bool accept(int32_t token);
  bool finished() const { return finished_; }
  bool can_end() const { return matcher_.can_end(); }
  const GrammarMatcher& matcher() const { return matcher_; }

 private:
  std::shared_ptr<TokenGrammar> grammar_;
  GrammarMatcher matcher_;
  bool finished_ = false;
  std::vector<uint32_t> eos_only_, spill_;
};

inline bool mask_allows(const uint32_t* mask, int32_t id) { return (mask[id >> 5] >> (id & 31)) & 1u; }

// Sets logits[i] to -inf for each id i < vocab that `mask` leaves out (mask null: no change).
void apply_mask(float* logits, int64_t vocab, const uint32_t* mask);

}  // namespace stem::structured
