// Added tokens (special or not) found in the text before pre-tokenization: the rules of the
// `tokenizers` AddedVocabulary (leftmost-longest match; single_word, lstrip, rstrip, normalized).
#include <algorithm>

#include "text/tokenizer_hf.h"

namespace stem::tok {

void AddedVocabulary::Trie::add(std::string_view s, int32_t token) {
  if (nodes.empty()) nodes.emplace_back();
  first[static_cast<unsigned char>(s[0])] = true;
  int32_t n = 0;
  for (unsigned char c : s) {
    auto& next = nodes[n].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it != next.end() && it->first == c) {
      n = it->second;
    } else {
      int32_t child = static_cast<int32_t>(nodes.size());
      next.insert(it, {c, child});
      nodes.emplace_back();  // invalidates `next`, not needed any more
      n = child;
    }
  }
  nodes[n].token = token;  // a later token with the same content wins, as in a map
}

int32_t AddedVocabulary::Trie::longest(std::string_view text, size_t pos, size_t& len) const {
  int32_t best = -1;
  int32_t n = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    const auto& next = nodes[n].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it == next.end() || it->first != c) break;
    n = it->second;
    if (nodes[n].token >= 0) {
      best = nodes[n].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

void AddedVocabulary::build(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_.clear();
  for (auto& t : tokens) {
    if (t.content.empty()) continue;  // ignored, as the tokenizers package does
    t.decode_form = t.content;
    if (t.normalized && normalizer) normalizer->normalize(t.decode_form);
    tokens_.push_back(std::move(t));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_[t.id] = i;
    by_content_[t.content] = t.id;
    if (t.special) special_contents_.insert(t.content);
    // Normalized tokens are looked for in normalized text, in their normalized form.
    if (t.normalized) {
      if (!t.decode_form.empty()) norm_.add(t.decode_form, static_cast<int32_t>(i));
    } else {
      raw_.add(t.content, static_cast<int32_t>(i));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::by_content(std::string_view content) const {
  auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

namespace {
uint32_t last_code_point(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return next_code_point(s, i);
}
// Start of the run of white space that ends `s` (s.size() when there is none).
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    size_t j = i;
    if (!is_white_space(next_code_point(s, j))) break;
    end = i;
  }
  return end;
}
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_white_space(next_code_point(s, j))) break;
    i = j;
  }
  return i;
}
}  // namespace

void AddedVocabulary::split_one(const Piece& piece, const Trie& trie, Pieces& out) const {
  std::string_view text = piece.text;
  size_t start_offset = 0;
  size_t pos = 0;
  auto push_text = [&](size_t s, size_t e) {
    if (e > s) out.push_back({std::string(text.substr(s, e - s)), -1, piece.at_origin && s == 0});
  };
  while (pos < text.size()) {
    if (!trie.first[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t len = 0;
    int32_t idx = trie.longest(text, pos, len);
    if (idx < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the search goes on after the match even when the match is discarded
    const AddedToken& tok = tokens_[idx];
    if (tok.single_word) {
      bool start_space = start == 0 || !is_word_char(last_code_point(text.substr(0, start)));
      size_t k = stop;
      bool stop_space = stop == text.size() || !is_word_char(next_code_point(text, k));
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
    if (tok.rstrip) stop += leading_space_len(text.substr(stop));
    push_text(start_offset, start);
    out.push_back({std::string(text.substr(start, stop - start)), tok.id, false});
    start_offset = stop;
  }
  push_text(start_offset, text.size());
}

void AddedVocabulary::split(Pieces& pieces, bool normalized) const {
  const Trie& trie = normalized ? norm_ : raw_;
  if (trie.nodes.empty()) return;
  Pieces out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) {
    if (p.token >= 0) {
      out.push_back(p);
    } else {
      split_one(p, trie, out);
    }
  }
  pieces = std::move(out);
}

}  // namespace stem::tok
