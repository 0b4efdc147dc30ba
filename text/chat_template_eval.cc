#include "text/chat_template_eval.h"

#include <memory>

#include "text/chat_template.h"

namespace stem::jinja {
namespace {

// Variables assigned in one frame; lookups walk outwards, assignments stay here. Frames live on
// the heap so that a macro can hold on to the frame it was defined in (jinja2 macros are
// closures that see later assignments there).
struct Scope : std::enable_shared_from_this<Scope> {
  const Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent)
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};

enum class Flow { Normal, Break, Continue };

constexpr int kMaxCallDepth = 100;

class Interpreter {
 public:
  Interpreter(const Program& program, const Value& context, const TimeSource& now)
      : program_(program), context_(context), now_(now) {}

  std::string run() {
    std::string out;
    exec_body(program_.body, *root_, out);
    return out;
  }

 private:
  Flow exec_body(const Body& body, Scope& scope, std::string& out) {
    for (const StmtPtr& s : body) {
      Flow flow = exec_located(*s, scope, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  // Turns a failure into an error naming the template line of the innermost statement.
  Flow exec_located(const Stmt& s, Scope& scope, std::string& out) {
    try {
      return exec(s, scope, out);
    } catch (const RenderFailure& e) {
      throw ChatTemplateError(ChatTemplateError::Kind::kRender, "chat template error at " +
                                                                    describe_position(program_.source, s.offset) +
                                                                    ": " + e.what());
    }
  }

  Flow exec(const Stmt& s, Scope& scope, std::string& out) {
    switch (s.kind) {
      case StmtKind::Text: out += s.text; return Flow::Normal;
      case StmtKind::Output: out += to_str(eval(*s.expr, scope)); return Flow::Normal;
      case StmtKind::If:
        for (size_t k = 0; k < s.conditions.size(); ++k)
          if (eval(*s.conditions[k], scope).truthy()) return exec_body(s.branches[k], scope, out);
        return exec_body(s.else_body, scope, out);
      case StmtKind::For: exec_for(s, scope, out); return Flow::Normal;
      case StmtKind::Set: exec_set(s, scope); return Flow::Normal;
      case StmtKind::SetBlock: {
        std::string captured;
        exec_body(s.body, scope, captured);
        scope.set(s.targets[0], Value::string(std::move(captured)));
        return Flow::Normal;
      }
      case StmtKind::Macro: scope.set(s.targets[0], make_macro(s, scope)); return Flow::Normal;
      case StmtKind::CallBlock: {
        const Expr& call = *s.expr;
        Value callee = eval(*call.children[0], scope);
        CallArgs args = eval_args(call.args, scope);
        args.keyword.emplace_back("caller", make_macro(s, scope));
        out += to_str(call_value(callee, args));
        return Flow::Normal;
      }
      case StmtKind::With: {  // the values are computed outside, then bound in a scope of their own
        auto inner = child_of(scope);
        for (const Arg& a : s.params) inner->set(a.name, eval(*a.value, scope));
        return exec_body(s.body, *inner, out);
      }
      case StmtKind::Break: return Flow::Break;
      case StmtKind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  static void assign(Scope& scope, const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      scope.set(targets[0], v);
      return;
    }
    ValueList parts = v.is_sequence() || v.is_string() ? iterate(v) : ValueList{};
    if (!v.is_sequence() && !v.is_string()) fail(std::string("TypeError: cannot unpack non-iterable ") + type_name(v) + " object");
    if (parts.size() != targets.size()) {
      fail(std::string("ValueError: ") + (parts.size() < targets.size() ? "not enough" : "too many") +
           " values to unpack (expected " + std::to_string(targets.size()) + ", got " + std::to_string(parts.size()) + ")");
    }
    for (size_t k = 0; k < targets.size(); ++k) scope.set(targets[k], parts[k]);
  }

  void exec_set(const Stmt& s, Scope& scope) {
    Value v = eval(*s.expr, scope);
    if (s.attr.empty()) {
      assign(scope, s.targets, v);
      return;
    }
    const Value* ns = scope.lookup(s.targets[0]);
    if (!ns || ns->kind != Kind::Namespace) fail("cannot assign attribute on non-namespace object");
    if (s.attr[0] == '_')
      fail("SecurityError: chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + s.attr + "'");
    for (auto& [k, old] : ns->ns->attrs) {
      if (k == s.attr) {
        old = std::move(v);
        return;
      }
    }
    ns->ns->attrs.emplace_back(s.attr, std::move(v));
  }

  static Value loop_info(const ValueList& items, size_t k) {
    int64_t n = static_cast<int64_t>(items.size()), i = static_cast<int64_t>(k);
    ValueDict loop = {
        {"index", Value::integer(i + 1)},    {"index0", Value::integer(i)},
        {"revindex", Value::integer(n - i)}, {"revindex0", Value::integer(n - i - 1)},
        {"first", Value::boolean(i == 0)},   {"last", Value::boolean(i == n - 1)},
        {"length", Value::integer(n)},       {"depth", Value::integer(1)},
        {"depth0", Value::integer(0)},
    };
    if (i > 0) loop.emplace_back("previtem", items[k - 1]);
    if (i + 1 < n) loop.emplace_back("nextitem", items[k + 1]);
    loop.emplace_back("cycle", Value::make_function("loop.cycle", [i](const CallArgs& a) {
                        if (a.positional.empty()) fail("no items for cycling given");
                        return a.positional[i % a.positional.size()];
                      }));
    return Value::make_dict(std::move(loop));
  }

  void exec_for(const Stmt& s, Scope& scope, std::string& out) {
    ValueList items = iterate(eval(*s.expr, scope));
    if (s.loop_filter) {  // `for x in xs if cond`: loop.index and loop.length count the kept items
      ValueList kept;
      for (Value& item : items) {
        auto probe = child_of(scope);
        assign(*probe, s.targets, item);
        if (eval(*s.loop_filter, *probe).truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec_body(s.else_body, *child_of(scope), out);
      return;
    }
    for (size_t k = 0; k < items.size(); ++k) {
      auto iteration = child_of(scope);  // jinja2: assignments do not outlive the iteration
      assign(*iteration, s.targets, items[k]);
      iteration->set("loop", loop_info(items, k));
      if (exec_body(s.body, *iteration, out) == Flow::Break) break;
    }
  }

  static std::shared_ptr<Scope> child_of(const Scope& parent) {
    auto child = std::make_shared<Scope>();
    child->parent = &parent;
    return child;
  }

  Value make_macro(const Stmt& s, Scope& defined_in) {
    const Stmt* def = &s;
    // Weak: the macro lives in that frame's variables. A macro smuggled out of its frame (into a
    // namespace) falls back to the template's top level.
    std::weak_ptr<Scope> home = defined_in.weak_from_this();
    return Value::make_function(s.targets[0], [this, def, home](const CallArgs& a) {
      if (a.positional.size() > def->params.size())
        fail("macro '" + def->targets[0] + "' takes not more than " + std::to_string(def->params.size()) + " argument(s)");
      if (++depth_ > kMaxCallDepth) fail("macro calls nested too deeply");
      std::shared_ptr<Scope> outer = home.lock();
      auto frame_ptr = child_of(outer ? *outer : *root_);
      Scope& frame = *frame_ptr;
      for (size_t k = 0; k < def->params.size(); ++k) {
        const Arg& p = def->params[k];
        const Value* given = k < a.positional.size() ? &a.positional[k] : nullptr;
        for (const auto& [name, v] : a.keyword)
          if (name == p.name) given = &v;
        frame.set(p.name, given ? *given : p.value ? eval(*p.value, frame) : Value::undefined("'" + p.name + "' is undefined"));
      }
      for (const auto& [name, v] : a.keyword) {
        bool known = false;
        for (const Arg& p : def->params) known = known || p.name == name;
        if (name == "caller" && !known) frame.set("caller", v);  // from a {% call %} block
        else if (!known) fail("macro '" + def->targets[0] + "' takes no keyword argument '" + name + "'");
      }
      std::string out;
      exec_body(def->body, frame, out);
      --depth_;
      return Value::string(std::move(out));
    });
  }

  Value lookup(const std::string& name, const Scope& scope) const {
    if (const Value* v = scope.lookup(name)) return *v;
    if (const Value* v = context_.find(name)) return *v;
    return builtin_global(name, now_);
  }

  CallArgs eval_args(const std::vector<Arg>& args, Scope& scope) {
    CallArgs out;
    for (const Arg& a : args) {
      if (a.name.empty()) {
        out.positional.push_back(eval(*a.value, scope));
      } else if (a.name == "*") {  // f(*xs): the items as positional arguments
        for (Value& v : iterate(eval(*a.value, scope))) out.positional.push_back(std::move(v));
      } else if (a.name == "**") {  // f(**d): the entries as keyword arguments
        Value d = eval(*a.value, scope);
        if (!d.is_dict()) fail(std::string("TypeError: argument after ** must be a mapping, not ") + type_name(d));
        for (const auto& [k, v] : *d.dict) out.keyword.emplace_back(k, v);
      } else {
        out.keyword.emplace_back(a.name, eval(*a.value, scope));
      }
    }
    return out;
  }

  Value eval(const Expr& e, Scope& scope) {
    switch (e.kind) {
      case ExprKind::Literal: return e.literal;
      case ExprKind::Name: return lookup(e.name, scope);
      case ExprKind::List:
      case ExprKind::Tuple: {
        ValueList items;
        for (const ExprPtr& c : e.children) items.push_back(eval(*c, scope));
        return e.kind == ExprKind::List ? Value::make_list(std::move(items)) : Value::make_tuple(std::move(items));
      }
      case ExprKind::Dict: {
        ValueDict items;
        for (size_t k = 0; k + 1 < e.children.size(); k += 2) {
          Value key = eval(*e.children[k], scope);
          if (!key.is_string()) fail("dict keys must be strings in chat templates, got '" + std::string(type_name(key)) + "'");
          Value val = eval(*e.children[k + 1], scope);
          bool replaced = false;
          for (auto& [k2, v2] : items) {
            if (k2 == key.s) {
              v2 = val;
              replaced = true;
            }
          }
          if (!replaced) items.emplace_back(key.s, std::move(val));
        }
        return Value::make_dict(std::move(items));
      }
      case ExprKind::Attr: return get_attr(eval(*e.children[0], scope), e.name);
      case ExprKind::Item: {
        Value obj = eval(*e.children[0], scope);
        return get_item(obj, eval(*e.children[1], scope));
      }
      case ExprKind::Slice: {
        Value obj = eval(*e.children[0], scope);
        Value bounds[3];
        for (int k = 0; k < 3; ++k)
          if (e.children[k + 1]) bounds[k] = eval(*e.children[k + 1], scope);
        auto ptr = [&](int k) { return e.children[k + 1] ? &bounds[k] : nullptr; };
        return get_slice(obj, ptr(0), ptr(1), ptr(2));
      }
      case ExprKind::Call: {
        Value callee = eval(*e.children[0], scope);
        return call_value(callee, eval_args(e.args, scope));
      }
      case ExprKind::Filter: {
        Value v = eval(*e.children[0], scope);
        return apply_filter(e.name, v, eval_args(e.args, scope));
      }
      case ExprKind::Test: {
        Value v = eval(*e.children[0], scope);
        return Value::boolean(apply_test(e.name, v, eval_args(e.args, scope)));
      }
      case ExprKind::Neg:
      case ExprKind::Pos: return negate(eval(*e.children[0], scope), e.kind == ExprKind::Neg);
      case ExprKind::Not: return Value::boolean(!eval(*e.children[0], scope).truthy());
      case ExprKind::And: {  // Python's and/or return an operand, not a bool
        Value left = eval(*e.children[0], scope);
        return left.truthy() ? eval(*e.children[1], scope) : left;
      }
      case ExprKind::Or: {
        Value left = eval(*e.children[0], scope);
        return left.truthy() ? left : eval(*e.children[1], scope);
      }
      case ExprKind::Binary: {
        Value left = eval(*e.children[0], scope);
        return binary_op(e.name, left, eval(*e.children[1], scope));
      }
      case ExprKind::Compare: {
        Value left = eval(*e.children[0], scope);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.children[k + 1], scope);
          if (!compare_op(e.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::Concat: {
        std::string out;
        for (const ExprPtr& c : e.children) out += to_str(eval(*c, scope));
        return Value::string(std::move(out));
      }
      case ExprKind::CondExpr:
        if (eval(*e.children[0], scope).truthy()) return eval(*e.children[1], scope);
        if (e.children[2]) return eval(*e.children[2], scope);
        return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
    }
    fail("unknown expression");
  }

  const Program& program_;
  const Value& context_;
  const TimeSource& now_;
  std::shared_ptr<Scope> root_ = std::make_shared<Scope>();
  int depth_ = 0;
};

}  // namespace

std::string render_program(const Program& program, const Value& context, const TimeSource& now) {
  return Interpreter(program, context, now).run();
}

}  // namespace stem::jinja
