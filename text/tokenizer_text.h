// Text helpers shared by the tokenizers (internal): UTF-8, Unicode predicates, NFC, and a PCRE2
// regex that behaves like the Oniguruma regexes the HF `tokenizers` package compiles.
#pragma once
#include "text/utf8.h"
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stem::tok {

// ---- UTF-8 -----------------------------------------------------------------------------------
// Length of the sequence a lead byte starts (1 for ASCII and for bytes that cannot lead).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}
// Decodes the code point at s[i] of valid UTF-8 and advances i.
uint32_t next_code_point(std::string_view s, size_t& i);
using stem::append_utf8;
// Replaces each maximal invalid subsequence by U+FFFD (Rust's String::from_utf8_lossy).
// When `hold_incomplete_tail` is set, an incomplete but so-far-valid sequence at the end is
// left unconsumed: the return value is the number of bytes of `in` consumed.
size_t utf8_lossy_append(std::string_view in, std::string& out, bool hold_incomplete_tail);
bool is_valid_utf8(std::string_view s);
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// ---- Unicode predicates (Unicode 14 via PCRE2, or short hand-written lists) -------------------
bool is_white_space(uint32_t cp);  // White_Space property (Rust char::is_whitespace, regex \s)
bool is_word_char(uint32_t cp);    // Rust regex \w: Alphabetic, M, Nd, Pc, Join_Control
bool is_numeric(uint32_t cp);      // Rust char::is_numeric: general category N

// ---- Normalization ---------------------------------------------------------------------------
std::string nfc(std::string_view s);

// ---- Regex -----------------------------------------------------------------------------------
struct Span {
  size_t start, end;
  bool is_match;
};

// A regex compiled with PCRE2 (UTF, UCP, JIT). `\s`, `\w`, `\h` (and negations) are rewritten
// first so that they mean what they mean in Oniguruma, which the `tokenizers` package uses:
// \s = White_Space (PCRE2's also takes U+180E), \w = Alphabetic|M|Nd|Pc|²³¹¼½¾, \h = hex digit.
// Checked over every code point: the classes agree except on characters new in Unicode 15-16
// (PCRE2 10.42 knows Unicode 14).
class Regex {
 public:
  // `what` names the regex in errors ("tokenizer.json: pre_tokenizer Split").
  Regex(std::string_view pattern, std::string_view what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the non-overlapping leftmost-first matches as (start, end) pairs.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  bool matches_at_start(std::string_view text) const;  // anchored match at 0

 private:
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

std::string escape_regex(std::string_view literal);

// A `tokenizers` Pattern: splits text into alternating match / non-match spans that cover it,
// as `Pattern::find_matches` does (an empty text gives one empty non-match span).
class Pattern {
 public:
  virtual ~Pattern() = default;
  virtual void find_matches(std::string_view text, std::vector<Span>& out) const = 0;
};
class RegexPattern : public Pattern {
 public:
  RegexPattern(std::string_view pattern, std::string_view what) : re_(pattern, what) {}
  void find_matches(std::string_view text, std::vector<Span>& out) const override;

 private:
  Regex re_;
};
class LiteralPattern : public Pattern {
 public:
  explicit LiteralPattern(std::string literal) : lit_(std::move(literal)) {}
  void find_matches(std::string_view text, std::vector<Span>& out) const override;
  const std::string& literal() const { return lit_; }

 private:
  std::string lit_;
};
// Every code point for which pred(cp) holds is a match of its own (a `Fn(char) -> bool` pattern).
class CharPattern : public Pattern {
 public:
  explicit CharPattern(bool (*pred)(uint32_t)) : pred_(pred) {}
  explicit CharPattern(uint32_t ch) : ch_(ch) {}
  void find_matches(std::string_view text, std::vector<Span>& out) const override;

 private:
  bool (*pred_)(uint32_t) = nullptr;
  uint32_t ch_ = 0;
};

}  // namespace stem::tok
