// Splits a template into text and tag tokens exactly where jinja2's lexer does, with
// trim_blocks (drop the newline after a block or comment tag) and lstrip_blocks (drop the
// indentation before one), and `-` / `+` whitespace control on every tag.
#include <cerrno>
#include <cstdlib>

#include "text/chat_template.h"
#include "text/chat_template_ast.h"
#include "text/chat_template_text.h"

namespace stem::jinja {

std::string normalize_source(const std::string& src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out.push_back(src[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string describe_position(const std::string& source, size_t offset) {
  size_t line = 1, line_start = 0;
  for (size_t k = 0; k < offset && k < source.size(); ++k) {
    if (source[k] == '\n') {
      ++line;
      line_start = k + 1;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(offset - line_start + 1);
}

void syntax_error(const std::string& source, size_t offset, const std::string& message) {
  throw ChatTemplateError(ChatTemplateError::Kind::kSyntax,
                          "chat template syntax error at " + describe_position(source, offset) + ": " + message);
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

// Length in bytes of the whitespace code point at `pos` (Python's \s), or 0.
size_t space_at(const std::string& s, size_t pos) {
  if (pos >= s.size()) return 0;
  unsigned char c = static_cast<unsigned char>(s[pos]);
  if (c < 0x80) return text::is_space(c) ? 1 : 0;
  size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  std::u32string cp = text::decode(std::string_view(s).substr(pos, len));
  return cp.size() == 1 && text::is_space(cp[0]) ? len : 0;
}

size_t skip_spaces(const std::string& s, size_t pos) {
  while (size_t n = space_at(s, pos)) pos += n;
  return pos;
}

std::string rstrip_spaces(const std::string& s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (space_at(s, start) != end - start) break;
    end = start;
  }
  return s.substr(0, end);
}

bool all_spaces(const std::string& s, size_t from) {
  for (size_t pos = from; pos < s.size();) {
    size_t n = space_at(s, pos);
    if (!n) return false;
    pos += n;
  }
  return true;
}

// Digits with single underscores between them, as in `(\d+_)*\d+`; returns the end or npos.
size_t match_digits(const std::string& s, size_t pos, bool (*digit)(char) = is_digit) {
  if (pos >= s.size() || !digit(s[pos])) return std::string::npos;
  while (pos < s.size()) {
    if (digit(s[pos])) ++pos;
    else if (s[pos] == '_' && pos + 1 < s.size() && digit(s[pos + 1])) ++pos;
    else break;
  }
  return pos;
}

std::string without_underscores(std::string s) {
  std::erase(s, '_');
  return s;
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      size_t tag = find_opener(pos);
      if (tag == std::string::npos) {
        emit_data(src_.substr(pos), pos);
        break;
      }
      char kind = src_[tag + 1];
      size_t after = tag + 2;
      char sign = 0;
      if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];
      std::string text = src_.substr(pos, tag - pos);
      strip_before_tag(text, sign, kind != '{', line_starting);
      emit_data(std::move(text), pos);
      if (kind == '#') {
        pos = lex_comment(after, line_starting);
      } else if (kind == '%' && is_raw_begin(after, &pos)) {
        pos = lex_raw(pos, line_starting);
      } else {
        pos = lex_tag(tag, after, kind == '%', line_starting);
      }
    }
    tokens_.push_back(Token{Tok::Eof, "", 0, 0.0, src_.size()});
    return std::move(tokens_);
  }

 private:
  size_t find_opener(size_t pos) const {
    for (size_t k = src_.find('{', pos); k != std::string::npos; k = src_.find('{', k + 1)) {
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    }
    return std::string::npos;
  }

  // `-` strips all whitespace before a tag; otherwise lstrip_blocks strips the indentation of a
  // block or comment tag that starts its line ('+' opts out).
  static void strip_before_tag(std::string& text, char sign, bool lstrip_kind, bool line_starting) {
    if (sign == '-') {
      text = rstrip_spaces(text);
    } else if (sign != '+' && lstrip_kind) {
      size_t nl = text.rfind('\n');
      size_t line_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((line_pos > 0 || line_starting) && all_spaces(text, line_pos)) text.resize(line_pos);
    }
  }

  void emit_data(std::string text, size_t offset) {
    if (!text.empty()) tokens_.push_back(Token{Tok::Data, std::move(text), 0, 0.0, offset});
  }

  // After a closing tag, consume what whitespace control says; `trim` is trim_blocks for this tag.
  size_t close_tag(size_t pos, size_t len, char sign, bool trim, bool& line_starting) const {
    pos += len;
    if (sign == '-') pos = skip_spaces(src_, pos);
    else if (sign != '+' && trim && pos < src_.size() && src_[pos] == '\n') ++pos;
    line_starting = pos > 0 && src_[pos - 1] == '\n';
    return pos;
  }

  size_t lex_comment(size_t pos, bool& line_starting) {
    for (size_t k = pos; k < src_.size(); ++k) {
      if (src_.compare(k, 3, "+#}") == 0) return close_tag(k, 3, '+', true, line_starting);
      if (src_.compare(k, 3, "-#}") == 0) return close_tag(k, 3, '-', true, line_starting);
      if (src_.compare(k, 2, "#}") == 0) return close_tag(k, 2, 0, true, line_starting);
    }
    syntax_error(src_, pos, "missing end of comment tag '#}'");
  }

  bool is_raw_begin(size_t pos, size_t* end) const {
    pos = skip_spaces(src_, pos);
    if (src_.compare(pos, 3, "raw") != 0) return false;
    pos = skip_spaces(src_, pos + 3);
    if (src_.compare(pos, 3, "-%}") == 0) *end = skip_spaces(src_, pos + 3);
    else if (src_.compare(pos, 2, "%}") == 0) *end = pos + 2;
    else return false;
    return true;
  }

  size_t lex_raw(size_t pos, bool& line_starting) {
    for (size_t k = src_.find("{%", pos); k != std::string::npos; k = src_.find("{%", k + 1)) {
      size_t q = k + 2;
      char sign = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
      q = skip_spaces(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q = skip_spaces(src_, q + 6);
      char end_sign = src_.compare(q, 3, "+%}") == 0 ? '+' : src_.compare(q, 3, "-%}") == 0 ? '-' : 0;
      if (!end_sign && src_.compare(q, 2, "%}") != 0) continue;
      std::string text = src_.substr(pos, k - pos);
      strip_before_tag(text, sign, true, false);
      emit_data(std::move(text), pos);
      return close_tag(q, end_sign ? 3 : 2, end_sign, true, line_starting);
    }
    syntax_error(src_, pos, "missing {% endraw %}");
  }

  size_t lex_tag(size_t open, size_t pos, bool block, bool& line_starting) {
    tokens_.push_back(Token{block ? Tok::BlockBegin : Tok::VarBegin, "", 0, 0.0, open});
    std::vector<char> balance;
    const char* close = block ? "%}" : "}}";
    while (true) {
      if (pos >= src_.size())
        syntax_error(src_, open, std::string("missing end of tag '") + close + "'");
      if (balance.empty()) {
        char sign = src_[pos];
        if ((sign == '-' || (block && sign == '+')) && src_.compare(pos + 1, 2, close) == 0) {
          tokens_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, "", 0, 0.0, pos});
          return close_tag(pos, 3, sign, block, line_starting);
        }
        if (src_.compare(pos, 2, close) == 0) {
          tokens_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, "", 0, 0.0, pos});
          return close_tag(pos, 2, 0, block, line_starting);
        }
      }
      if (size_t n = space_at(src_, pos)) {
        pos += n;
        continue;
      }
      pos = lex_token(pos, balance);
    }
  }

