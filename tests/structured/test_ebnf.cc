// GBNF grammars compiled to grammars (structured/ebnf.h): which texts they accept and refuse,
// recursion, the constructs refused by name, and token masks over a tokenizer.
#include <map>
#include <random>

#include "structured/ebnf.h"
#include "structured/token_mask.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace stem::structured {
namespace {

bool accepts(const Grammar& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.advance(text) && m.can_end();
}

void check(const std::string& grammar, const std::vector<std::string>& good, const std::vector<std::string>& bad) {
  const Grammar g = compile_gbnf(grammar);
  for (const std::string& t : good) {
    INFO(grammar << "\nshould accept \"" << t << "\"");
    CHECK(accepts(g, t));
  }
  for (const std::string& t : bad) {
    INFO(grammar << "\nshould refuse \"" << t << "\"");
    CHECK_FALSE(accepts(g, t));
  }
}

TEST_CASE("gbnf: strings, classes, rules, grouping, alternation and repetition") {
  check(R"g(root ::= "yes" | "no")g", {"yes", "no"}, {"", "ye", "yesno"});
  check("root ::= greeting \" \" name (\"!\" | \".\")?   # a comment\n"
        "name ::= [A-Z] [a-z]*\n"
        "greeting ::= \"Hello\" | \"Hi\"\n",
        {"Hello Ada", "Hi Bob!", "Hi X."}, {"Hello ada", "Hey Ada", "Hi Bob!!", "HiBob"});
  check(R"g(root ::= [^"\\\n]+ "\n" [\x41-\x43]{2,3} "\u00e9" [a-c\-]?)g",
        {"ok\nAB\xC3\xA9", "a b\nCCC\xC3\xA9-", "x\nABC\xC3\xA9" "c"}, {"\"\nAB\xC3\xA9", "ok\nA\xC3\xA9", "ok\nABCA\xC3\xA9"});
  check(R"g(root ::= . . "\t" [\U0001F600-\U0001F64F])g", {"ab\t\xF0\x9F\x98\x80", "\xC3\xA9\n\t\xF0\x9F\x98\x81"},
        {"a\t\xF0\x9F\x98\x80", "ab\t\xF0\x9F\x99\x90"});
  check("root ::=\n  item\n  (\",\" item)*\nitem ::= [0-9]+ | \"x\"{3}", {"1", "12,x" "xx,3"}, {"", "1,", "xx"});
  check(R"g(root ::= "a"{2} "b"{1,} "c"{0,2})g", {"aab", "aabbbcc"}, {"ab", "aa", "aabccc"});
  check(R"g(root ::= ("ab" | "a") "b"?)g", {"a", "ab", "abb"}, {"b", "abbb"});
  check("root ::= x\nx ::= \"\"", {""}, {"a"});
}

TEST_CASE("gbnf: recursive rules (a pushdown language) and a JSON grammar") {
  check(R"g(root ::= "(" root ")" | "")g", {"", "()", "((()))"}, {"(", "())", ")("});
  const std::string json = R"g(
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ( string ":" value ("," string ":" value)* )? "}"
array  ::= "[" ( value ("," value)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
)g";
  check(json, {R"g({})g", R"g({"a":[1,-2.5e3,{"b":null}],"c":"x\"\u00e9"})g", R"g({"k":[[],[true,false]]})g"},
        {R"g([])g", R"g({"a":})g", R"g({"a":01})g", R"g({"a":"\x"})g", R"g({"a":1,})g"});
}

std::string refused(const std::string& grammar) {
  try {
    compile_gbnf(grammar);
  } catch (const EbnfError& e) {
    return e.construct();
  }
  return "(compiled)";
}

