// Operators and attribute/item access with Python's semantics as jinja2 exposes them.
#include "text/chat_template_ops.h"

#include <algorithm>
#include <cmath>

#include "text/chat_template_text.h"

namespace stem::jinja {

BoundArgs::BoundArgs(const CallArgs& args, std::string_view function, std::initializer_list<std::string_view> params)
    : function_(function), bound_(params.size(), nullptr) {
  if (args.positional.size() > params.size())
    fail(function_ + "() takes at most " + std::to_string(params.size()) + " argument(s) (" +
         std::to_string(args.positional.size()) + " given)");
  for (size_t k = 0; k < args.positional.size(); ++k) bound_[k] = &args.positional[k];
  for (const auto& [name, value] : args.keyword) {
    size_t k = 0;
    for (auto p : params) {
      if (p == name) break;
      ++k;
    }
    if (k == params.size()) fail(function_ + "() got an unexpected keyword argument '" + name + "'");
    if (bound_[k]) fail(function_ + "() got multiple values for argument '" + name + "'");
    bound_[k] = &value;
  }
}

Value BoundArgs::get_or(size_t index, Value fallback) const {
  const Value* v = get(index);
  return v ? *v : std::move(fallback);
}

std::optional<std::string> BoundArgs::optional_string(size_t index) const {
  const Value* v = get(index);
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) fail(function_ + "() expects a string argument, got '" + type_name(*v) + "'");
  return v->s;
}

int64_t BoundArgs::int_or(size_t index, int64_t fallback) const {
  const Value* v = get(index);
  if (!v || v->is_none()) return fallback;
  if (!v->is_integral()) fail(function_ + "() expects an integer argument, got '" + type_name(*v) + "'");
  return v->as_int();
}

bool BoundArgs::bool_or(size_t index, bool fallback) const {
  const Value* v = get(index);
  return v ? v->truthy() : fallback;
}

[[noreturn]] static void unsupported(const std::string& op, const Value& a, const Value& b) {
  fail("TypeError: unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

// Python ints do not overflow; ours are 64-bit, so say so rather than wrap.
static int64_t checked_int(bool (*op)(int64_t, int64_t, int64_t*), int64_t a, int64_t b) {
  int64_t r = 0;
  if (op(a, b, &r)) fail("integer overflow");
  return r;
}
static bool add_overflows(int64_t a, int64_t b, int64_t* r) { return __builtin_add_overflow(a, b, r); }
static bool sub_overflows(int64_t a, int64_t b, int64_t* r) { return __builtin_sub_overflow(a, b, r); }
static bool mul_overflows(int64_t a, int64_t b, int64_t* r) { return __builtin_mul_overflow(a, b, r); }

static Value repeat(const Value& seq, int64_t n) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t k = 0; k < n; ++k) out += seq.s;
    return string_like(seq, std::move(out));
  }
  ValueList out;
  for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
  return seq.kind == Kind::Tuple ? Value::make_tuple(std::move(out)) : Value::make_list(std::move(out));
}

