// Regular expressions compiled to grammars (structured/regex.h): which texts each pattern accepts
// and refuses, checked by hand and against std::regex; JSON strings under `pattern`,
// `minLength` and `maxLength`; the constructs refused, by name; and token masks over a tokenizer.
#include <nlohmann/json.hpp>
#include <map>
#include <random>
#include <regex>

#include "structured/json_schema.h"
#include "structured/regex.h"
#include "structured/token_mask.h"
#include "tests/catch.h"
#include "tests/structured/brute_force_mask.h"
#include "tests/structured/schema_check.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace stem::structured {
namespace {

using nlohmann::json;

// std::regex over code points: the pattern and the text decoded from UTF-8 to UTF-32.
std::wstring utf32(const std::string& s) {
  std::wstring out;
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1Fu) : n == 3 ? (b & 0x0Fu) : (b & 0x07u);
    for (int k = 1; k < n && i + static_cast<size_t>(k) < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3Fu);
    out.push_back(static_cast<wchar_t>(cp));
    i += static_cast<size_t>(n);
  }
  return out;
}

bool std_regex_match(const std::string& pattern, const std::string& text) {
  return std::regex_match(utf32(text), std::wregex(utf32(pattern), std::regex::ECMAScript));
}

bool accepts(const Grammar& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.advance(text) && m.can_end();
}

void check(const std::string& pattern, const std::vector<std::string>& good, const std::vector<std::string>& bad) {
  const Grammar g = compile_regex(pattern);
  for (const std::string& t : good) {
    INFO("/" << pattern << "/ should accept \"" << t << "\"");
    CHECK(accepts(g, t));
  }
  for (const std::string& t : bad) {
    INFO("/" << pattern << "/ should refuse \"" << t << "\"");
    CHECK_FALSE(accepts(g, t));
  }
}

