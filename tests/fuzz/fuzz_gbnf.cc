// The GBNF compiler (structured/ebnf.h) on arbitrary input. The text up to the first NUL byte is
// the grammar; the bytes after it steer a walk through the compiled grammar (each picks one of the
// bytes the matcher accepts next). A grammar is compiled or refused with an EbnfError, never
// anything else, and left recursion never reaches the matcher; a walk that ends where the root is
// complete is accepted again by a fresh matcher fed the whole text at once.
#include <string>
#include <vector>

#include "structured/ebnf.h"
#include "tests/fuzz/fuzz_grammar.h"

using namespace stem::structured;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find('\0');
  const std::string text = input.substr(0, cut);
  const std::string steer = cut == std::string::npos ? "" : input.substr(cut + 1);
  Grammar g;
  try {
    g = compile_gbnf(text);
  } catch (const EbnfError&) {
    return 0;
  }
  GrammarMatcher m(g);
  const std::string out = stem::fuzz::steered_walk(m, steer, 7);
  if (!m.can_end()) return 0;
  GrammarMatcher again(g);
  FUZZ_CHECK(again.advance(out) && again.can_end());
  return 0;
}
