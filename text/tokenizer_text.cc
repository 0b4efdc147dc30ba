// UTF-8 helpers, Unicode predicates and the PCRE2 regex wrapper (see tokenizer_text.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <bitset>
#include <memory>

#include "text/tokenizer_text.h"
#include "kernels/check.h"

namespace stem::tok {

// ---- UTF-8 -----------------------------------------------------------------------------------

uint32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char b = static_cast<unsigned char>(s[i]);
  size_t n = utf8_seq_len(b);
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b;
  }
  uint32_t cp = b & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}


namespace {
// How many bytes of a well-formed sequence start at s[i] (0: ill-formed at s[i]); `complete`
// is false when s ends inside a sequence that is well-formed so far. Follows the Unicode table
// of well-formed byte sequences, so the ill-formed part found is a "maximal subpart".
size_t well_formed_len(std::string_view s, size_t i, size_t& valid_prefix, bool& complete) {
  unsigned char b = static_cast<unsigned char>(s[i]);
  complete = true;
  valid_prefix = 0;
  if (b < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) n = 2;
  else if (b >= 0xE0 && b <= 0xEF) n = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
  else if (b >= 0xF0 && b <= 0xF4) n = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  valid_prefix = 1;
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      complete = false;
      return 0;
    }
    unsigned char c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return 0;
    lo = 0x80, hi = 0xBF;
    valid_prefix = k + 1;
  }
  return n;
}
}  // namespace

size_t utf8_lossy_append(std::string_view in, std::string& out, bool hold_incomplete_tail) {
  size_t i = 0;
  while (i < in.size()) {
    size_t prefix;
    bool complete;
    size_t n = well_formed_len(in, i, prefix, complete);
    if (n) {
      out.append(in.substr(i, n));
      i += n;
    } else if (!complete && hold_incomplete_tail) {
      return i;
    } else {
      out.append(kReplacementChar);
      i += prefix ? prefix : 1;
    }
  }
  return i;
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t prefix;
    bool complete;
    size_t n = well_formed_len(s, i, prefix, complete);
    if (!n) return false;
    i += n;
  }
  return true;
}

// ---- Unicode predicates ----------------------------------------------------------------------

bool is_white_space(uint32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {
// A one-code-point class, answered by PCRE2 (its Unicode tables) and memoised for the BMP.
class CharClass {
 public:
  explicit CharClass(const char* cls) : re_(cls, "built-in character class") {
    std::string buf;
    for (uint32_t cp = 0; cp < 0x10000; ++cp) {
      if (cp >= 0xD800 && cp < 0xE000) continue;
      buf.clear();
      append_utf8(buf, cp);
      bmp_[cp] = re_.matches_at_start(buf);
    }
  }
  bool operator()(uint32_t cp) const {
    if (cp < 0x10000) return bmp_[cp];
    std::string buf;
    append_utf8(buf, cp);
    return re_.matches_at_start(buf);
  }

 private:
  Regex re_;
  std::bitset<0x10000> bmp_;
};
}  // namespace

bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) - 'a' < 26 || cp - '0' < 10 || cp == '_';
  static const CharClass cls(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])");
  return cls(cp);
}

bool is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp - '0' < 10;
  static const CharClass cls(R"(\p{N})");
  return cls(cp);
}

// ---- Regex -----------------------------------------------------------------------------------

namespace {
constexpr const char* kWhiteSpaceSet =
    R"(\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
// Oniguruma's \w, measured against the tokenizers package over all code points: Alphabetic, Mark,
// Decimal_Number, Connector_Punctuation, and the Latin-1 numbers ² ³ ¹ ¼ ½ ¾.
constexpr const char* kWordSet = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{B2}\x{B3}\x{B9}\x{BC}-\x{BE})";
// Oniguruma's \h is a hexadecimal digit (PCRE2's is horizontal space).
constexpr const char* kHexSet = "0-9a-fA-F";

