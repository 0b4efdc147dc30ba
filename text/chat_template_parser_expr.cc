// Expressions, from conditional expressions down to literals, filters and tests.
#include <algorithm>

#include "text/chat_template_ops.h"
#include "text/chat_template_parser.h"

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

}  // namespace

bool Parser::is_tuple_end(const std::vector<std::string>& extra) const {
  Tok t = cur().type;
  if (t == Tok::VarEnd || t == Tok::BlockEnd || t == Tok::Eof || (t == Tok::Op && cur().text == ")")) return true;
  return t == Tok::Name && std::count(extra.begin(), extra.end(), cur().text);
}

ExprPtr Parser::parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens) {
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

ExprPtr Parser::parse_condexpr() {
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

ExprPtr Parser::parse_or() {
  ExprPtr left = parse_and();
  while (is_name("or")) {
    size_t offset = cur().offset;
    next();
    left = make2(ExprKind::Or, offset, std::move(left), parse_and());
  }
  return left;
}

ExprPtr Parser::parse_and() {
  ExprPtr left = parse_not();
  while (is_name("and")) {
    size_t offset = cur().offset;
    next();
    left = make2(ExprKind::And, offset, std::move(left), parse_not());
  }
  return left;
}

ExprPtr Parser::parse_not() {
  if (is_name("not")) {
    auto e = make(ExprKind::Not, cur().offset);
    next();
    e->children.push_back(parse_not());
    return e;
  }
  return parse_compare();
}

ExprPtr Parser::parse_compare() {
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

ExprPtr Parser::parse_binary_level(ExprPtr (Parser::*operand)(), std::initializer_list<const char*> ops) {
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

ExprPtr Parser::parse_concat() {
  size_t offset = cur().offset;
  ExprPtr first = parse_math2();
  if (!is_op("~")) return first;
  auto e = make(ExprKind::Concat, offset);
  e->children.push_back(std::move(first));
  while (skip_op("~")) e->children.push_back(parse_math2());
  return e;
}

ExprPtr Parser::parse_unary(bool with_filter) {
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

ExprPtr Parser::parse_primary() {
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

ExprPtr Parser::parse_postfix(ExprPtr node) {
  while (true) {
    if (is_op(".") || is_op("[")) node = parse_subscript(std::move(node));
    else if (is_op("(")) node = parse_call(std::move(node));
    else return node;
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr node) {
  while (true) {
    if (is_op("|")) node = parse_filter(std::move(node));
    else if (is_name("is")) node = parse_test(std::move(node));
    else if (is_op("(")) node = parse_call(std::move(node));
    else return node;
  }
}

ExprPtr Parser::parse_subscript(ExprPtr node) {
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

// Arguments as jinja2 accepts them: positional, then name=value, with at most one *expr (named
// "*") and one **expr (named "**").
void Parser::parse_call_args(std::vector<Arg>& args) {
  expect_op("(");
  bool seen_keyword = false, seen_star = false, seen_star2 = false;
  while (!is_op(")")) {
    if (!args.empty()) {
      expect_op(",");
      if (is_op(")")) break;
    }
    Arg a;
    if (is_op("*") || is_op("**")) {
      a.name = cur().text;
      bool ok = a.name == "*" ? !seen_star && !seen_star2 : !seen_star2;
      if (!ok) fail_here("invalid syntax for function call expression");
      (a.name == "*" ? seen_star : seen_star2) = true;
      next();
    } else if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
      if (seen_star2) fail_here("invalid syntax for function call expression");
      a.name = cur().text;
      next();
      next();
      seen_keyword = true;
    } else if (seen_keyword || seen_star || seen_star2) {
      fail_here("invalid syntax for function call expression");
    }
    a.value = parse_expression(true);
    args.push_back(std::move(a));
  }
  next();
}

ExprPtr Parser::parse_call(ExprPtr node) {
  auto e = make(ExprKind::Call, cur().offset);
  e->children.push_back(std::move(node));
  parse_call_args(e->args);
  return e;
}

std::string Parser::parse_dotted_name() {
  std::string name = expect_name();
  while (skip_op(".")) name += "." + expect_name();
  return name;
}

ExprPtr Parser::parse_filter(ExprPtr node) {
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

ExprPtr Parser::parse_test(ExprPtr node) {
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

}  // namespace stem::jinja
