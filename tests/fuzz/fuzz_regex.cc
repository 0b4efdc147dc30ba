// The regex compiler (structured/regex.h) on arbitrary input. The first line is the pattern; the
// other bytes steer a walk through its grammar (each picks one of the bytes the matcher accepts
// next). A pattern is compiled or refused with a RegexError, never anything else; a walk that
// ends on a complete match is valid UTF-8, and the same text written as a JSON string is accepted
// by the pattern's JSON-string rule (the `pattern` keyword's path: escapes for '"', '\\' and
// control characters), and refused there when the walk has not reached a complete match.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "structured/regex.h"
#include "tests/fuzz/fuzz_grammar.h"

using namespace stem::structured;

namespace {

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t n = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1Fu) : n == 3 ? (b & 0x0Fu) : (b & 0x07u);
    for (size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    static const uint32_t min_of[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_of[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t eol = input.find('\n');
  const std::string pattern = input.substr(0, eol);
  const std::string steer = eol == std::string::npos ? "" : input.substr(eol + 1);
  Grammar g;
  try {
    g = compile_regex(pattern);
  } catch (const RegexError&) {
    return 0;
  }
  check_regex(pattern);  // what compiles passes the check
  GrammarMatcher m(g);
  const std::string text = stem::fuzz::steered_walk(m, steer, 7);
  stem::fuzz::check_shared_masks(g, text, pattern);
  if (!m.can_end()) {
    // Not a complete match: as a JSON string it must be refused too (when it is whole UTF-8).
    if (!valid_utf8(text)) return 0;
    Grammar js;
    js.set_root(add_json_string_regex(js, pattern));
    GrammarMatcher jm(js);
    const std::string quoted = nlohmann::json(text).dump();
    FUZZ_CHECK(!(jm.advance(quoted) && jm.can_end()));
    return 0;
  }
  FUZZ_CHECK(valid_utf8(text));
  Grammar js;
  js.set_root(add_json_string_regex(js, pattern));
  GrammarMatcher jm(js);
  FUZZ_CHECK(jm.advance(nlohmann::json(text).dump()) && jm.can_end());
  return 0;
}
