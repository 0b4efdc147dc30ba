#include "structured/ebnf.h"

#include <functional>
#include <map>
#include <vector>

#include "structured/nfa.h"

namespace stem::structured {

namespace {

using namespace detail;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

class Parser {
 public:
  explicit Parser(std::string_view t) : t_(t) {}

  struct Rule {
    std::string name;
    size_t body = 0;     // its node
    size_t where = 0;    // the offset of its name
  };

  void parse() {
    skip_space();
    while (i_ < t_.size()) {
      const size_t at = i_;
      const std::string name = read_name();
      if (name.empty()) fail("a rule that does not start with a name", "expected a rule 'name ::= ...'");
      skip_space();
      if (t_.substr(i_, 3) != "::=") fail("a rule without '::='", "expected '::=' after the rule name '" + name + "'");
      i_ += 3;
      if (index_.count(name) && defined_[static_cast<size_t>(index_[name])]) {
        i_ = at;
        fail("a rule defined twice", "the rule '" + name + "' is defined twice");
      }
      const int32_t id = rule_index(name, at);
      defined_[static_cast<size_t>(id)] = true;
      const size_t body = alternation();
      rules_[static_cast<size_t>(id)].body = body;
      rules_[static_cast<size_t>(id)].where = at;
      skip_space();
    }
    for (size_t r = 0; r < rules_.size(); ++r)
      if (!defined_[r]) {
        i_ = rules_[r].where;
        fail("an undefined rule", "the rule '" + rules_[r].name + "' is used but not defined");
      }
    if (!index_.count("root")) {
      i_ = 0;
      fail("no rule 'root'", "the grammar has no rule 'root' (the whole text)");
    }
  }

