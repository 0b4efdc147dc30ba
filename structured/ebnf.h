// GBNF grammars (the EBNF dialect llama.cpp and xgrammar take, as vLLM's `structured_outputs.grammar`
// passes it) compiled to the byte-level Grammar of structured output: the whole text is a `root`.
//
//   root   ::= greeting " " name ("!" | ".")?     # a comment
//   name   ::= [A-Z] [a-z]*
//   greeting ::= "Hello" | "Hi"
//
// Rules `name ::= body` (names of letters, digits, '-' and '_'; a body may span lines: a rule
// ends where the next `name ::=` starts); in a body: "strings" and [classes] ([a-z], [^...]) with
// the escapes \n \t \r \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH; `.` (any character); rule names;
// grouping ( ... ); alternation |; repetition * + ? {m} {m,} {m,n} (counts at most
// kMaxRegexRepeat). Characters are Unicode code points matched as their UTF-8 bytes. Rules may
// recurse, but not on the left (a rule that can reach itself before reading a character).
// Anything else throws EbnfError naming the construct and where (line and column).
#pragma once
#include <stdexcept>
#include <string>
#include <string_view>

#include "structured/grammar.h"

namespace stem::structured {

constexpr size_t kMaxGrammarRules = 1000;

class EbnfError : public std::runtime_error {
 public:
  EbnfError(std::string construct, const std::string& message)
      : std::runtime_error(message), construct_(std::move(construct)) {}
  const std::string& construct() const { return construct_; }

 private:
  std::string construct_;
};

// The grammar of the texts that its rule `root` derives.
Grammar compile_gbnf(std::string_view text);

}  // namespace stem::structured
