// Statements: text, {{ output }}, and the {% %} tags, each parsed as jinja2 parses it.
#include <algorithm>

#include "text/chat_template_parser.h"

namespace stem::jinja {

std::string Parser::describe(const Token& t) {
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

void Parser::expect(Tok type, const char* what) {
  if (cur().type != type) fail_here(std::string("expected ") + what + ", got '" + describe(cur()) + "'");
  next();
}

void Parser::expect_op(const char* op) {
  if (!skip_op(op)) fail_here(std::string("expected '") + op + "', got '" + describe(cur()) + "'");
}

std::string Parser::expect_name() {
  if (cur().type != Tok::Name) fail_here("expected a name, got '" + describe(cur()) + "'");
  std::string n = cur().text;
  next();
  return n;
}

Body Parser::subparse(const std::vector<std::string>& end_tags) {
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

Body Parser::parse_statements(const std::vector<std::string>& end_tags, bool drop_needle) {
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

void Parser::parse_statement(Body& out) {
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
  } else if (tag == "with") {
    next();
    s->kind = StmtKind::With;
    while (cur().type != Tok::BlockEnd) {
      if (!s->params.empty()) expect_op(",");
      Arg assignment;
      assignment.name = expect_name();
      expect_op("=");
      assignment.value = parse_expression(true);
      s->params.push_back(std::move(assignment));
    }
    s->body = parse_statements({"endwith"}, true);
  } else if (tag == "call") {
    parse_call_block(*s);
  } else if (tag == "filter" || tag == "block" || tag == "extends" ||
             tag == "include" || tag == "import" || tag == "from" || tag == "autoescape" || tag == "do") {
    fail_here("the '" + tag + "' tag is not supported by stemserve's chat template renderer");
  } else {
    fail_here("encountered unknown tag '" + tag + "'");
  }
  out.push_back(std::move(s));
}

void Parser::parse_for(Stmt& s) {
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

void Parser::parse_if(Stmt& s) {
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

void Parser::parse_set(Stmt& s) {
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

void Parser::parse_macro(Stmt& s) {
  next();
  s.kind = StmtKind::Macro;
  s.targets.push_back(expect_name());
  parse_signature(s);
  int saved = loop_depth_;
  loop_depth_ = 0;
  s.body = parse_statements({"endmacro"}, true);
  loop_depth_ = saved;
}

// `(a, b=default, ...)` of a macro or of a call block's caller.
void Parser::parse_signature(Stmt& s) {
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
}

// {% call [(params)] macro(args) %}body{% endcall %}: the macro gets the body as `caller`.
void Parser::parse_call_block(Stmt& s) {
  next();
  s.kind = StmtKind::CallBlock;
  s.targets.push_back("caller");
  if (is_op("(")) parse_signature(s);
  s.expr = parse_expression(true);
  if (s.expr->kind != ExprKind::Call) fail_here("expected call");
  int saved = loop_depth_;
  loop_depth_ = 0;
  s.body = parse_statements({"endcall"}, true);
  loop_depth_ = saved;
}

// `a`, `a, b`, `(a, b)` and for {% set %} `ns.attr`.
void Parser::parse_assign_names(Stmt& s, bool with_namespace, const char* end_name) {
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

Program parse_program(const std::string& source) {
  Program program;
  program.source = normalize_source(source);
  Parser parser(program.source, lex(program.source));
  program.body = parser.parse_template();
  return program;
}

}  // namespace stem::jinja