  std::vector<Node>& nodes() { return nodes_; }
  const std::vector<Rule>& rules() const { return rules_; }
  int32_t root() const { return index_.at("root"); }
  // "line L, column C" of an offset.
  std::string where(size_t at) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < at && k < t_.size(); ++k) {
      if (t_[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }

 private:
  [[noreturn]] void fail(const std::string& construct, const std::string& what) const {
    throw EbnfError(construct, "grammar: " + what + " (at " + where(i_) + ")");
  }

  size_t add(Node n) {
    nodes_.push_back(std::move(n));
    return nodes_.size() - 1;
  }

  int32_t rule_index(const std::string& name, size_t at) {
    auto it = index_.find(name);
    if (it != index_.end()) return it->second;
    if (rules_.size() >= kMaxGrammarRules)
      fail("too many rules", "a grammar may have at most " + std::to_string(kMaxGrammarRules) + " rules");
    rules_.push_back({name, 0, at});
    defined_.push_back(false);
    return index_[name] = static_cast<int32_t>(rules_.size() - 1);
  }

  void skip_space() {
    while (i_ < t_.size()) {
      const char c = t_[i_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++i_;
      } else if (c == '#') {
        while (i_ < t_.size() && t_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }

  std::string read_name() {
    const size_t start = i_;
    while (i_ < t_.size() && name_char(t_[i_])) ++i_;
    return std::string(t_.substr(start, i_ - start));
  }

  // At i_, a name followed by '::=': the next rule starts here.
  bool at_rule_start() {
    const size_t save = i_;
    const std::string name = read_name();
    skip_space();
    const bool yes = !name.empty() && t_.substr(i_, 3) == "::=";
    i_ = save;
    return yes;
  }

  size_t alternation() {
    std::vector<size_t> alts{sequence()};
    while (i_ < t_.size() && t_[i_] == '|') {
      ++i_;
      alts.push_back(sequence());
    }
    if (alts.size() == 1) return alts[0];
    return add(Node{Node::Alt, {}, std::move(alts), 0, -1, -1});
  }

  size_t sequence() {
    std::vector<size_t> items;
    while (true) {
      skip_space();
      if (i_ >= t_.size() || t_[i_] == '|' || t_[i_] == ')') break;
      if (name_char(t_[i_]) && at_rule_start()) break;
      items.push_back(postfix(primary()));
    }
    return add(Node{Node::Concat, {}, std::move(items), 0, -1, -1});
  }

  bool digit_at(size_t k) const { return k < t_.size() && t_[k] >= '0' && t_[k] <= '9'; }
  int64_t number() {
    int64_t v = 0;
    while (digit_at(i_)) v = std::min<int64_t>(v * 10 + (t_[i_++] - '0'), 1'000'000'000);
    return v;
  }

  size_t postfix(size_t node) {
    while (i_ < t_.size()) {
      const char c = t_[i_];
      int64_t min = 0, max = -1;
      if (c == '*' || c == '+' || c == '?') {
        min = c == '+' ? 1 : 0;
        max = c == '?' ? 1 : -1;
        ++i_;
      } else if (c == '{') {
        ++i_;
        skip_space();
        if (!digit_at(i_)) fail("a malformed repetition '{'", "a repetition is {m}, {m,} or {m,n}");
        min = number();
        skip_space();
        max = min;
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          skip_space();
          max = digit_at(i_) ? number() : -1;
          skip_space();
        }
        if (i_ >= t_.size() || t_[i_] != '}') fail("a malformed repetition '{'", "a repetition is {m}, {m,} or {m,n}");
        ++i_;
        if (max >= 0 && max < min) fail("a repetition {m,n} with n < m", "a repetition {m,n} needs m <= n");
        if (min > kMaxRegexRepeat || max > kMaxRegexRepeat)
          fail("a repetition count above " + std::to_string(kMaxRegexRepeat),
               "repetition counts above " + std::to_string(kMaxRegexRepeat) + " are not supported");
      } else {
        break;
      }
      node = add(Node{Node::Repeat, {}, {node}, min, max, -1});
    }
    return node;
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k, ++i_) {
      const char c = i_ < t_.size() ? t_[i_] : '\0';
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("a malformed hex escape", "a \\x, \\u or \\U escape needs " + std::to_string(digits) + " hex digits");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    if (v > kMaxCodePoint || (v >= 0xD800 && v <= 0xDFFF)) fail("an escape that is not a character", "the escape is not a Unicode character");
    return v;
  }

  // One character of a string or class, escapes decoded.
  uint32_t character() {
    if (i_ >= t_.size()) fail("an unterminated string or class", "the text ends inside a string or class");
    if (t_[i_] == '\\') {
      ++i_;
      if (i_ >= t_.size()) fail("an unterminated string or class", "the text ends inside a string or class");
      const char e = t_[i_++];
      switch (e) {
        case 'n': return '\n';
        case 't': return '\t';
        case 'r': return '\r';
        case 'f': return '\f';
        case 'v': return '\v';
        case '0': return 0;
        case '\\': case '"': case '[': case ']': case '-': case '^': case '\'': case '/': case '.': return static_cast<uint8_t>(e);
        case 'x': return hex(2);
        case 'u': return hex(4);
        case 'U': return hex(8);
        default:
          --i_;
          fail("the escape '\\" + std::string(1, e) + "'", "the escape '\\" + std::string(1, e) + "' is not supported");
      }
    }
    const auto b0 = static_cast<uint8_t>(t_[i_]);
    const int n = b0 < 0x80 ? 1 : (b0 & 0xE0) == 0xC0 ? 2 : (b0 & 0xF0) == 0xE0 ? 3 : (b0 & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i_ + static_cast<size_t>(n) > t_.size()) fail("invalid UTF-8", "the grammar is not valid UTF-8");
    uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
    for (int k = 1; k < n; ++k) {
      const auto b = static_cast<uint8_t>(t_[i_ + static_cast<size_t>(k)]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8", "the grammar is not valid UTF-8");
      cp = (cp << 6) | (b & 0x3Fu);
    }
    static const uint32_t min_of[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_of[n] || cp > kMaxCodePoint || (cp >= 0xD800 && cp <= 0xDFFF))
      fail("invalid UTF-8", "the grammar is not valid UTF-8");
    i_ += static_cast<size_t>(n);
    return cp;
  }

  size_t primary() {
    const char c = t_[i_];
    if (c == '"') {
      const size_t open = i_++;
      std::vector<size_t> chars;
      while (true) {
        if (i_ >= t_.size()) {
          i_ = open;
          fail("an unterminated string", "the string has no closing '\"'");
        }
        if (t_[i_] == '"') {
          ++i_;
          break;
        }
        const uint32_t cp = character();
        chars.push_back(add(Node{Node::Set, {{cp, cp}}, {}, 0, -1, -1}));
      }
      return add(Node{Node::Concat, {}, std::move(chars), 0, -1, -1});
    }
    if (c == '[') {
      const size_t open = i_++;
      bool negate = false;
      if (i_ < t_.size() && t_[i_] == '^') {
        negate = true;
        ++i_;
      }
      CodeSet set;
      while (true) {
        if (i_ >= t_.size()) {
          i_ = open;
          fail("an unterminated class '['", "the class '[' has no closing ']'");
        }
        if (t_[i_] == ']') {
          ++i_;
          break;
        }
        const uint32_t lo = character();
        uint32_t hi = lo;
        if (i_ + 1 < t_.size() && t_[i_] == '-' && t_[i_ + 1] != ']') {
          ++i_;
          hi = character();
          if (hi < lo) fail("a reversed range in a class", "a range in a class must go up (a-z, not z-a)");
        }
        set.push_back({lo, hi});
      }
      set = normalized(std::move(set));
      return add(Node{Node::Set, negate ? complement(set) : set, {}, 0, -1, -1});
    }
    if (c == '.') {
      ++i_;
      return add(Node{Node::Set, {{0, kMaxCodePoint}}, {}, 0, -1, -1});
    }
    if (c == '(') {
      const size_t open = i_++;
      if (++depth_ > 200) fail("groups nested deeper than 200", "groups nested deeper than 200 are not supported");
      const size_t inner = alternation();
      --depth_;
      skip_space();
      if (i_ >= t_.size() || t_[i_] != ')') {
        i_ = open;
        fail("an unclosed group '('", "the group '(' has no closing ')'");
      }
      ++i_;
      return inner;
    }
    if (name_char(c)) {
      const size_t at = i_;
      const std::string name = read_name();
      return add(Node{Node::Call, {}, {}, 0, -1, rule_index(name, at)});
    }
    if (c == '\'') fail("a single-quoted string", "strings are written in double quotes");
    fail("the character '" + std::string(1, c) + "'", "unexpected '" + std::string(1, c) + "'");
  }

  std::string_view t_;
  size_t i_ = 0;
  int depth_ = 0;
  std::vector<Node> nodes_;
  std::vector<Rule> rules_;
  std::vector<bool> defined_;
  std::map<std::string, int32_t> index_;
};

}  // namespace

Grammar compile_gbnf(std::string_view text) {
  Parser p(text);
  p.parse();
  const auto& rules = p.rules();
  Nfa nfa(false);
  std::vector<std::pair<int32_t, int32_t>> ends;  // each rule's start and final NFA state
  for (const auto& r : rules) {
    const int32_t start = nfa.state(), final_state = nfa.state();
    try {
      nfa.build(p.nodes(), r.body, start, final_state);
    } catch (const RegexError& e) {  // too many states
      std::string what = e.what();
      if (what.rfind("regex: ", 0) == 0) what = what.substr(7);
      throw EbnfError(e.construct(), "grammar: " + what + " (in rule '" + r.name + "')");
    }
    ends.push_back({start, final_state});
  }
  // Nullable rules (may derive the empty text), then the calls each rule can make before it reads
  // a byte: a cycle among those is left recursion, which a top-down matcher cannot run.
  const size_t n = rules.size();
  std::vector<bool> nullable(n, false);
  // The NFA states reachable from `from` without reading a byte; `on_call` sees each call met.
  auto reach = [&](int32_t from, const std::function<void(int32_t)>& on_call) {
    std::vector<int32_t> stack{from};
    std::vector<int32_t> seen{from};
    std::vector<int32_t> out;
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      out.push_back(s);
      auto push = [&](int32_t t) {
        if (std::find(seen.begin(), seen.end(), t) != seen.end()) return;
        seen.push_back(t);
        stack.push_back(t);
      };
      for (int32_t t : nfa.eps_of(s)) push(t);
      for (const auto& [rule, to] : nfa.calls_of(s)) {
        if (on_call) on_call(rule);
        if (nullable[static_cast<size_t>(rule)]) push(to);
      }
    }
    return out;
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      const std::vector<int32_t> states = reach(ends[r].first, nullptr);
      if (std::find(states.begin(), states.end(), ends[r].second) != states.end()) nullable[r] = changed = true;
    }
  }
  std::vector<std::vector<int32_t>> left(n);
  for (size_t r = 0; r < n; ++r) reach(ends[r].first, [&](int32_t callee) { left[r].push_back(callee); });
  std::vector<int> color(n, 0);  // 0 unseen, 1 on the path, 2 done
  std::function<void(size_t)> visit = [&](size_t r) {
    color[r] = 1;
    for (int32_t c : left[r]) {
      const auto k = static_cast<size_t>(c);
      if (color[k] == 1)
        throw EbnfError("left recursion", "grammar: the rule '" + rules[k].name + "' can reach itself before reading a "
                                          "character (left recursion is not supported; at " + p.where(rules[k].where) + ")");
      if (color[k] == 0) visit(k);
    }
    color[r] = 2;
  };
  for (size_t r = 0; r < n; ++r)
    if (color[r] == 0) visit(r);
  Grammar g;
  const std::vector<int32_t> starts = nfa.emit(g, ends);
  g.set_root(starts[static_cast<size_t>(p.root())]);
  return g;
}

}  // namespace stem::structured
