// Recursive descent over the token stream, one function per jinja2 grammar rule and in jinja2's
// precedence order (condexpr < or < and < not < compare < + - < ~ < * / // % < ** < unary <
// primary/postfix/filters), so that expressions group exactly as they do in Python's jinja2.
#include <algorithm>

#include "engine/chat_template_ast.h"
#include "engine/chat_template_ops.h"

namespace stem::jinja {
namespace {

ExprPtr make(ExprKind kind, size_t offset) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->offset = offset;
  return e;
}

ExprPtr make2(ExprKind kind, size_t offset, ExprPtr a, ExprPtr b) {
  auto e = make(kind, offset);
  e->children.push_back(std::move(a));
  e->children.push_back(std::move(b));
  return e;
}

class Parser {
 public:
  Parser(const std::string& src, std::vector<Token> toks) : src_(src), toks_(std::move(toks)) {}

  Body parse_template() {
    Body body = subparse({});
    return body;
  }

 private:
  // ---- token stream ----
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek() const { return toks_[std::min(pos_ + 1, toks_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_name(const char* v) const { return cur().type == Tok::Name && cur().text == v; }
  bool is_op(const char* v) const { return cur().type == Tok::Op && cur().text == v; }
  bool skip_name(const char* v) {
    if (!is_name(v)) return false;
    next();
    return true;
  }
  bool skip_op(const char* v) {
    if (!is_op(v)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template data";
      case Tok::VarBegin: return "begin of print statement";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockBegin: return "begin of statement block";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::String: return "string";
      case Tok::Integer: return "integer";
      case Tok::Float: return "float";
      case Tok::Eof: return "end of template";
      default: return t.text;
    }
  }
  [[noreturn]] void fail_here(const std::string& msg) const { syntax_error(src_, cur().offset, msg); }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail_here(std::string("expected ") + what + ", got '" + describe(cur()) + "'");
    next();
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_here(std::string("expected '") + op + "', got '" + describe(cur()) + "'");
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail_here("expected a name, got '" + describe(cur()) + "'");
    std::string n = cur().text;
    next();
    return n;
  }

  // ---- statements ----
  Body subparse(const std::vector<std::string>& end_tags) {
    Body body;
    while (cur().type != Tok::Eof) {
      if (cur().type == Tok::Data) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Text;
        s->offset = cur().offset;
        s->text = cur().text;
        body.push_back(std::move(s));
        next();
      } else if (cur().type == Tok::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Output;
        next();
        s->offset = cur().offset;
        s->expr = parse_tuple(false, true, {}, false);
        expect(Tok::VarEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (cur().type == Tok::BlockBegin) {
        next();
        if (cur().type == Tok::Name && std::count(end_tags.begin(), end_tags.end(), cur().text)) return body;
        parse_statement(body);
        expect(Tok::BlockEnd, "end of statement block");
      } else {
        fail_here("unexpected '" + describe(cur()) + "'");
      }
    }
    return body;
  }

  Body parse_statements(const std::vector<std::string>& end_tags, bool drop_needle) {
    expect(Tok::BlockEnd, "end of statement block");
    Body body = subparse(end_tags);
    if (cur().type == Tok::Eof) {
      std::string names;
      for (const auto& t : end_tags) names += (names.empty() ? "'" : " or '") + t + "'";
      fail_here("unexpected end of template, expected " + names);
    }
    if (drop_needle) next();
    return body;
  }

  void parse_statement(Body& out) {
    if (cur().type != Tok::Name) fail_here("tag name expected");
    const std::string tag = cur().text;
    size_t offset = cur().offset;
    auto s = std::make_unique<Stmt>();
    s->offset = offset;
    if (tag == "for") {
      parse_for(*s);
    } else if (tag == "if") {
      parse_if(*s);
    } else if (tag == "set") {
      parse_set(*s);
    } else if (tag == "macro") {
      parse_macro(*s);
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail_here("'" + tag + "' outside of a loop");
      next();
      s->kind = tag == "break" ? StmtKind::Break : StmtKind::Continue;
    } else if (tag == "generation") {
      // transformers' {% generation %} marks assistant text for masks; it renders its body as is.
      next();
      Body inner = parse_statements({"endgeneration"}, true);
      for (auto& st : inner) out.push_back(std::move(st));
      return;
    } else if (tag == "call" || tag == "filter" || tag == "with" || tag == "block" || tag == "extends" ||
               tag == "include" || tag == "import" || tag == "from" || tag == "autoescape" || tag == "do") {
      fail_here("the '" + tag + "' tag is not supported by stemserve's chat template renderer");
    } else {
      fail_here("encountered unknown tag '" + tag + "'");
    }
    out.push_back(std::move(s));
  }

  void parse_for(Stmt& s) {
    next();
    s.kind = StmtKind::For;
    parse_assign_names(s, false, "in");
    if (!skip_name("in")) fail_here("expected 'in', got '" + describe(cur()) + "'");
    s.expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s.loop_filter = parse_expression(true);
    if (is_name("recursive")) fail_here("recursive loops are not supported");
    ++loop_depth_;
    s.body = parse_statements({"endfor", "else"}, false);
    --loop_depth_;
    bool has_else = cur().text == "else";
    next();
    if (has_else) s.else_body = parse_statements({"endfor"}, true);
  }

  void parse_if(Stmt& s) {
    next();
    s.kind = StmtKind::If;
    while (true) {
      s.conditions.push_back(parse_tuple(false, false, {}, false));
      s.branches.push_back(parse_statements({"elif", "else", "endif"}, false));
      std::string tag = cur().text;
      next();
      if (tag == "elif") continue;
      if (tag == "else") s.else_body = parse_statements({"endif"}, true);
      break;
    }
  }

  void parse_set(Stmt& s) {
    next();
    parse_assign_names(s, true, nullptr);
    if (skip_op("=")) {
      s.kind = StmtKind::Set;
      s.expr = parse_tuple(false, true, {}, false);
      return;
    }
    if (is_op("|")) fail_here("filtered {% set %} blocks are not supported");
    if (!s.attr.empty() || s.targets.size() != 1) fail_here("a {% set %} block assigns one name");
    s.kind = StmtKind::SetBlock;
    s.body = parse_statements({"endset"}, true);
  }

  void parse_macro(Stmt& s) {
    next();
    s.kind = StmtKind::Macro;
    s.targets.push_back(expect_name());
    expect_op("(");
    while (!is_op(")")) {
      if (!s.params.empty()) expect_op(",");
      Arg param;
      param.name = expect_name();
      if (skip_op("=")) param.value = parse_expression(true);
      else if (!s.params.empty() && s.params.back().value) fail_here("non-default argument follows default argument");
      s.params.push_back(std::move(param));
    }
    next();
    int saved = loop_depth_;
    loop_depth_ = 0;
    s.body = parse_statements({"endmacro"}, true);
    loop_depth_ = saved;
  }

  // `a`, `a, b`, `(a, b)` and for {% set %} `ns.attr`.
  void parse_assign_names(Stmt& s, bool with_namespace, const char* end_name) {
    bool paren = skip_op("(");
    while (true) {
      if (end_name && is_name(end_name)) break;
      std::string n = expect_name();
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None")
        fail_here("can't assign to '" + n + "'");
      if (with_namespace && !paren && s.targets.empty() && skip_op(".")) s.attr = expect_name();
      s.targets.push_back(n);
      if (!skip_op(",")) break;
      if (!s.attr.empty()) fail_here("can't assign to a tuple with a namespace attribute");
    }
    if (paren) expect_op(")");
    if (s.targets.empty()) fail_here("expected an assignment target");
  }

  // ---- expressions ----
  bool is_tuple_end(const std::vector<std::string>& extra) const {
    Tok t = cur().type;
    if (t == Tok::VarEnd || t == Tok::BlockEnd || t == Tok::Eof || (t == Tok::Op && cur().text == ")")) return true;
    return t == Tok::Name && std::count(extra.begin(), extra.end(), cur().text);
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens) {
    size_t offset = cur().offset;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail_here("expected an expression, got '" + describe(cur()) + "'");
    }
    auto e = make(ExprKind::Tuple, offset);
    e->children = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      size_t offset = cur().offset;
      next();
      ExprPtr cond = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_condexpr() : nullptr;
      auto e = make(ExprKind::CondExpr, offset);
      e->children.push_back(std::move(cond));
      e->children.push_back(std::move(expr));
      e->children.push_back(std::move(otherwise));
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      size_t offset = cur().offset;
      next();
      left = make2(ExprKind::Or, offset, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      size_t offset = cur().offset;
      next();
      left = make2(ExprKind::And, offset, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      auto e = make(ExprKind::Not, cur().offset);
      next();
      e->children.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    size_t offset = cur().offset;
    ExprPtr first = parse_math1();
    auto e = make(ExprKind::Compare, offset);
    e->children.push_back(std::move(first));
    while (true) {
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        e->ops.push_back(cur().text);
        next();
      } else if (skip_name("in")) {
        e->ops.push_back("in");
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        next();
        next();
        e->ops.push_back("notin");
      } else {
        break;
      }
      e->children.push_back(parse_math1());
    }
    if (e->ops.empty()) return std::move(e->children[0]);
    return e;
  }

  ExprPtr parse_binary_level(ExprPtr (Parser::*operand)(), std::initializer_list<const char*> ops) {
    ExprPtr left = (this->*operand)();
    while (cur().type == Tok::Op &&
           std::any_of(ops.begin(), ops.end(), [&](const char* o) { return cur().text == o; })) {
      auto e = make(ExprKind::Binary, cur().offset);
      e->name = cur().text;
      next();
      e->children.push_back(std::move(left));
      e->children.push_back((this->*operand)());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr parse_math1() { return parse_binary_level(&Parser::parse_concat, {"+", "-"}); }
  ExprPtr parse_math2() { return parse_binary_level(&Parser::parse_pow, {"*", "/", "//", "%"}); }
  ExprPtr parse_pow() { return parse_binary_level(&Parser::parse_unary_filtered, {"**"}); }

  ExprPtr parse_concat() {
    size_t offset = cur().offset;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(ExprKind::Concat, offset);
    e->children.push_back(std::move(first));
    while (skip_op("~")) e->children.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_unary_filtered() { return parse_unary(true); }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      node = make(is_op("-") ? ExprKind::Neg : ExprKind::Pos, cur().offset);
      next();
      node->children.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    size_t offset = t.offset;
    if (t.type == Tok::Name) {
      auto e = make(ExprKind::Literal, offset);
      if (t.text == "true" || t.text == "True") e->literal = Value::boolean(true);
      else if (t.text == "false" || t.text == "False") e->literal = Value::boolean(false);
      else if (t.text == "none" || t.text == "None") e->literal = Value::none();
      else {
        e->kind = ExprKind::Name;
        e->name = t.text;
      }
      next();
      return e;
    }
    if (t.type == Tok::String) {
      std::string joined;
      while (cur().type == Tok::String) {  // adjacent literals concatenate, as in Python
        joined += cur().text;
        next();
      }
      auto e = make(ExprKind::Literal, offset);
      e->literal = Value::string(std::move(joined));
      return e;
    }
    if (t.type == Tok::Integer || t.type == Tok::Float) {
      auto e = make(ExprKind::Literal, offset);
      e->literal = t.type == Tok::Integer ? Value::integer(t.int_value) : Value::number(t.float_value);
      next();
      return e;
    }
    if (skip_op("(")) {
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[") || is_op("{")) {
      bool is_list = is_op("[");
      const char* close = is_list ? "]" : "}";
      auto e = make(is_list ? ExprKind::List : ExprKind::Dict, offset);
      next();
      while (!is_op(close)) {
        if (!e->children.empty()) expect_op(",");
        if (is_op(close)) break;
        e->children.push_back(parse_expression(true));
        if (!is_list) {
          expect_op(":");
          e->children.push_back(parse_expression(true));
        }
      }
      next();
      return e;
    }
    fail_here("unexpected '" + describe(t) + "'");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) node = parse_subscript(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) node = parse_filter(std::move(node));
      else if (is_name("is")) node = parse_test(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    size_t offset = cur().offset;
    if (skip_op(".")) {
      if (cur().type == Tok::Name) {
        auto e = make(ExprKind::Attr, offset);
        e->name = cur().text;
        next();
        e->children.push_back(std::move(node));
        return e;
      }
      if (cur().type != Tok::Integer) fail_here("expected name or number");
      auto key = make(ExprKind::Literal, cur().offset);
      key->literal = Value::integer(cur().int_value);
      next();
      return make2(ExprKind::Item, offset, std::move(node), std::move(key));
    }
    next();  // '['
    std::vector<ExprPtr> keys;
    ExprPtr slice;
    while (!is_op("]")) {
      if (!keys.empty() || slice) expect_op(",");
      ExprPtr start;
      if (!is_op(":")) {
        start = parse_expression(true);
        if (!is_op(":")) {
          keys.push_back(std::move(start));
          continue;
        }
      }
      next();  // ':'
      if (slice) fail_here("tuples of slices are not supported");
      slice = make(ExprKind::Slice, offset);
      slice->children.push_back(nullptr);  // the sliced object, set below
      slice->children.push_back(std::move(start));
      slice->children.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression(true));
      ExprPtr step;
      if (skip_op(":") && !is_op("]") && !is_op(",")) step = parse_expression(true);
      slice->children.push_back(std::move(step));
    }
    next();
    if (slice) {
      if (!keys.empty()) fail_here("tuples of slices are not supported");
      slice->children[0] = std::move(node);
      return slice;
    }
    if (keys.empty()) fail_here("expected a subscript");
    ExprPtr key;
    if (keys.size() == 1) {
      key = std::move(keys[0]);
    } else {
      key = make(ExprKind::Tuple, offset);
      key->children = std::move(keys);
    }
    return make2(ExprKind::Item, offset, std::move(node), std::move(key));
  }

  void parse_call_args(std::vector<Arg>& args) {
    expect_op("(");
    bool seen_keyword = false;
    while (!is_op(")")) {
      if (!args.empty()) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail_here("*args and **kwargs in calls are not supported");
      Arg a;
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        a.name = cur().text;
        next();
        next();
        seen_keyword = true;
      } else if (seen_keyword) {
        fail_here("invalid syntax for function call expression");
      }
      a.value = parse_expression(true);
      args.push_back(std::move(a));
    }
    next();
  }

  ExprPtr parse_call(ExprPtr node) {
    auto e = make(ExprKind::Call, cur().offset);
    e->children.push_back(std::move(node));
    parse_call_args(e->args);
    return e;
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (skip_op(".")) name += "." + expect_name();
    return name;
  }

  ExprPtr parse_filter(ExprPtr node) {
    while (skip_op("|")) {
      size_t offset = cur().offset;
      auto e = make(ExprKind::Filter, offset);
      e->name = parse_dotted_name();
      if (!has_filter(e->name)) syntax_error(src_, offset, "no filter named '" + e->name + "'");
      if (is_op("(")) parse_call_args(e->args);
      e->children.push_back(std::move(node));
      node = std::move(e);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    size_t is_offset = cur().offset;
    next();  // 'is'
    bool negated = skip_name("not");
    size_t offset = cur().offset;
    auto e = make(ExprKind::Test, offset);
    e->name = parse_dotted_name();
    if (!has_test(e->name)) syntax_error(src_, offset, "no test named '" + e->name + "'");
    Tok t = cur().type;
    if (is_op("(")) {
      parse_call_args(e->args);
    } else if ((t == Tok::Name || t == Tok::String || t == Tok::Integer || t == Tok::Float || is_op("[") ||
                is_op("{")) &&
               !(is_name("else") || is_name("or") || is_name("and"))) {
      if (is_name("is")) fail_here("you cannot chain multiple tests with is");
      Arg a;
      a.value = parse_postfix(parse_primary());
      e->args.push_back(std::move(a));
    }
    e->children.push_back(std::move(node));
    if (!negated) return e;
    auto n = make(ExprKind::Not, is_offset);
    n->children.push_back(std::move(e));
    return n;
  }

  const std::string& src_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Program parse_program(const std::string& source) {
  Program program;
  program.source = normalize_source(source);
  Parser parser(program.source, lex(program.source));
  program.body = parser.parse_template();
  return program;
}

}  // namespace stem::jinja
