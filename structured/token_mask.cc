#include "structured/token_mask.h"

#include <algorithm>
#include <functional>
#include <limits>

#include "text/tokenizer.h"
#include "text/tokenizer_hf.h"
#include "text/tokenizer_text.h"

namespace stem::structured {

namespace {

constexpr size_t kMaxCachedStates = 2048;  // masks of 6 KB for a 49K vocabulary: 12 MB at most

// "<0x0A>" -> 0x0A, else -1.
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

void set_bit(std::vector<uint32_t>& mask, int64_t id) { mask[static_cast<size_t>(id >> 5)] |= 1u << (id & 31); }

}  // namespace

TokenVocab::TokenVocab(std::vector<std::string> bytes, std::vector<int32_t> eos_ids, int64_t mask_size)
    : bytes_(std::move(bytes)), eos_(std::move(eos_ids)), mask_size_(mask_size) {
  if (bytes_.size() > static_cast<size_t>(mask_size_)) bytes_.resize(static_cast<size_t>(mask_size_));
  std::erase_if(eos_, [&](int32_t id) { return id < 0 || id >= mask_size_; });
  std::vector<int32_t> sorted;
  for (size_t id = 0; id < bytes_.size(); ++id)
    if (!bytes_[id].empty()) {
      sorted.push_back(static_cast<int32_t>(id));
      max_bytes_ = std::max(max_bytes_, bytes_[id].size());
    }
  std::sort(sorted.begin(), sorted.end(), [&](int32_t a, int32_t b) { return bytes_[static_cast<size_t>(a)] < bytes_[static_cast<size_t>(b)]; });
  build(sorted, 0, sorted.size(), 0);
}

uint32_t TokenVocab::build(const std::vector<int32_t>& sorted, size_t begin, size_t end, size_t depth) {
  const auto idx = static_cast<uint32_t>(nodes_.size());
  nodes_.emplace_back();
  size_t i = begin;
  nodes_[idx].token_begin = static_cast<uint32_t>(tokens_.size());
  while (i < end && bytes(sorted[i]).size() == depth) tokens_.push_back(sorted[i++]);
  nodes_[idx].token_end = static_cast<uint32_t>(tokens_.size());
  std::vector<std::pair<size_t, size_t>> groups;
  while (i < end) {
    const char b = bytes(sorted[i])[depth];
    size_t j = i;
    while (j < end && bytes(sorted[j])[depth] == b) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  const auto first = static_cast<uint32_t>(children_.size());
  children_.resize(children_.size() + groups.size());
  nodes_[idx].child_begin = first;
  nodes_[idx].child_end = first + static_cast<uint32_t>(groups.size());
  for (size_t k = 0; k < groups.size(); ++k) {
    const uint8_t b = static_cast<uint8_t>(bytes(sorted[groups[k].first])[depth]);
    const uint32_t child = build(sorted, groups[k].first, groups[k].second, depth + 1);
    children_[first + k] = {b, child};
  }
  return idx;
}

std::shared_ptr<const TokenVocab> TokenVocab::from_tokenizer(const Tokenizer& tok, int64_t mask_size) {
  // A byte-level vocabulary spells the space byte as "Ġ"; the others spell it as "▁".
  const bool byte_level = tok.kind() != "sentencepiece" && tok.token_to_id("\xC4\xA0").has_value();
  std::vector<std::string> bytes(static_cast<size_t>(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_special(id)) continue;
    const std::string t = tok.id_to_token(id);
    std::string& out = bytes[static_cast<size_t>(id)];
    if (const int b = byte_token(t); b >= 0) {
      out.assign(1, static_cast<char>(b));
      continue;
    }
    for (size_t i = 0; i < t.size();) {
      const size_t at = i;
      const uint32_t cp = tok::next_code_point(t, i);
      if (byte_level) {
        const int b = tok::byte_of_char(cp);
        if (b < 0) {  // not a byte-level token (an added token written as text): its own UTF-8
          out = t;
          break;
        }
        out.push_back(static_cast<char>(b));
      } else if (cp == 0x2581) {
        out.push_back(' ');
      } else {
        out.append(t, at, i - at);
      }
    }
  }
  return std::make_shared<TokenVocab>(std::move(bytes), tok.eos_ids(), mask_size);
}

void apply_mask(float* logits, int64_t vocab, const uint32_t* mask) {
  if (!mask) return;
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  for (int64_t w = 0; w * 32 < vocab; ++w) {
    const uint32_t bits = mask[w];
    if (bits == ~0u) continue;
    const int64_t end = std::min<int64_t>(32, vocab - w * 32);
    for (int64_t j = 0; j < end; ++j)
      if (!((bits >> j) & 1u)) logits[w * 32 + j] = kMinusInf;
  }
}

TokenGrammar::TokenGrammar(Grammar grammar, std::shared_ptr<const TokenVocab> vocab)
    : grammar_(std::move(grammar)), vocab_(std::move(vocab)) {}

std::vector<uint32_t> TokenGrammar::compute_mask(const GrammarMatcher& m) const {
  const TokenVocab& v = *vocab_;
  std::vector<uint32_t> mask(v.mask_words(), 0);
  const auto& nodes = v.nodes();
  const auto& children = v.children();
  const auto& tokens = v.tokens();
  std::vector<GrammarMatcher> at(v.max_token_bytes() + 1);
  bool any = false;
  // Depth-first over the trie; at[d] is the matcher after the d bytes leading to the node.
  std::function<void(uint32_t, const GrammarMatcher&, size_t)> walk = [&](uint32_t node, const GrammarMatcher& cur,
                                                                          size_t depth) {
    const TokenVocab::Node& n = nodes[node];
    for (uint32_t c = n.child_begin; c < n.child_end; ++c) {
      GrammarMatcher& next = at[depth + 1];
      if (!cur.advance_into(children[c].byte, next)) continue;
      const TokenVocab::Node& child = nodes[children[c].node];
      for (uint32_t t = child.token_begin; t < child.token_end; ++t) set_bit(mask, tokens[t]);
      any |= child.token_end > child.token_begin;
      walk(children[c].node, next, depth + 1);
    }
  };
  if (!nodes.empty()) walk(0, m, 0);
  // EOS when the value is complete (or, defensively, when no token could go on).
  if (m.can_end() || !any)
    for (int32_t id : v.eos_ids()) set_bit(mask, id);
  return mask;
}

const uint32_t* TokenGrammar::mask(const GrammarMatcher& m, std::vector<uint32_t>& spill) {
  std::string key = m.key();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second->data();
  }
  auto mask = std::make_unique<std::vector<uint32_t>>(compute_mask(m));
  std::lock_guard<std::mutex> lock(mu_);
  // Masks handed out must stay valid while their sequences run: a full cache stops growing
  // rather than dropping entries (the state is then recomputed each time it recurs).
  if (cache_.size() >= kMaxCachedStates) {
    spill = std::move(*mask);
    return spill.data();
  }
  return cache_.emplace(std::move(key), std::move(mask)).first->second->data();
}

size_t TokenGrammar::cached_states() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

TokenMatcher::TokenMatcher(std::shared_ptr<TokenGrammar> grammar)
    : grammar_(std::move(grammar)), matcher_(grammar_->grammar()) {}

const uint32_t* TokenMatcher::mask() {
  if (!finished_) return grammar_->mask(matcher_, spill_);
  if (eos_only_.empty()) {
    eos_only_.assign(grammar_->vocab().mask_words(), 0);
    for (int32_t id : grammar_->vocab().eos_ids()) set_bit(eos_only_, id);
  }
  return eos_only_.data();
}

bool TokenMatcher::accept(int32_t token) {
  const TokenVocab& v = grammar_->vocab();
  const bool eos = std::find(v.eos_ids().begin(), v.eos_ids().end(), token) != v.eos_ids().end();
  if (finished_) return eos;
  if (eos) {
    if (!matcher_.can_end()) return false;
    finished_ = true;
    return true;
  }
  if (token < 0 || static_cast<size_t>(token) >= v.num_tokens() || v.bytes(token).empty()) return false;
  return matcher_.advance(v.bytes(token));
}

}  // namespace stem::structured