TEST_CASE("regex: literals, escapes, dot and classes") {
  check("abc", {"abc"}, {"", "ab", "abcd", "abd", "ABC"});
  check("", {""}, {"a"});
  check("a\\.b\\*\\(\\)\\[\\]\\{\\}\\\\\\/\\?\\+\\|\\^\\$", {"a.b*()[]{}\\/?+|^$"}, {"axb*()[]{}\\/?+|^$"});
  check("\\n\\t\\r\\f\\v\\x41\\u00e9\\0", {std::string("\n\t\r\f\vA\xC3\xA9") + '\0'}, {"\n\t\r\f\vA\xC3\xA9"});
  check(".", {"a", " ", "\t", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\r"},
        {"", "\n", "ab", "\xC3", "\xC3\xA9\xC3\xA9", "\xED\xA0\x80", "\xC0\xAF", "\xFF"});
  check("[abc]", {"a", "b", "c"}, {"d", "", "ab"});
  check("[a-cx-z0-9_]", {"a", "b", "c", "x", "z", "0", "5", "_"}, {"d", "w", "A", "-"});
  check("[^a-c]", {"d", "A", "\n", "\xC3\xA9", "\xF0\x9F\x98\x80"}, {"a", "b", "c", "", "\xC3"});
  check("[-a]", {"-", "a"}, {"b"});
  check("[a-]", {"-", "a"}, {"b"});
  check("[]a]", {"]", "a"}, {"b"});
  check("[\\]\\-\\\\]", {"]", "-", "\\"}, {"a"});
  check("[\\d\\s]", {"0", "9", " ", "\t", "\n"}, {"a", "_"});
  check("[\\D]", {"a", "\xC3\xA9"}, {"5"});
  check("[\\b]", {"\b"}, {"b"});
  check("\\d\\w\\s", {"0a ", "9_\t", "5Z\n"}, {"a0 ", "00", "0-\t"});
  check("\\D\\W\\S", {"a-x", "\xC3\xA9!.", "_ a"}, {"0- ", "aa.", "a- "});
  check("[\xC3\xA0-\xC3\xBF]", {"\xC3\xA0", "\xC3\xA9", "\xC3\xBF"}, {"a", "\xC3\x9F", "\xC4\x80"});
  check("[\\u0100-\\uffff]", {"\xC4\x80", "\xE2\x82\xAC", "\xEF\xBF\xBF", "\xDF\xBF", "\xE0\xA0\x80"},
        {"\xC3\xBF", "\xF0\x90\x80\x80", "\xED\xA0\x80"});
  check("[^\\x00-\\x7f]", {"\xC3\xA9", "\xF4\x8F\xBF\xBF"}, {"a", "\x7f"});
}

TEST_CASE("regex: groups, alternation and repetition") {
  check("(ab|cd)e", {"abe", "cde"}, {"ade", "abcde", "e"});
  check("(?:ab|cd)+", {"ab", "cdab", "abababcd"}, {"", "a", "abc"});
  check("(?P<year>\\d{4})-(?<month>\\d\\d)", {"2026-12"}, {"26-12", "2026-1"});
  check("a|", {"a", ""}, {"aa"});
  check("|b", {"b", ""}, {"bb"});
  check("()", {""}, {"a"});
  check("a*", {"", "a", "aaaa"}, {"b", "ab"});
  check("a+", {"a", "aa"}, {"", "b"});
  check("ab?c", {"ac", "abc"}, {"abbc", "a"});
  check("a{3}", {"aaa"}, {"aa", "aaaa"});
  check("a{2,}", {"aa", "aaaaaa"}, {"a", ""});
  check("a{2,4}", {"aa", "aaa", "aaaa"}, {"a", "aaaaa"});
  check("a{,2}", {"", "a", "aa"}, {"aaa"});
  check("a{0}", {""}, {"a"});
  check("(a|bc){2,3}d", {"aad", "bcad", "abcbcd"}, {"ad", "aaaad", "bd"});
  check("(a*)*b", {"b", "aab"}, {"a", "aba"});
  check("a*?b+?c??", {"b", "aabbc"}, {"", "cc"});
  check("^abc$", {"abc"}, {"", "^abc$"});
  check("x(y(z|w)*)?", {"x", "xy", "xyzwz"}, {"xz", "y"});
}

TEST_CASE("regex: realistic patterns") {
  check("\\d{3}-\\d{3}-\\d{4}", {"555-123-4567"}, {"5551234567", "555-123-456", "abc-def-ghij"});
  check("[A-Z][a-z]+ [A-Z][a-z]+", {"Ada Lovelace"}, {"ada lovelace", "Ada  Lovelace", "A L"});
  check("(true|false|maybe)", {"true", "false", "maybe"}, {"tru", "truefalse"});
  check("[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}", {"a.b@example.com", "x@y.io"}, {"a@b", "@b.com", "a@b.c"});
  check("-?(0|[1-9]\\d*)(\\.\\d+)?", {"0", "-12", "3.14"}, {"01", "1.", ".5", "--1"});
  check("((25[0-5]|2[0-4]\\d|1?\\d?\\d)\\.){3}(25[0-5]|2[0-4]\\d|1?\\d?\\d)", {"192.168.0.1", "255.255.255.0"},
        {"256.1.1.1", "1.2.3", "1.2.3.4.5"});
}

// std::regex (ECMAScript) as a second reading of the patterns both take the same way: random
// ASCII strings over each pattern's alphabet must be accepted by both or by neither.
TEST_CASE("regex: agrees with std::regex on random strings") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"(ab|a)*b?", "ab"},           {"a{2,3}(b|c)*", "abc"},        {"[a-c]+[^b]?", "abcd"},
      {"(a|b)*abb", "ab"},           {"\\d+(\\.\\d{1,2})?", "12.a"}, {"(x?y?)*z", "xyz"},
      {"((a|b)(c|d)){1,3}", "abcd"}, {"[^ab]*a[^ab]*", "abc "},      {"(\\w+\\s?)+", "a_ 1-"},
      {"a?b?c?d?", "abcd"},          {"(a|ab)(c|bcd)(d*)", "abcd"}, {"[\\s\\d]{0,4}x", "1 x\t"},
  };
  std::mt19937_64 rng(7);
  for (const auto& [pattern, alphabet] : cases) {
    const Grammar g = compile_regex(pattern);
    for (int k = 0; k < 400; ++k) {
      const size_t len = rng() % 9;
      std::string s;
      for (size_t i = 0; i < len; ++i) s.push_back(alphabet[rng() % alphabet.size()]);
      INFO("/" << pattern << "/ on \"" << s << "\"");
      CHECK(accepts(g, s) == std_regex_match(pattern, s));
    }
  }
}

std::string refused(const std::string& pattern) {
  try {
    compile_regex(pattern);
  } catch (const RegexError& e) {
    return e.construct();
  }
  return "(compiled)";
}