// CPython's float divmod, so that // and % agree with Python to the last bit (1 // 0.1 == 9.0).
static std::pair<double, double> float_divmod(double vx, double wx) {
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0.0) {
    if ((wx < 0) != (mod < 0)) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, wx);
  }
  double floordiv;
  if (div != 0.0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, vx / wx);
  }
  return {floordiv, mod};
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (op == "%" && a.is_string()) return printf_format(a.s, b);  // str.__mod__ accepts anything
  if (b.is_undefined()) fail_undefined(b);
  bool ints = a.is_integral() && b.is_integral();
  bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) return Value::integer(checked_int(add_overflows, a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (!a.markup && !b.markup) return Value::string(a.s + b.s);
      // Markup + str escapes the str (markupsafe), whichever side the Markup is on
      auto safe = [](const Value& v) { return v.markup ? v.s : apply_filter("escape", v, {}).s; };
      return Value::markup_string(safe(a) + safe(b));
    }
    if (a.is_sequence() && a.kind == b.kind) {
      ValueList out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return a.kind == Kind::Tuple ? Value::make_tuple(std::move(out)) : Value::make_list(std::move(out));
    }
    if (a.is_string()) fail(std::string("TypeError: can only concatenate str (not \"") + type_name(b) + "\") to str");
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value::integer(checked_int(mul_overflows, a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_sequence()) && b.is_integral()) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_sequence()) && a.is_integral()) return repeat(b, a.as_int());
    unsupported(op, a, b);
  }
  if (!nums) unsupported(op, a, b);
  if (op == "-") {
    if (ints) return Value::integer(checked_int(sub_overflows, a.as_int(), b.as_int()));
    return Value::number(a.as_double() - b.as_double());
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t result = 1;
      for (int64_t k = 0; k < b.as_int(); ++k)
        result = checked_int(mul_overflows, result, a.as_int());
      return Value::integer(result);
    }
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  if (b.as_double() == 0.0) {
    fail(op == "/" ? "ZeroDivisionError: division by zero"
                   : ints ? "ZeroDivisionError: integer division or modulo by zero"
                          : "ZeroDivisionError: float modulo");
  }
  if (op == "/") return Value::number(a.as_double() / b.as_double());
  if (op == "//") {
    if (!ints) return Value::number(float_divmod(a.as_double(), b.as_double()).first);
    int64_t x = a.as_int(), y = b.as_int(), q = x / y;
    if ((x % y != 0) && ((x < 0) != (y < 0))) --q;  // Python floors
    return Value::integer(q);
  }
  if (op == "%") {
    if (!ints) return Value::number(float_divmod(a.as_double(), b.as_double()).second);
    int64_t m = a.as_int() % b.as_int();
    if (m != 0 && ((m < 0) != (b.as_int() < 0))) m += b.as_int();  // sign of the divisor
    return Value::integer(m);
  }
  fail("unknown operator " + op);
}

Value concat_str(const Value& a, const Value& b) { return Value::string(to_str(a) + to_str(b)); }

bool is_hashable(const Value& v) {
  if (v.kind == Kind::List || v.kind == Kind::Dict) return false;
  if (v.kind == Kind::Tuple) return std::all_of(v.list->begin(), v.list->end(), is_hashable);
  return true;
}

static bool contains(const Value& haystack, const Value& needle) {
  switch (haystack.kind) {
    case Kind::Undefined: return false;
    case Kind::String:
      if (!needle.is_string())
        fail(std::string("TypeError: 'in <string>' requires string as left operand, not ") + type_name(needle));
      return haystack.s.find(needle.s) != std::string::npos;
    case Kind::List:
    case Kind::Tuple:
      for (const Value& v : *haystack.list)
        if (values_equal(v, needle)) return true;
      return false;
    case Kind::Dict:
      if (!is_hashable(needle)) fail(std::string("TypeError: unhashable type: '") + type_name(needle) + "'");
      return needle.is_string() && haystack.find(needle.s) != nullptr;
    default: fail(std::string("TypeError: argument of type '") + type_name(haystack) + "' is not iterable");
  }
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return values_equal(a, b);
  if (op == "!=") return !values_equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (op == "<") return value_less(a, b);
  if (op == ">") return value_less(b, a);
  if (op == "<=") return value_less(a, b) || values_equal(a, b);
  if (op == ">=") return value_less(b, a) || values_equal(a, b);
  fail("unknown comparison " + op);
}

Value negate(const Value& v, bool minus) {
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_number()) fail(std::string("TypeError: bad operand type for unary ") + (minus ? "-" : "+") + ": '" + type_name(v) + "'");
  if (!minus) return v.kind == Kind::Bool ? Value::integer(v.as_int()) : v;
  if (v.kind == Kind::Float) return Value::number(-v.f);
  return Value::integer(-v.as_int());
}

