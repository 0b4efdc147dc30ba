#include "structured/regex.h"

#include "structured/nfa.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace stem::structured {

namespace {

using namespace detail;

CodeSet digits() { return {{'0', '9'}}; }
CodeSet word() { return normalized({{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}); }
CodeSet space() { return normalized({{'\t', '\r'}, {' ', ' '}}); }  // \t \n \v \f \r and space

class Parser {
 public:
  explicit Parser(std::string_view p) : p_(p) {}

  // The pattern's root node.
  size_t parse() {
    if (!p_.empty() && p_[0] == '^') ++i_;
    const size_t root = alternation(0);
    if (i_ < p_.size()) {
      if (p_[i_] == ')') fail("an unmatched ')'", "unbalanced parenthesis ')'");
      if (p_[i_] == '$') fail("the anchor '$' inside the pattern", "'$' only at the pattern's end");
    }
    return root;
  }
  std::vector<Node>& nodes() { return nodes_; }

 private:
  [[noreturn]] void fail(const std::string& construct, const std::string& what) const {
    throw RegexError(construct, "regex: " + what + " (at offset " + std::to_string(i_) + " of the pattern)");
  }
  [[noreturn]] void refuse(const std::string& construct) const {
    throw RegexError(construct, "regex: " + construct + " is not supported (at offset " + std::to_string(i_) +
                                    " of the pattern; docs/api.md lists the subset)");
  }

  size_t add(Node n) {
    nodes_.push_back(std::move(n));
    return nodes_.size() - 1;
  }
  size_t set_node(CodeSet s) { return add(Node{Node::Set, std::move(s), {}, 0, -1}); }

  bool at_end_anchor() const { return p_[i_] == '$' && i_ + 1 == p_.size() && depth_ == 0; }

  size_t alternation(int depth) {
    std::vector<size_t> alts{concat()};
    while (i_ < p_.size() && p_[i_] == '|') {
      ++i_;
      alts.push_back(concat());
    }
    (void)depth;
    if (alts.size() == 1) return alts[0];
    return add(Node{Node::Alt, {}, std::move(alts), 0, -1});
  }

  size_t concat() {
    std::vector<size_t> items;
    while (i_ < p_.size() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$') {
        if (at_end_anchor()) {
          ++i_;
          break;
        }
        refuse("the anchor '$' inside the pattern");
      }
      items.push_back(repeat(atom()));
    }
    return add(Node{Node::Concat, {}, std::move(items), 0, -1});
  }

  bool digit_at(size_t k) const { return k < p_.size() && p_[k] >= '0' && p_[k] <= '9'; }

  int64_t number(size_t& k) const {
    int64_t v = 0;
    while (digit_at(k)) {
      v = std::min<int64_t>(v * 10 + (p_[k] - '0'), 1'000'000'000);
      ++k;
    }
    return v;
  }

  bool quantifier_at(size_t k) const {
    return k < p_.size() && (p_[k] == '*' || p_[k] == '+' || p_[k] == '?' || p_[k] == '{');
  }

  // An atom and its quantifier, if any: * + ? {m} {m,} {m,n} {,n}, then a lazy '?'.
  size_t repeat(size_t atom_node) {
    if (!quantifier_at(i_)) return atom_node;
    const char c = p_[i_];
    int64_t min = 0, max = -1;
    if (c == '{') {
      size_t k = i_ + 1;
      const bool has_min = digit_at(k);
      min = number(k);
      bool ok = true;
      if (k < p_.size() && p_[k] == ',') {
        ++k;
        max = digit_at(k) ? number(k) : -1;
        ok = has_min || max >= 0;  // not "{,}"
      } else {
        max = min;
        ok = has_min;
      }
      if (!ok || k >= p_.size() || p_[k] != '}')
        fail("a '{' that does not start a repetition",
             "a '{' must start a repetition {m}, {m,}, {m,n} or {,n}; write '\\{' for the character");
      if (max >= 0 && max < min) fail("a repetition {m,n} with n < m", "a repetition {m,n} needs m <= n");
      if (min > kMaxRegexRepeat || max > kMaxRegexRepeat)
        fail("a repetition count above " + std::to_string(kMaxRegexRepeat),
             "repetition counts above " + std::to_string(kMaxRegexRepeat) + " are not supported");
      i_ = k + 1;
    } else {
      min = c == '+' ? 1 : 0;
      max = c == '?' ? 1 : -1;
      ++i_;
    }
    if (i_ < p_.size() && p_[i_] == '?') {
      ++i_;  // lazy: the same texts match
    } else if (i_ < p_.size() && p_[i_] == '+') {
      refuse("the possessive quantifier '" + std::string(1, c == '{' ? '}' : c) + "+'");
    }
    if (quantifier_at(i_)) refuse("a repeated quantifier ('" + std::string(1, p_[i_]) + "' after a quantifier)");
    return add(Node{Node::Repeat, {}, {atom_node}, min, max});
  }

  uint32_t hex(size_t digits_count, const char* what) {
    uint32_t v = 0;
    for (size_t k = 0; k < digits_count; ++k, ++i_) {
      if (i_ >= p_.size()) fail(what, std::string("a ") + what + " escape needs " + std::to_string(digits_count) + " hex digits");
      const char c = p_[i_];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail(what, std::string("a ") + what + " escape needs " + std::to_string(digits_count) + " hex digits");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  }

  // A code point of the pattern's UTF-8 at i_.
  uint32_t code_point() {
    const auto b0 = static_cast<uint8_t>(p_[i_]);
    int n = b0 < 0x80 ? 1 : (b0 & 0xE0) == 0xC0 ? 2 : (b0 & 0xF0) == 0xE0 ? 3 : (b0 & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i_ + static_cast<size_t>(n) > p_.size()) fail("invalid UTF-8", "the pattern is not valid UTF-8");
    uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
    for (int k = 1; k < n; ++k) {
      const auto b = static_cast<uint8_t>(p_[i_ + static_cast<size_t>(k)]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8", "the pattern is not valid UTF-8");
      cp = (cp << 6) | (b & 0x3Fu);
    }
    static const uint32_t min_of[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_of[n] || cp > kMaxCodePoint || (cp >= 0xD800 && cp <= 0xDFFF))
      fail("invalid UTF-8", "the pattern is not valid UTF-8");
    i_ += static_cast<size_t>(n);
    return cp;
  }

  // After a backslash (i_ at the escaped character): the set it stands for. In a class, \b is
  // the backspace character.
  CodeSet escape(bool in_class) {
    last_escape_is_class_ = false;
    if (i_ >= p_.size()) fail("a trailing backslash", "the pattern ends with a lone '\\'");
    const char c = p_[i_];
    const auto one = [](uint32_t cp) { return CodeSet{{cp, cp}}; };
    switch (c) {
      case 'd': ++i_; last_escape_is_class_ = true; return digits();
      case 'D': ++i_; last_escape_is_class_ = true; return complement(digits());
      case 'w': ++i_; last_escape_is_class_ = true; return word();
      case 'W': ++i_; last_escape_is_class_ = true; return complement(word());
      case 's': ++i_; last_escape_is_class_ = true; return space();
      case 'S': ++i_; last_escape_is_class_ = true; return complement(space());
      case 'n': ++i_; return one('\n');
      case 't': ++i_; return one('\t');
      case 'r': ++i_; return one('\r');
      case 'f': ++i_; return one('\f');
      case 'v': ++i_; return one('\v');
      case 'a': ++i_; return one('\a');
      case 'x': ++i_; return one(hex(2, "\\x"));
      case 'u': {
        ++i_;
        const uint32_t cp = hex(4, "\\u");
        if (cp >= 0xD800 && cp <= 0xDFFF) fail("a surrogate '\\u" + std::string(p_.substr(i_ - 4, 4)) + "'",
                                               "surrogate code points (\\uD800-\\uDFFF) are not characters");
        return one(cp);
      }
      case '0':
        if (digit_at(i_ + 1)) refuse("an octal escape '\\0" + std::string(1, p_[i_ + 1]) + "'");
        ++i_;
        return one(0);
      case 'b':
        if (in_class) {
          ++i_;
          return one('\b');
        }
        refuse("the word boundary '\\b'");
      case 'B': refuse("the word boundary '\\B'");
      case 'A': refuse("the anchor '\\A'");
      case 'Z': refuse("the anchor '\\Z'");
      case 'z': refuse("the anchor '\\z'");
      case 'G': refuse("the anchor '\\G'");
      case 'p': case 'P': refuse("the Unicode property '\\" + std::string(1, c) + "{...}'");
      case 'k': refuse("the named backreference '\\k<...>'");
      default: break;
    }
    if (c >= '1' && c <= '9') refuse("the backreference '\\" + std::string(1, c) + "'");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) refuse("the escape '\\" + std::string(1, c) + "'");
    const uint32_t cp = code_point();  // escaped punctuation (or any other character) is itself
    return one(cp);
  }

  // i_ just past '['.
  size_t char_class() {
    const size_t open = i_ - 1;
    bool negate = false;
    if (i_ < p_.size() && p_[i_] == '^') {
      negate = true;
      ++i_;
    }
    CodeSet set;
    bool first = true;
    while (true) {
      if (i_ >= p_.size()) {
        i_ = open;
        fail("an unterminated class '['", "the class '[' has no closing ']'");
      }
      const char c = p_[i_];
      if (c == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      if (c == '[' && i_ + 1 < p_.size() && (p_[i_ + 1] == ':' || p_[i_ + 1] == '=' || p_[i_ + 1] == '.'))
        refuse("the POSIX class '[" + std::string(1, p_[i_ + 1]) + "...'");
      // One item: a character (a range's start) or a class escape.
      CodeSet item;
      bool single = true;
      if (c == '\\') {
        ++i_;
        item = escape(true);
        single = !last_escape_is_class_;
      } else {
        const uint32_t cp = code_point();
        item = {{cp, cp}};
      }
      if (single && i_ + 1 < p_.size() && p_[i_] == '-' && p_[i_ + 1] != ']') {
        ++i_;
        uint32_t hi;
        if (p_[i_] == '\\') {
          ++i_;
          const CodeSet end = escape(true);
          if (last_escape_is_class_)
            fail("a range that ends in a class escape", "a range in a class must end in one character");
          hi = end[0].first;
        } else {
          hi = code_point();
        }
        if (hi < item[0].first) fail("a reversed range in a class", "a range in a class must go up (a-z, not z-a)");
        item[0].second = hi;
      }
      set.insert(set.end(), item.begin(), item.end());
    }
    set = normalized(std::move(set));
    return set_node(negate ? complement(set) : set);
  }

  size_t atom() {
    const char c = p_[i_];
    switch (c) {
      case '(': {
        const size_t open = i_;
        ++i_;
        if (i_ < p_.size() && p_[i_] == '?') {
          const std::string_view rest = p_.substr(i_);
          i_ = open;  // where a refused group starts
          if (rest.rfind("?:", 0) == 0) {
            i_ = open + 3;
          } else if (rest.rfind("?P<", 0) == 0 || (rest.rfind("?<", 0) == 0 && rest.size() > 2 && rest[2] != '=' &&
                                                     rest[2] != '!')) {
            const size_t close = p_.find('>', open);
            if (close == std::string_view::npos) fail("an unterminated group name", "a group name needs its '>'");
            i_ = close + 1;
          } else if (rest.rfind("?=", 0) == 0) {
            refuse("the lookahead '(?='");
          } else if (rest.rfind("?!", 0) == 0) {
            refuse("the negative lookahead '(?!'");
          } else if (rest.rfind("?<=", 0) == 0) {
            refuse("the lookbehind '(?<='");
          } else if (rest.rfind("?<!", 0) == 0) {
            refuse("the negative lookbehind '(?<!'");
          } else if (rest.rfind("?P=", 0) == 0) {
            refuse("the named backreference '(?P='");
          } else if (rest.rfind("?#", 0) == 0) {
            refuse("the comment group '(?#'");
          } else if (rest.rfind("?>", 0) == 0) {
            refuse("the atomic group '(?>'");
          } else if (rest.rfind("?(", 0) == 0) {
            refuse("the conditional group '(?('");
          } else {
            refuse("the inline flag group '(" + std::string(rest.substr(0, std::min<size_t>(rest.size(), 3))) + "'");
          }
        }
        ++depth_;
        if (depth_ > 200) fail("groups nested deeper than 200", "groups nested deeper than 200 are not supported");
        const size_t inner = alternation(depth_);
        --depth_;
        if (i_ >= p_.size() || p_[i_] != ')') {
          i_ = open;
          fail("an unclosed group '('", "the group '(' has no closing ')'");
        }
        ++i_;
        return inner;
      }
      case '[':
        ++i_;
        return char_class();
      case '.':
        ++i_;
        return set_node(complement({{'\n', '\n'}}));
      case '\\':
        ++i_;
        return set_node(escape(false));
      case '^':
        refuse("the anchor '^' inside the pattern");
      case '*':
      case '+':
      case '?':
        fail("nothing to repeat before '" + std::string(1, c) + "'", "'" + std::string(1, c) + "' has nothing to repeat");
      case '{': {
        size_t k = i_ + 1;
        if (digit_at(k) || (k < p_.size() && p_[k] == ','))
          fail("nothing to repeat before '{'", "'{' has nothing to repeat");
        fail("a '{' that does not start a repetition",
             "a '{' must start a repetition {m}, {m,}, {m,n} or {,n}; write '\\{' for the character");
      }
      default: {
        const uint32_t cp = code_point();
        return set_node({{cp, cp}});
      }
    }
  }

  std::string_view p_;
  size_t i_ = 0;
  int depth_ = 0;
  bool last_escape_is_class_ = false;
  std::vector<Node> nodes_;
};

std::vector<Node> parse_pattern(std::string_view pattern, size_t& root) {
  Parser p(pattern);
  root = p.parse();
  return std::move(p.nodes());
}

// The pattern's rule in `g`: raw text, or (json_string) a JSON string literal of it.
int32_t add_rule(Grammar& g, const std::vector<Node>& nodes, size_t root, bool json_string) {
  Nfa nfa(json_string);
  const int32_t start = nfa.state(), final_state = nfa.state();
  if (!json_string) {
    nfa.build(nodes, root, start, final_state);
    return nfa.emit(g, start, final_state);
  }
  const int32_t open = nfa.state(), close = nfa.state();
  nfa.byte(start, '"', '"', open);
  nfa.build(nodes, root, open, close);
  nfa.byte(close, '"', '"', final_state);
  return nfa.emit(g, start, final_state);
}

}  // namespace

void check_regex(std::string_view pattern) {
  size_t root = 0;
  (void)parse_pattern(pattern, root);
}

Grammar compile_regex(std::string_view pattern) {
  size_t root = 0;
  const std::vector<Node> nodes = parse_pattern(pattern, root);
  Grammar g;
  g.set_root(add_rule(g, nodes, root, false));
  return g;
}

Grammar compile_choice(const std::vector<std::string>& choices) {
  Grammar g;
  const int32_t start = g.add_state();
  for (int32_t end : g.literals(start, choices)) g.set_accept(end);
  g.set_root(start);
  return g;
}

int32_t add_json_string_regex(Grammar& g, std::string_view pattern) {
  size_t root = 0;
  const std::vector<Node> nodes = parse_pattern(pattern, root);
  return add_rule(g, nodes, root, true);
}

int32_t add_json_string_length(Grammar& g, int64_t min_chars, int64_t max_chars) {
  if (min_chars < 0 || min_chars > kMaxRegexRepeat || max_chars > kMaxRegexRepeat || (max_chars >= 0 && max_chars < min_chars))
    throw RegexError("a length bound", "string length bounds must be in [0, " + std::to_string(kMaxRegexRepeat) +
                                           "] with minLength <= maxLength");
  std::vector<Node> nodes;
  nodes.push_back(Node{Node::Set, CodeSet{{0, kMaxCodePoint}}, {}, 0, -1});
  nodes.push_back(Node{Node::Repeat, {}, {0}, min_chars, max_chars});
  return add_rule(g, nodes, 1, true);
}

}  // namespace stem::structured
