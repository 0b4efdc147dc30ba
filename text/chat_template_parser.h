// The parser's internals, shared by chat_template_parser.cc (statements) and
// chat_template_parser_expr.cc (expressions). One method per jinja2 grammar rule, in jinja2's
// precedence order (condexpr < or < and < not < compare < + - < ~ < * / // % < ** < unary <
// primary/postfix/filters), so expressions group exactly as they do in Python's jinja2.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "text/chat_template_ast.h"

namespace stem::jinja {

class Parser {
 public:
  Parser(const std::string& src, std::vector<Token> toks) : src_(src), toks_(std::move(toks)) {}
  Body parse_template() { return subparse({}); }

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
  static std::string describe(const Token& t);
  [[noreturn]] void fail_here(const std::string& msg) const { syntax_error(src_, cur().offset, msg); }
  void expect(Tok type, const char* what);
  void expect_op(const char* op);
  std::string expect_name();

  // ---- statements ----
  Body subparse(const std::vector<std::string>& end_tags);
  Body parse_statements(const std::vector<std::string>& end_tags, bool drop_needle);
  void parse_statement(Body& out);
  void parse_for(Stmt& s);
  void parse_if(Stmt& s);
  void parse_set(Stmt& s);
  void parse_macro(Stmt& s);
  void parse_signature(Stmt& s);
  void parse_call_block(Stmt& s);
  void parse_assign_names(Stmt& s, bool with_namespace, const char* end_name);

  // ---- expressions ----
  bool is_tuple_end(const std::vector<std::string>& extra) const;
  ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens);
  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }
  ExprPtr parse_condexpr();
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_binary_level(ExprPtr (Parser::*operand)(), std::initializer_list<const char*> ops);
  ExprPtr parse_math1() { return parse_binary_level(&Parser::parse_concat, {"+", "-"}); }
  ExprPtr parse_concat();
  ExprPtr parse_math2() { return parse_binary_level(&Parser::parse_pow, {"*", "/", "//", "%"}); }
  ExprPtr parse_pow() { return parse_binary_level(&Parser::parse_unary_filtered, {"**"}); }
  ExprPtr parse_unary_filtered() { return parse_unary(true); }
  ExprPtr parse_unary(bool with_filter);
  ExprPtr parse_primary();
  ExprPtr parse_postfix(ExprPtr node);
  ExprPtr parse_filter_expr(ExprPtr node);
  ExprPtr parse_subscript(ExprPtr node);
  void parse_call_args(std::vector<Arg>& args);
  ExprPtr parse_call(ExprPtr node);
  std::string parse_dotted_name();
  ExprPtr parse_filter(ExprPtr node);
  ExprPtr parse_test(ExprPtr node);

  const std::string& src_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;  // break/continue are only valid inside a loop
};

}  // namespace stem::jinja
