// Shared by the grammar fuzz targets (fuzz_json_schema, fuzz_regex, fuzz_gbnf): a walk through a
// compiled grammar steered by the fuzzer's bytes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "structured/grammar.h"
#include "structured/token_mask.h"
#include "tests/fuzz/fuzz_util.h"

namespace stem::fuzz {

// Each steering byte picks one of the bytes the matcher accepts next (byte b: the (b mod n)-th of
// the n accepted), which must then be accepted; the walk stops where the grammar may end and the
// byte is a multiple of `stop_every`, or where nothing is accepted. Returns the bytes walked; `m`
// is left after them.
inline std::string steered_walk(structured::GrammarMatcher& m, std::string_view steer, int stop_every) {
  std::string text;
  for (unsigned char b : steer) {
    if (m.can_end() && b % stop_every == 0) break;
    std::vector<uint8_t> next;
    structured::GrammarMatcher probe;
    for (int c = 0; c < 256; ++c)
      if (m.advance_into(static_cast<uint8_t>(c), probe)) next.push_back(static_cast<uint8_t>(c));
    if (next.empty()) break;
    const uint8_t c = next[b % next.size()];
    FUZZ_CHECK(m.advance(c));
    text.push_back(static_cast<char>(c));
  }
  return text;
}

// The masks TokenGrammar shares between equivalent states (token_mask.h) equal the unshared trie
// walk's at each prefix of `text` (a walk through `g`), over a small vocabulary: the printable
// ASCII bytes, a few escapes, multi-byte characters and lone UTF-8 bytes, and pieces of 2 to 12
// bytes of `text` and of `source` (the pattern or schema), so that tokens cross the grammar's
// chains and their ends. (Where the unshared walk went past the matcher's bounds on live stacks,
// the masks may differ: token_mask.h's caveat.)
inline void check_shared_masks(const structured::Grammar& g, const std::string& text, std::string_view source) {
  std::set<std::string> tokens;
  for (int c = 0x20; c < 0x7F; ++c) tokens.insert(std::string(1, static_cast<char>(c)));
  for (const char* t : {"\n", "\t", "\\", "\\\"", "\\u00", "\\u001f", "\xC3\xA9", "\xE4\xB8\xAD",
                        "\xF0\x9F\x98\x80", "\xC3", "\xA9", "\xE4\xB8", "\"}", "\",", "\"]"})
    tokens.insert(t);
  for (size_t i = 0; i < text.size() && tokens.size() < 400; i += 3)
    for (size_t len : {2, 5, 12}) tokens.insert(text.substr(i, len));
  for (size_t i = 0; i < source.size() && tokens.size() < 500; i += 2) tokens.insert(std::string(source.substr(i, 4)));
  std::vector<std::string> bytes(tokens.begin(), tokens.end());
  bytes.emplace_back();  // EOS
  const auto eos = static_cast<int32_t>(bytes.size() - 1);
  auto vocab = std::make_shared<const structured::TokenVocab>(std::move(bytes), std::vector<int32_t>{eos},
                                                               static_cast<int64_t>(eos) + 1);
  structured::TokenGrammar shared(g, vocab);
  const structured::TokenGrammar plain(g, vocab, false);
  structured::GrammarMatcher m(g);
  std::vector<uint32_t> spill;
  for (size_t i = 0; i <= std::min<size_t>(text.size(), 100); ++i) {
    const uint32_t* got = shared.mask(m, spill);
    bool dropped = false;  // past the matcher's bounds the masks may differ (token_mask.h)
    const std::vector<uint32_t> want = plain.compute_mask(m, &dropped);
    FUZZ_CHECK(dropped || std::vector<uint32_t>(got, got + vocab->mask_words()) == want);
    if (i < text.size()) FUZZ_CHECK(m.advance(static_cast<uint8_t>(text[i])));
  }
}

}  // namespace stem::fuzz
