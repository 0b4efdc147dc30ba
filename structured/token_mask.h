// Grammars over a tokenizer's tokens: which token ids may come next (a bitmask the sampler
// applies before it samples), and the token that was chosen.
//
// A token is its byte string; one token may span several JSON lexical units ("},{\"", "\":\"")
// and a UTF-8 character may span several tokens: the grammar works on bytes, so neither matters.
// The mask for a grammar state is found by walking the vocabulary's byte trie with the matcher
// (a subtree is cut at the first byte the grammar refuses), and cached per state: a schema has
// few distinct states (inside a string, the same state recurs every token), so most steps are a
// cache hit. EOS tokens are allowed exactly when the value is complete.
//
// Masks are shared between states that no token can tell apart (issue 19: a string's maxLength
// n, or a regex's {m,n}, unrolls to a chain of n states, one per character position, and a walk
// per state of the chain would cost n trie walks). TokenGrammar partitions the grammar's states
// by bounded equivalence: for each r of a ladder up to K (the vocabulary's longest token, in
// bytes), two states are r-equivalent when every byte string of at most r bytes leads them to
// r'-equivalent states (r' < r) with the same accept flag (Moore's refinement, r rounds; a state
// with call edges is equivalent only to itself). Since a token has at most K bytes:
//  - matchers whose stacks differ only by K-equivalent top states have the same mask: the cache is
//    keyed by (stack below the top, class of the top) sets, so the positions of a long chain that
//    are K or more characters from its bounds share one mask;
//  - matchers that agree up to r-equivalence allow the same tokens of at most r bytes: a state
//    near a bound takes those from a mask already computed for an r-equivalent state and walks
//    only the trie's subtrees that hold tokens longer than r (few: a vocabulary's long tokens are
//    rare), so a chain costs about one full walk, not one per position.
// Exact, with one caveat: past its bounds on live stacks (grammar.cc: kMaxStacks,
// kMaxExpandSteps, reached only by highly ambiguous grammars) the matcher drops derivations, and
// two equivalent states could drop different ones. A matcher or a walk that dropped any makes the
// grammar stop sharing (exact keys, full walks, from then on); a state served a shared mask
// before that, whose own walk would have dropped where the other's did not, is the case left.
#pragma once
#include <atomic>
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
    uint32_t max_len = 0;                     // the longest token's byte count in this subtree
  };
  struct Child {
    uint8_t byte;
    uint32_t node;
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<Child>& children() const { return children_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // The ids with bytes, longest first; the first longer_than(r) of them have more than r bytes.
  const std::vector<int32_t>& by_length() const { return by_length_; }
  size_t longer_than(size_t r) const;

 private:
  uint32_t build(const std::vector<int32_t>& sorted, size_t begin, size_t end, size_t depth);

  std::vector<std::string> bytes_;
  std::vector<int32_t> eos_;
  int64_t mask_size_;
  size_t max_bytes_ = 0;
  std::vector<Node> nodes_;  // nodes_[0]: the root
  std::vector<Child> children_;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> by_length_;
};

// What TokenGrammar::mask did (the benchmark's and the tests' view of the sharing).
struct MaskStats {
  size_t lookups = 0;        // mask() calls
  size_t full_walks = 0;     // masks computed by walking the whole trie
  size_t partial_walks = 0;  // masks completed from an r-equivalent state's by walking long tokens only
  size_t walked_nodes = 0;   // trie nodes the walks reached (both kinds)
  size_t dropped_walks = 0;  // walks that went past the matcher's bounds (grammar.cc): sharing stops
};

// A grammar for one vocabulary, shared by the sequences of a request (and only used on the
// engine's thread; the cache is locked all the same).
class TokenGrammar {
 public:
  // share_masks false: one mask per exact matcher state, each a full walk (the behaviour before
  // the sharing; for the tests' and the benchmark's comparisons).
  TokenGrammar(Grammar grammar, std::shared_ptr<const TokenVocab> vocab, bool share_masks = true);
  const Grammar& grammar() const { return grammar_; }
  const TokenVocab& vocab() const { return *vocab_; }
  // The allowed ids after the bytes that led to `m`: vocab().mask_words() words, bit i of word
  // i/32 for id i. Valid while this TokenGrammar lives, or, when the cache is full and the mask
  // is written to `spill`, while spill is unchanged.
  const uint32_t* mask(const GrammarMatcher& m, std::vector<uint32_t>& spill);
  // The mask computed without the cache (for tests and the benchmark); *dropped: whether the walk
  // went past the matcher's bounds (grammar.cc) somewhere.
  std::vector<uint32_t> compute_mask(const GrammarMatcher& m, bool* dropped = nullptr) const;
  size_t cached_states() const;
  MaskStats stats() const;
  // The ladder of bounds r (ascending, the last one K) whose state classes are kept; empty when
  // masks are not shared (share_masks false, or a grammar too large to partition: see .cc).
  const std::vector<uint32_t>& share_levels() const { return levels_; }
  // The mask-sharing key of `m` at level index `li` of share_levels(): equal keys, equal masks
  // for tokens of at most share_levels()[li] bytes.
  std::string share_key(const GrammarMatcher& m, size_t li) const;
  // The mask of `m` completed from `base`, the mask of a state whose share_key at level `li` is
  // m's: the tokens of at most r bytes from base, the longer ones by a walk (public for tests).
  std::vector<uint32_t> complete_mask(const GrammarMatcher& m, const std::vector<uint32_t>& base, size_t li) const;

 private:
  // The trie walk from `m`; only subtrees with tokens longer than `shorter` bytes, and only their
  // tokens longer than that (0: all). Returns the trie nodes reached.
  size_t walk(const GrammarMatcher& m, size_t shorter, std::vector<uint32_t>& mask, bool& dropped) const;
  std::vector<uint32_t> complete(const GrammarMatcher& m, const std::vector<uint32_t>& base, size_t r,
                                 size_t& reached, bool& dropped) const;

  Grammar grammar_;
  std::shared_ptr<const TokenVocab> vocab_;
  std::vector<uint32_t> levels_;
  std::vector<std::vector<int32_t>> classes_;  // per level: each state's class
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<std::vector<uint32_t>>> cache_;
  // Per level but the last (whose keys are cache_'s): a computed mask of a state with that key.
  std::vector<std::unordered_map<std::string, const std::vector<uint32_t>*>> level_masks_;
  MaskStats stats_;
  std::atomic<bool> unshared_{false};  // a walk went past the matcher's bounds: exact keys from then on
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

namespace detail {
// The classes of the grammar's states after r rounds of the refinement, for each r of `levels`
// (ascending, not empty), or nothing when the refinement would cost too much (TokenGrammar's
// partition; for the tests).
std::vector<std::vector<int32_t>> bounded_classes(const Grammar& g, const std::vector<uint32_t>& levels);
}  // namespace detail

inline bool mask_allows(const uint32_t* mask, int32_t id) { return (mask[id >> 5] >> (id & 31)) & 1u; }

// Sets logits[i] to -inf for each id i < vocab that `mask` leaves out (mask null: no change).
void apply_mask(float* logits, int64_t vocab, const uint32_t* mask);

}  // namespace stem::structured