TEST_CASE("gbnf: what is refused, by name and place") {
  CHECK(refused(R"g(start ::= "a")g") == "no rule 'root'");
  CHECK(refused(R"g(root ::= other)g") == "an undefined rule");
  CHECK(refused("root ::= \"a\"\nroot ::= \"b\"") == "a rule defined twice");
  CHECK(refused(R"g(root ::= root "a" | "b")g") == "left recursion");
  CHECK(refused("root ::= x \"a\"\nx ::= y?\ny ::= root") == "left recursion");
  CHECK(refused(R"g(root ::= "a)g") == "an unterminated string");
  CHECK(refused(R"g(root ::= [a-)g") == "an unterminated class '['");
  CHECK(refused(R"g(root ::= [z-a])g") == "a reversed range in a class");
  CHECK(refused(R"g(root ::= ("a")g") == "an unclosed group '('");
  CHECK(refused(R"g(root ::= 'a')g") == "a single-quoted string");
  CHECK(refused(R"g(root ::= "a"{3,1})g") == "a repetition {m,n} with n < m");
  CHECK(refused(R"g(root ::= "a"{1001})g") == "a repetition count above 1000");
  CHECK(refused(R"g(root ::= "a"{x})g") == "a malformed repetition '{'");
  CHECK(refused(R"g(root ::= "\q")g") == "the escape '\\q'");
  CHECK(refused(R"g(root ::= "\uD800")g") == "an escape that is not a character");
  CHECK(refused(R"g(root = "a")g") == "a rule without '::='");
  CHECK(refused(R"g(::= "a")g") == "a rule that does not start with a name");
  CHECK(refused(R"g(root ::= "a" @)g") == "the character '@'");
  CHECK(refused(R"g(root ::= ("a"{1000}){1000})g") == "a pattern too large");
  try {
    compile_gbnf("root ::= item\nitem ::= \"a\" | other");
    FAIL("compiled");
  } catch (const EbnfError& e) {
    CHECK(std::string(e.what()) == "grammar: the rule 'other' is used but not defined (at line 2, column 16)");
  }
  try {  // docs/api.md's example
    compile_gbnf("root ::= x\nx ::= item");
    FAIL("compiled");
  } catch (const EbnfError& e) {
    CHECK(std::string(e.what()) == "grammar: the rule 'item' is used but not defined (at line 2, column 7)");
  }
}

std::shared_ptr<const TokenVocab> vocab() {
  static std::shared_ptr<const TokenVocab> v = [] {
    auto tok = load_tokenizer(test::fixtures_dir() + "/tokenizers/smollm2");
    return TokenVocab::from_tokenizer(*tok, tok->vocab_size());
  }();
  return v;
}

TEST_CASE("gbnf: an ambiguous grammar stays bounded: its texts are in the language, masks come quickly") {
  // Each way to split a run of '(' into levels is a derivation (2^(n-1) after n of them); and
  // x+ over .+ splits any text every way. The matcher keeps a bounded number of them.
  const Grammar parens = compile_gbnf("root ::= \"(\"+ root \")\" | \"x\"");
  GrammarMatcher m(parens);
  REQUIRE(m.advance(std::string(40, '(')));
  CHECK(m.advance(std::string("x")));
  const Grammar splits = compile_gbnf("root ::= x+\nx ::= .+");
  GrammarMatcher s(splits);
  REQUIRE(s.advance(std::string("abcdefghijklmnopqrstuvwxyz0123456789")));
  CHECK(s.can_end());
  auto tg = std::make_shared<TokenGrammar>(compile_gbnf("root ::= x+\nx ::= .+"), vocab());
  TokenMatcher tm(tg);
  for (const char* piece : {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}) {
    const uint32_t* mask = tm.mask();
    int32_t id = -1;
    for (size_t t = 0; t < vocab()->num_tokens(); ++t)
      if (vocab()->bytes(static_cast<int32_t>(t)) == piece) id = static_cast<int32_t>(t);
    REQUIRE(id >= 0);
    CHECK(mask_allows(mask, id));
    REQUIRE(tm.accept(id));
  }
}

TEST_CASE("gbnf token masks: sampled texts are in the language") {
  const std::string g = "root ::= \"[\" item (\", \" item){0,3} \"]\"\nitem ::= [a-z]{1,6} | [0-9]{1,3}";
  auto tg = std::make_shared<TokenGrammar>(compile_gbnf(g), vocab());
  std::mt19937_64 rng(3);
  int ended = 0;
  for (int sample = 0; sample < 16; ++sample) {
    TokenMatcher tm(tg);
    std::string text;
    for (int step = 0; step < 64 && !tm.finished(); ++step) {
      const uint32_t* mask = tm.mask();
      std::vector<int32_t> ids;
      for (int64_t id = 0; id < vocab()->mask_size(); ++id)
        if (mask_allows(mask, static_cast<int32_t>(id))) ids.push_back(static_cast<int32_t>(id));
      REQUIRE_FALSE(ids.empty());
      int32_t id = ids[rng() % ids.size()];
      for (int32_t eos : vocab()->eos_ids())
        if (mask_allows(mask, eos)) id = eos;
      REQUIRE(tm.accept(id));
      if (!tm.finished()) text += vocab()->bytes(id);
    }
    if (!tm.finished()) continue;
    ++ended;
    INFO(text);
    CHECK(accepts(tg->grammar(), text));
    CHECK(text.front() == '[');
    CHECK(text.back() == ']');
  }
  CHECK(ended > 0);
}

}  // namespace
}  // namespace stem::structured
