// Shared by the grammar fuzz targets (fuzz_json_schema, fuzz_regex, fuzz_gbnf): a walk through a
// compiled grammar steered by the fuzzer's bytes.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "structured/grammar.h"
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

}  // namespace stem::fuzz