static std::string object_name(const Value& v) {
  return v.is_none() ? "None" : std::string("'") + type_name(v) + " object'";
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Kind::Undefined: fail_undefined(obj);
    case Kind::Dict: {
      Value method = dict_method(obj, name);
      if (!method.is_undefined()) return method;
      if (const Value* v = obj.find(name)) return *v;
      break;
    }
    case Kind::String: {
      Value method = string_method(obj, name);
      if (!method.is_undefined()) return method;
      break;
    }
    case Kind::Namespace:
      for (const auto& [k, v] : obj.ns->attrs)
        if (k == name) return v;
      break;
    default: break;
  }
  return Value::undefined(object_name(obj) + " has no attribute '" + name + "'");
}

static bool index_into(int64_t size, int64_t& index) {
  if (index < 0) index += size;
  return index >= 0 && index < size;
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.find(key.s)) return *v;
  } else if (obj.is_sequence() && key.is_integral()) {
    int64_t k = key.as_int();
    if (index_into(static_cast<int64_t>(obj.list->size()), k)) return (*obj.list)[k];
  } else if (obj.is_string() && key.is_integral()) {
    int64_t k = key.as_int();
    std::u32string cps = text::decode(obj.s);
    if (index_into(static_cast<int64_t>(cps.size()), k)) return string_like(obj, text::encode(cps.substr(k, 1)));
  }
  if (key.is_string()) {  // jinja2 falls back to the attribute of that name
    Value attr = get_attr(obj, key.s);
    if (!attr.is_undefined()) return attr;
  }
  return Value::undefined(object_name(obj) + " has no element " + to_repr(key));
}

Value get_slice(const Value& obj, const Value* start, const Value* stop, const Value* step) {
  if (obj.is_undefined()) fail_undefined(obj);
  // jinja2 compiles x[a:b] to a plain Python subscript, outside the sandbox's forgiving getitem
  if (obj.is_dict()) fail("TypeError: unhashable type: 'slice'");
  if (!obj.is_sequence() && !obj.is_string()) fail(std::string("TypeError: '") + type_name(obj) + "' object is not subscriptable");
  auto bound = [](const Value* v) -> std::optional<int64_t> {
    if (!v || v->is_none()) return std::nullopt;
    if (!v->is_integral()) fail("TypeError: slice indices must be integers or None");
    return v->as_int();
  };
  int64_t st = bound(step).value_or(1);
  if (st == 0) fail("ValueError: slice step cannot be zero");
  std::u32string cps;
  int64_t n = 0;
  if (obj.is_string()) {
    cps = text::decode(obj.s);
    n = static_cast<int64_t>(cps.size());
  } else {
    n = static_cast<int64_t>(obj.list->size());
  }
  // CPython's PySlice_AdjustIndices
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t b = adjust(bound(start), st < 0 ? n - 1 : 0);
  int64_t e = adjust(bound(stop), st < 0 ? -1 : n);
  std::vector<int64_t> picked;
  for (int64_t k = b; st > 0 ? k < e : k > e; k += st) picked.push_back(k);
  if (obj.is_string()) {
    std::u32string out;
    for (int64_t k : picked) out.push_back(cps[k]);
    return string_like(obj, text::encode(out));
  }
  ValueList out;
  for (int64_t k : picked) out.push_back((*obj.list)[k]);
  return obj.kind == Kind::Tuple ? Value::make_tuple(std::move(out)) : Value::make_list(std::move(out));
}

Value get_attribute_path(const Value& obj, const Value& path, const Value* fallback) {
  std::vector<Value> parts;
  if (path.is_string()) {
    for (const std::string& part : text::split(path.s, std::string("."), -1)) {
      bool numeric = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
      parts.push_back(numeric ? Value::integer(std::stoll(part)) : Value::string(part));
    }
  } else {
    parts.push_back(path);
  }
  Value item = obj;
  for (const Value& part : parts) {
    item = get_item(item, part);
    if (fallback && item.is_undefined()) item = *fallback;
  }
  return item;
}

Value call_value(const Value& callee, const CallArgs& args) {
  if (callee.kind == Kind::Function) return callee.fn->call(args);
  if (callee.is_undefined()) fail_undefined(callee);
  fail(std::string("TypeError: '") + type_name(callee) + "' object is not callable");
}

}  // namespace stem::jinja