// Rewrites the escapes whose meaning differs between Oniguruma and PCRE2.
std::string translate(std::string_view p, std::string_view what) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char d = p[++i];
      const char* set = (d == 's' || d == 'S')   ? kWhiteSpaceSet
                        : (d == 'w' || d == 'W') ? kWordSet
                        : (d == 'h' || d == 'H') ? kHexSet
                                                 : nullptr;
      if (!set) {
        out += c;
        out += d;
      } else if (d == 's' || d == 'w' || d == 'h') {
        out += in_class ? std::string(set) : "[" + std::string(set) + "]";
      } else if (!in_class) {
        out += "[^" + std::string(set) + "]";
      } else {
        throw Error(std::string(what) + ": regex '" + std::string(p) +
                    "' uses \\" + d + " inside a character class, which stemserve does not support");
      }
    } else if (c == '(' && !in_class && i + 2 < p.size() && p[i + 1] == '?' &&
               p.find_first_not_of("imx-", i + 2) != i + 2 &&
               (p[p.find_first_not_of("imx-", i + 2)] == ':' || p[p.find_first_not_of("imx-", i + 2)] == ')')) {
      // Inline options: Ruby's (?m) is PCRE2's (?s) (dot matches newline).
      size_t end = p.find_first_not_of("imx-", i + 2);
      out += "(?";
      for (size_t k = i + 2; k < end; ++k) out += p[k] == 'm' ? 's' : p[k];
      i = end - 1;
    } else if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
    } else if (c == '[' && in_class && i + 1 < p.size() && p[i + 1] == ':') {
      size_t end = p.find(":]", i + 2);
      if (end == std::string_view::npos) end = p.size() - 2;
      out.append(p.substr(i, end + 2 - i));
      i = end + 1;
    } else {
      if (c == ']' && in_class) in_class = false;
      out += c;
    }
  }
  return out;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};
pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create(1, nullptr));
  return md.get();
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}
}  // namespace

Regex::Regex(std::string_view pattern, std::string_view what) {
  std::string translated = translate(pattern, what);
  int err = 0;
  PCRE2_SIZE offset = 0;
  // Ruby syntax, as Oniguruma's default: ^ and $ match at every line; lines end at \n only.
  pcre2_compile_context* ctx = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(ctx, PCRE2_NEWLINE_LF);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &offset, ctx);
  pcre2_compile_context_free(ctx);
  if (!code) {
    throw Error(std::string(what) + ": cannot compile regex '" + std::string(pattern) + "': " +
                pcre2_message(err) + " at offset " + std::to_string(offset));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  size_t last_end = SIZE_MAX;
  while (pos <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw Error("regex match failed: " + pcre2_message(rc));
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t start = ov[0], end = ov[1];
    if (start == end) {
      // An empty match right after a match is dropped (as Rust's and Oniguruma's iterators do);
      // either way the search goes on one code point further.
      if (start != last_end) out.emplace_back(start, end);
      if (end >= text.size()) break;
      pos = end + utf8_seq_len(static_cast<unsigned char>(text[end]));
      continue;
    }
    out.emplace_back(start, end);
    last_end = end;
    pos = end;
  }
}

bool Regex::matches_at_start(std::string_view text) const {
  int rc = pcre2_match(static_cast<pcre2_code*>(code_), reinterpret_cast<PCRE2_SPTR>(text.data()),
                       text.size(), 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, thread_match_data(), nullptr);
  return rc >= 0;
}

std::string escape_regex(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-#&~ ").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// ---- Patterns --------------------------------------------------------------------------------

namespace {
void spans_from_matches(std::string_view text, const std::vector<std::pair<size_t, size_t>>& m,
                        std::vector<Span>& out) {
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  for (auto [s, e] : m) {
    if (prev != s) out.push_back({prev, s, false});
    out.push_back({s, e, true});
    prev = e;
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}
}  // namespace

void RegexPattern::find_matches(std::string_view text, std::vector<Span>& out) const {
  thread_local std::vector<std::pair<size_t, size_t>> m;
  m.clear();
  if (!text.empty()) re_.find_all(text, m);
  spans_from_matches(text, m, out);
}

void LiteralPattern::find_matches(std::string_view text, std::vector<Span>& out) const {
  std::vector<std::pair<size_t, size_t>> m;
  if (!lit_.empty()) {
    for (size_t p = text.find(lit_); p != std::string_view::npos; p = text.find(lit_, p + lit_.size())) {
      m.emplace_back(p, p + lit_.size());
    }
  }
  spans_from_matches(text, m, out);
}

void CharPattern::find_matches(std::string_view text, std::vector<Span>& out) const {
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    size_t start = i;
    uint32_t cp = next_code_point(text, i);
    if (pred_ ? pred_(cp) : cp == ch_) {
      if (last < start) out.push_back({last, start, false});
      out.push_back({start, i, true});
      last = i;
    }
  }
  if (last < text.size()) out.push_back({last, text.size(), false});
}

}  // namespace stem::tok