TEST_CASE("regex: constructs outside the subset are refused by name") {
  CHECK(refused("a(?=b)") == "the lookahead '(?='");
  CHECK(refused("a(?!b)") == "the negative lookahead '(?!'");
  CHECK(refused("(?<=a)b") == "the lookbehind '(?<='");
  CHECK(refused("(?<!a)b") == "the negative lookbehind '(?<!'");
  CHECK(refused("(a)\\1") == "the backreference '\\1'");
  CHECK(refused("(?P<x>a)(?P=x)") == "the named backreference '(?P='");
  CHECK(refused("\\bword\\b") == "the word boundary '\\b'");
  CHECK(refused("\\Bx") == "the word boundary '\\B'");
  CHECK(refused("\\Aa") == "the anchor '\\A'");
  CHECK(refused("a\\Z") == "the anchor '\\Z'");
  CHECK(refused("(?i)abc") == "the inline flag group '(?i)'");
  CHECK(refused("a*+") == "the possessive quantifier '*+'");
  CHECK(refused("a**") == "a repeated quantifier ('*' after a quantifier)");
  CHECK(refused("\\p{L}") == "the Unicode property '\\p{...}'");
  CHECK(refused("[[:alpha:]]") == "the POSIX class '[:...'");
  CHECK(refused("a^b") == "the anchor '^' inside the pattern");
  CHECK(refused("a$b") == "the anchor '$' inside the pattern");
  CHECK(refused("(a$)") == "the anchor '$' inside the pattern");
  CHECK(refused("a{2") == "a '{' that does not start a repetition");
  CHECK(refused("{x}") == "a '{' that does not start a repetition");
  CHECK(refused("a{3,2}") == "a repetition {m,n} with n < m");
  CHECK(refused("a{1001}") == "a repetition count above 1000");
  CHECK(refused("(a{1000}){1000}") == "a pattern too large");
  CHECK(refused("*a") == "nothing to repeat before '*'");
  CHECK(refused("(ab") == "an unclosed group '('");
  CHECK(refused("ab)") == "an unmatched ')'");
  CHECK(refused("[ab") == "an unterminated class '['");
  CHECK(refused("[z-a]") == "a reversed range in a class");
  CHECK(refused("[a-\\d]") == "a range that ends in a class escape");
  CHECK(refused("\\q") == "the escape '\\q'");
  CHECK(refused("\\012") == "an octal escape '\\01'");
  CHECK(refused("\\xZZ") == "\\x");
  CHECK(refused("\\uD800") == "a surrogate '\\uD800'");
  CHECK(refused("a\\") == "a trailing backslash");
  CHECK(refused("\xC3") == "invalid UTF-8");
  try {
    compile_regex("ab(?=c)");
    FAIL("compiled");
  } catch (const RegexError& e) {
    CHECK(std::string(e.what()) ==
          "regex: the lookahead '(?=' is not supported (at offset 2 of the pattern; docs/api.md lists the subset)");
  }
}

TEST_CASE("choice: exactly the listed strings") {
  const Grammar g = compile_choice({"yes", "no", "not sure", "n"});
  for (const char* t : {"yes", "no", "not sure", "n"}) CHECK(accepts(g, t));
  for (const char* t : {"", "ye", "nope", "not", "yesno"}) CHECK_FALSE(accepts(g, t));
}

bool schema_accepts_text(const json& schema, const std::string& text) {
  return accepts(compile_json_schema(schema), text);
}

