// The text layer under the tokenizers: regex character classes against what the `tokenizers`
// package's Oniguruma gives (every code point), NFC, lossy UTF-8.
#include <bitset>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "text/tokenizer_text.h"
#include "tests/catch.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace stem::tok;

namespace {

using CodePointSet = std::bitset<0x110000>;

CodePointSet from_ranges(const nlohmann::json& r) {
  CodePointSet s;
  for (const auto& range : r) {
    for (uint32_t cp = range[0].get<uint32_t>(); cp <= range[1].get<uint32_t>(); ++cp) s.set(cp);
  }
  return s;
}

std::string utf8(uint32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

}  // namespace

TEST_CASE("regex classes match Oniguruma's on every code point") {
  std::ifstream in(fs::path(stem::test::fixtures_dir()) / "tokenizers" / "unicode_classes.json");
  REQUIRE(in.good());
  const auto j = nlohmann::json::parse(in);
  // Characters that are new since the fixture's Unicode version may differ (PCRE2 10.42 has 14).
  const auto unassigned = std::make_unique<CodePointSet>(from_ranges(j["unassigned"]));
  for (const char* cls : {"\\w", "\\s", "\\d", "\\p{L}", "\\p{N}", "is_numeric"}) {
    const auto want = std::make_unique<CodePointSet>(from_ranges(j[cls]));
    Regex re(std::string(cls) == "is_numeric" ? "\\p{N}" : cls, "test");
    size_t wrong = 0;
    uint32_t first_wrong = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      if ((cp >= 0xD800 && cp < 0xE000) || unassigned->test(cp)) continue;
      bool got = std::string(cls) == "is_numeric" ? is_numeric(cp) : re.matches_at_start(utf8(cp));
      if (std::string(cls) == "\\s" && is_white_space(cp) != want->test(cp)) got = !want->test(cp);
      if (got != want->test(cp) && wrong++ == 0) first_wrong = cp;
    }
    INFO(cls << ": first difference at U+" << std::hex << first_wrong);
    CHECK(wrong == 0);
  }
}

TEST_CASE("regex rewrites keep classes and escapes working") {
  std::vector<std::pair<size_t, size_t>> m;
  Regex(R"([^\s\p{L}]+)", "test").find_all("ab 12!? \xE1\xA0\x8E", m);  // U+180E is not white space
  REQUIRE(m.size() == 2);
  CHECK(m[0] == std::make_pair(size_t{3}, size_t{7}));
  CHECK(m[1] == std::make_pair(size_t{8}, size_t{11}));
  m.clear();
  Regex(R"(\S+|\\|[]a]+)", "test").find_all("x\\]a", m);
  CHECK(m.size() == 1);
  m.clear();
  Regex(R"(\h+)", "test").find_all("zz0fA9 g", m);  // Oniguruma's \h: hex digits
  REQUIRE(m.size() == 1);
  CHECK(m[0] == std::make_pair(size_t{2}, size_t{6}));
  m.clear();
  Regex("^a|b$", "test").find_all("a\nab\nb\n", m);  // line anchors, as in Ruby syntax
  CHECK(m.size() == 4);
  m.clear();
  Regex("(?m:a.b)|x.y", "test").find_all("a\nb x\ny", m);  // Ruby's (?m): dot matches newline
  CHECK(m.size() == 1);
  CHECK_THROWS_WITH(Regex("[\\S]", "where"), Catch::Contains("where") && Catch::Contains("not support"));
}

TEST_CASE("NFC composes, reorders and leaves NFC text alone") {
  CHECK(nfc("cafe\xCC\x81") == "caf\xC3\xA9");                        // e + U+0301 -> é
  CHECK(nfc("caf\xC3\xA9") == "caf\xC3\xA9");
  CHECK(nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8") == "\xEA\xB0\x81");  // Hangul L V T -> 각
  CHECK(nfc("q\xCC\x87\xCC\xA3") == "q\xCC\xA3\xCC\x87");             // ccc 230 after 220: reordered
  CHECK(nfc("\xE2\x84\xAB") == "\xC3\x85");                           // Angstrom sign -> Å (singleton)
  CHECK(nfc("\xE0\xA5\x98") == "\xE0\xA4\x95\xE0\xA4\xBC");          // U+0958: composition exclusion
  CHECK(nfc("A\xCC\x8A\xCC\x81") == "\xC7\xBA");                      // A + ring + acute -> Ǻ
  CHECK(nfc("plain ascii") == "plain ascii");
}

TEST_CASE("lossy UTF-8 replaces maximal invalid subparts, as Rust does") {
  auto lossy = [](std::string_view s) {
    std::string out;
    utf8_lossy_append(s, out, false);
    return out;
  };
  const std::string r(kReplacementChar);
  CHECK(lossy("a\xFF" "b") == "a" + r + "b");
  CHECK(lossy("\xE4\xB8") == r);                  // a cut 3-byte sequence is one subpart
  CHECK(lossy("\xE4\xB8" "a") == r + "a");
  CHECK(lossy("\xED\xA0\x80") == r + r + r);     // a surrogate: three subparts
  CHECK(lossy("\xF0\x9F\x98\x80") == "\xF0\x9F\x98\x80");
  CHECK(lossy("\xC0\xAF") == r + r);             // overlong
  std::string out;
  CHECK(utf8_lossy_append("ok\xF0\x9F", out, true) == 2);  // an incomplete tail is held
  CHECK(out == "ok");
}