  size_t lex_token(size_t pos, std::vector<char>& balance) {
    char c = src_[pos];
    if (is_digit(c)) return lex_number(pos);
    if (is_name_start(c)) {
      size_t end = pos;
      while (end < src_.size() && is_name_char(src_[end])) ++end;
      tokens_.push_back(Token{Tok::Name, src_.substr(pos, end - pos), 0, 0.0, pos});
      return end;
    }
    if (c == '\'' || c == '"') return lex_string(pos);
    static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                       "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : kOps) {
      std::string_view o(op);
      if (src_.compare(pos, o.size(), o) != 0) continue;
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) syntax_error(src_, pos, "unexpected '" + std::string(o) + "'");
        if (balance.back() != o[0])
          syntax_error(src_, pos, "unexpected '" + std::string(o) + "', expected '" + balance.back() + "'");
        balance.pop_back();
      }
      tokens_.push_back(Token{Tok::Op, std::string(o), 0, 0.0, pos});
      return pos + o.size();
    }
    syntax_error(src_, pos, std::string("unexpected char '") + c + "'");
  }

  size_t lex_number(size_t pos) {
    // float: digits then (.digits)?e[+-]?digits, or digits.digits; never right after a '.'
    bool after_dot = pos > 0 && src_[pos - 1] == '.';
    size_t int_end = match_digits(src_, pos);
    if (!after_dot) {
      size_t frac_end = std::string::npos;
      if (int_end < src_.size() && src_[int_end] == '.') frac_end = match_digits(src_, int_end + 1);
      size_t mant_end = frac_end != std::string::npos ? frac_end : int_end;
      size_t exp_end = std::string::npos;
      if (mant_end < src_.size() && (src_[mant_end] == 'e' || src_[mant_end] == 'E')) {
        size_t q = mant_end + 1;
        if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
        exp_end = match_digits(src_, q);
      }
      size_t end = exp_end != std::string::npos ? exp_end : frac_end;
      if (end != std::string::npos) {
        std::string digits = without_underscores(src_.substr(pos, end - pos));
        tokens_.push_back(Token{Tok::Float, digits, 0, std::strtod(digits.c_str(), nullptr), pos});
        return end;
      }
    }
    int base = 10;
    size_t end = int_end;
    if (src_[pos] == '0' && pos + 1 < src_.size()) {
      char p = static_cast<char>(src_[pos + 1] | 0x20);
      auto bin = [](char ch) { return ch == '0' || ch == '1'; };
      auto oct = [](char ch) { return ch >= '0' && ch <= '7'; };
      auto hex = [](char ch) { return is_digit(ch) || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f'); };
      bool (*digit)(char) = p == 'b' ? +bin : p == 'o' ? +oct : p == 'x' ? +hex : nullptr;
      size_t q = pos + 2;
      if (digit && q < src_.size() && src_[q] == '_') ++q;
      size_t e = digit ? match_digits(src_, q, digit) : std::string::npos;
      if (e != std::string::npos) {
        base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
        end = e;
      } else {
        end = pos + 1;  // `0(_?0)*`: a leading zero only continues with zeros
        while (end < src_.size() && (src_[end] == '0' || (src_[end] == '_' && end + 1 < src_.size() && src_[end + 1] == '0')))
          ++end;
      }
    }
    std::string digits = without_underscores(src_.substr(pos, end - pos));
    if (base != 10) digits = digits.substr(2);
    errno = 0;
    long long value = std::strtoll(digits.c_str(), nullptr, base);
    if (errno == ERANGE) syntax_error(src_, pos, "integer literal too large");
    tokens_.push_back(Token{Tok::Integer, digits, value, 0.0, pos});
    return end;
  }

  size_t lex_string(size_t pos) {
    char quote = src_[pos];
    std::string raw;
    size_t k = pos + 1;
    for (; k < src_.size() && src_[k] != quote; ++k) {
      if (src_[k] == '\\' && k + 1 < src_.size()) raw.push_back(src_[k++]);
      raw.push_back(src_[k]);
    }
    if (k >= src_.size()) syntax_error(src_, pos, "unterminated string literal");
    tokens_.push_back(Token{Tok::String, unescape(raw, pos), 0, 0.0, pos});
    return k + 1;
  }

  // Python's unicode-escape decoding, which jinja2 applies to string literals.
  std::string unescape(const std::string& raw, size_t offset) const {
    std::string out;
    for (size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] != '\\' || k + 1 >= raw.size()) {
        out.push_back(raw[k]);
        continue;
      }
      char e = raw[++k];
      auto hex_escape = [&](size_t digits) {
        std::string h = raw.substr(k + 1, digits);
        if (h.size() != digits || h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
          syntax_error(src_, offset, "truncated \\" + std::string(1, e) + " escape in string literal");
        text::append_utf8(out, static_cast<char32_t>(std::strtoul(h.c_str(), nullptr, 16)));
        k += digits;
      };
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x': hex_escape(2); break;
        case 'u': hex_escape(4); break;
        case 'U': hex_escape(8); break;
        default:
          if (e >= '0' && e <= '7') {
            int value = 0, n = 0;
            while (n < 3 && k < raw.size() && raw[k] >= '0' && raw[k] <= '7') value = value * 8 + (raw[k++] - '0'), ++n;
            --k;
            text::append_utf8(out, static_cast<char32_t>(value));
          } else {
            out.push_back('\\');  // unknown escapes stay as written
            out.push_back(e);
          }
      }
    }
    return out;
  }

  const std::string& src_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(source).run(); }

}  // namespace stem::jinja