TEST_CASE("JSON schema strings: pattern, minLength, maxLength") {
  const json code = json::parse(R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})");
  CHECK(schema_accepts_text(code, R"("AB-123")"));
  CHECK_FALSE(schema_accepts_text(code, R"("AB-12")"));
  CHECK_FALSE(schema_accepts_text(code, R"("xAB-123")"));
  CHECK_FALSE(schema_accepts_text(code, "AB-123"));
  // Characters JSON escapes: '"', '\\' and control characters, written as JSON writes them.
  const json quoted = json::parse(R"({"type": "string", "pattern": "a[\"\\\\\n\u0001]b"})");
  CHECK(schema_accepts_text(quoted, R"("a\"b")"));
  CHECK(schema_accepts_text(quoted, R"("a\\b")"));
  CHECK(schema_accepts_text(quoted, R"("a\nb")"));
  CHECK(schema_accepts_text(quoted, R"("a\u000ab")"));
  CHECK(schema_accepts_text(quoted, R"("a\u0001b")"));
  CHECK_FALSE(schema_accepts_text(quoted, "\"a\nb\""));  // raw control characters are not JSON
  CHECK_FALSE(schema_accepts_text(quoted, R"("a"b")"));
  CHECK_FALSE(schema_accepts_text(quoted, R"("a\tb")"));
  CHECK_FALSE(schema_accepts_text(quoted, R"("a\u0002b")"));
  const json any = json::parse(R"({"type": "string", "pattern": ".*"})");
  CHECK(schema_accepts_text(any, "\"x\\ty\\\"\\u001F\xC3\xA9\""));
  CHECK_FALSE(schema_accepts_text(any, R"("\u00e9")"));  // other characters are written as themselves
  CHECK_FALSE(schema_accepts_text(any, R"("\n")"));  // '.' is not a newline
  const json len = json::parse(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  CHECK(schema_accepts_text(len, R"("ab")"));
  CHECK(schema_accepts_text(len, "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\""));  // 3 characters, 9 bytes
  CHECK(schema_accepts_text(len, R"("a\n")"));  // an escape is one character
  CHECK_FALSE(schema_accepts_text(len, R"("a")"));
  CHECK_FALSE(schema_accepts_text(len, R"("abcd")"));
  CHECK(schema_accepts_text(json::parse(R"({"type": "string", "minLength": 1})"), std::string("\"") + std::string(2000, 'x') + "\""));
  CHECK_FALSE(schema_accepts_text(json::parse(R"({"type": "string", "minLength": 1})"), R"("")"));
  CHECK(schema_accepts_text(json::parse(R"({"type": ["string", "null"], "maxLength": 1})"), "null"));
  CHECK(schema_accepts_text(json::parse(R"({"pattern": "x+"})"), R"("xx")"));  // no type: a string
  try {
    compile_json_schema(json::parse(R"({"properties": {"c": {"type": "string", "pattern": "(a)\\1"}}})"));
    FAIL("compiled");
  } catch (const SchemaError& e) {
    CHECK(e.keyword() == "pattern");
    CHECK(std::string(e.what()) ==
          "'pattern': regex: the backreference '\\1' is not supported (at offset 4 of the pattern; docs/api.md "
          "lists the subset) (at /properties/c)");
  }
}

std::shared_ptr<const TokenVocab> vocab(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const TokenVocab>> cache;
  auto& v = cache[name];
  if (!v) {
    auto tok = load_tokenizer(test::fixtures_dir() + "/tokenizers/" + name);
    v = TokenVocab::from_tokenizer(*tok, tok->vocab_size());
  }
  return v;
}

TEST_CASE("regex token masks: the trie walk equals trying every token, and sampled texts match") {
  const std::vector<std::string> patterns = {"\\d{3}-\\d{4}", "(yes|no|maybe)( please)?", "[A-Z][a-z]{1,8} [0-9]+",
                                             "(\\w{1,4}, ){2,3}\\w{1,4}\\.", "[^\\n]{0,12}"};
  for (const char* name : {"smollm2", "llama2_hf"}) {
    auto v = vocab(name);
    for (const std::string& pattern : patterns) {
      INFO(name << " /" << pattern << "/");
      auto tg = std::make_shared<TokenGrammar>(compile_regex(pattern), v);
      std::mt19937_64 rng(11);
      int ended = 0;
      for (int sample = 0; sample < 12; ++sample) {
        TokenMatcher tm(tg);
        std::string text;
        bool done = false;
        for (int step = 0; step < 64 && !done; ++step) {
          if (sample < 2) CHECK(tg->compute_mask(tm.matcher()) == brute_force_mask(*v, tm.matcher()));
          const uint32_t* mask = tm.mask();
          std::vector<int32_t> ids;
          for (int64_t id = 0; id < v->mask_size(); ++id)
            if (mask_allows(mask, static_cast<int32_t>(id))) ids.push_back(static_cast<int32_t>(id));
          REQUIRE_FALSE(ids.empty());
          int32_t id = ids[rng() % ids.size()];
          for (int32_t eos : v->eos_ids())  // end half the times it may
            if (mask_allows(mask, eos) && rng() % 2) id = eos;
          REQUIRE(tm.accept(id));
          if (tm.finished()) {
            done = true;
          } else {
            text += v->bytes(id);
          }
        }
        if (!done) continue;
        ++ended;
        INFO("sampled \"" << text << "\"");
        CHECK(std_regex_match(pattern, text));
      }
      CHECK(ended > 0);
    }
  }
}

}  // namespace
}  // namespace stem::structured
