// Tokens and syntax tree of the Jinja subset; the lexer and parser mirror jinja2's so that the
// same source splits into the same text and the same expressions.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "text/chat_template_value.h"

namespace stem::jinja {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // data text, name, operator, or the decoded string literal
  int64_t int_value = 0;
  double float_value = 0.0;
  size_t offset = 0;  // into the normalised source, for line:column in errors
};

// jinja2's lexing of the whole template with trim_blocks and lstrip_blocks on.
// `source` must already be normalised (see normalize_source).
std::vector<Token> lex(const std::string& source);
// As jinja2: \r\n and \r become \n, and one trailing newline is dropped.
std::string normalize_source(const std::string& source);
// "line L, column C" of a byte offset.
std::string describe_position(const std::string& source, size_t offset);
[[noreturn]] void syntax_error(const std::string& source, size_t offset, const std::string& message);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  Literal,   // literal
  Name,      // name
  List,      // children: elements
  Tuple,     // children: elements
  Dict,      // children: key, value, key, value, ...
  Attr,      // children[0] . name
  Item,      // children[0] [ children[1] ]
  Slice,     // children[0] [ children[1] : children[2] : children[3] ]  (null: omitted)
  Call,      // children[0] ( args )
  Filter,    // children[0] | name ( args )
  Test,      // children[0] is name ( args )
  Neg,       // - children[0]
  Pos,       // + children[0]
  Not,       // not children[0]
  And,       // children[0] and children[1]
  Or,        // children[0] or children[1]
  Binary,    // children[0] name children[1], name one of + - * / // % **
  Compare,   // children[0] ops[0] children[1] ops[1] children[2] ...
  Concat,    // children joined with ~
  CondExpr,  // children[1] if children[0] else children[2] (null: no else)
};

struct Arg {
  std::string name;  // empty: positional
  ExprPtr value;
};

struct Expr {
  ExprKind kind;
  size_t offset = 0;
  Value literal;
  std::string name;
  std::vector<ExprPtr> children;
  std::vector<std::string> ops;
  std::vector<Arg> args;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind { Text, Output, If, For, Set, SetBlock, Break, Continue, Macro, CallBlock, With };

struct Stmt {
  StmtKind kind;
  size_t offset = 0;
  std::string text;                  // Text
  ExprPtr expr;                      // Output, Set value, For iterable, CallBlock's call
  std::vector<ExprPtr> conditions;   // If: one per `if`/`elif` branch
  std::vector<Body> branches;        // If: bodies matching `conditions`
  Body body, else_body;              // For, SetBlock, Macro / For's and If's `else`
  std::vector<std::string> targets;  // For / Set / SetBlock names (several: tuple unpacking); Macro name
  std::string attr;                  // Set `{% set ns.attr = ... %}`: targets[0] is the namespace
  ExprPtr loop_filter;               // For `... if cond`
  std::vector<Arg> params;           // Macro / CallBlock caller parameters with defaults; With's assignments
};

struct Program {
  std::string source;  // normalised
  Body body;
};

Program parse_program(const std::string& source);

}  // namespace stem::jinja
