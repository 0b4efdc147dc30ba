// The interpreter: walks the syntax tree with jinja2's scoping (a `for` iteration and a macro
// call get a fresh scope; `if` does not) and writes the output.
#pragma once

#include <string>

#include "text/chat_template_ast.h"
#include "text/chat_template_ops.h"

namespace stem::jinja {

// Renders `program` with the variables of `context` (a dict value).
std::string render_program(const Program& program, const Value& context, const TimeSource& now);

}  // namespace stem::jinja
