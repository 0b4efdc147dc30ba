// jinja2's builtin filters and tests (those chat templates use), plus transformers' tojson.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "text/chat_template_ops.h"
#include "text/chat_template_text.h"

namespace stem::jinja {
namespace {

using Filter = Value (*)(const Value& v, const CallArgs& a);
using Test = bool (*)(const Value& v, const CallArgs& a);

Value str_filter(const Value& v, std::string (*f)(std::string_view)) { return string_like(v, f(to_str(v))); }

Value first_or_last(const Value& v, bool first) {
  ValueList items = iterate(v);
  if (items.empty()) return Value::undefined(std::string("No ") + (first ? "first" : "last") + " item, sequence was empty.");
  return first ? items.front() : items.back();
}

// The key filters sort and compare by: an attribute path, lowercased unless case_sensitive.
Value sort_key(const Value& item, const Value* attribute, bool case_sensitive) {
  Value key = attribute && !attribute->is_none() ? get_attribute_path(item, *attribute) : item;
  if (!case_sensitive && key.is_string()) return Value::string(text::lower(key.s));
  return key;
}

Value select_or_reject(const Value& v, const CallArgs& a, bool select, bool by_attr) {
  if (!v.truthy()) return Value::make_list({});
  size_t off = by_attr ? 1 : 0;
  if (by_attr && a.positional.empty()) fail("Missing parameter for attribute name");
  CallArgs test_args;
  std::string test;
  if (a.positional.size() > off) {
    if (!a.positional[off].is_string()) fail("test name must be a string");
    test = a.positional[off].s;
    test_args.positional.assign(a.positional.begin() + off + 1, a.positional.end());
    test_args.keyword = a.keyword;
    if (!has_test(test)) fail("No test named '" + test + "'.");
  }
  ValueList out;
  for (const Value& item : iterate(v)) {
    Value subject = by_attr ? get_attribute_path(item, a.positional[0]) : item;
    bool passed = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (passed == select) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

Value do_default(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "default", {"default_value", "boolean"});
  return v.is_undefined() || (b.bool_or(1, false) && !v.truthy()) ? b.get_or(0, Value::string("")) : v;
}

Value do_tojson(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle style;
  style.ensure_ascii = b.bool_or(0, false);
  style.sort_keys = b.bool_or(3, false);
  const Value* indent = b.get(1);
  if (indent && !indent->is_none()) {
    style.indent = indent->is_string() ? indent->s : std::string(std::max<int64_t>(0, indent->as_int()), ' ');
    style.item_sep = ",";
  }
  const Value* seps = b.get(2);
  if (seps && !seps->is_none()) {
    if (!seps->is_sequence() || seps->list->size() != 2) fail("tojson separators must be a pair of strings");
    style.item_sep = to_str((*seps->list)[0]);
    style.key_sep = to_str((*seps->list)[1]);
  }
  return Value::string(to_json_text(v, style));
}

Value do_int(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "int", {"default", "base"});
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_integral()) return Value::integer(v.as_int());
  if (v.kind == Kind::Float && std::isfinite(v.f)) return Value::integer(static_cast<int64_t>(v.f));
  if (v.is_string()) {
    std::string s = text::strip(v.s, std::nullopt, true, true);
    std::erase(s, '_');
    char* end = nullptr;
    errno = 0;
    long long n = std::strtoll(s.c_str(), &end, static_cast<int>(b.int_or(1, 10)));
    if (!s.empty() && *end == 0 && errno == 0) return Value::integer(n);
    double d = std::strtod(s.c_str(), &end);  // "42.23"|int gives 42, as in jinja2
    if (!s.empty() && *end == 0 && std::isfinite(d)) return Value::integer(static_cast<int64_t>(d));
  }
  return b.get_or(0, Value::integer(0));
}

Value do_float(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "float", {"default"});
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    std::string s = text::strip(v.s, std::nullopt, true, true);
    char* end = nullptr;
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == 0) return Value::number(d);
  }
  return b.get_or(0, Value::number(0.0));
}

Value do_round(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "round", {"precision", "method"});
  int64_t precision = b.int_or(0, 0);
  std::string method = b.optional_string(1).value_or("common");
  if (method != "common" && method != "ceil" && method != "floor") fail("method must be common, ceil or floor");
  if (!v.is_number()) fail(std::string("TypeError: type ") + type_name(v) + " doesn't define __round__ method");
  double scale = std::pow(10.0, static_cast<double>(precision));
  if (method != "common") {
    double x = v.as_double() * scale;
    return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
  }
  if (v.is_integral()) {  // Python's round() keeps ints ints
    if (precision >= 0) return Value::integer(v.as_int());
    return Value::integer(static_cast<int64_t>(std::nearbyint(v.as_double() / (1 / scale)) * (1 / scale)));
  }
  if (precision < 0) return Value::number(std::nearbyint(v.f * scale) / scale);
  // printf rounds the exact binary value half-to-even, which is what Python's round() does
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::min<int64_t>(precision, 300)), v.f);
  return Value::number(std::strtod(buf, nullptr));
}

Value do_join(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "join", {"d", "attribute"});
  std::string sep = to_str(b.get_or(0, Value::string("")));
  const Value* attribute = b.get(1);
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += sep;
    out += to_str(attribute && !attribute->is_none() ? get_attribute_path(item, *attribute) : item);
    first = false;
  }
  return Value::string(std::move(out));
}

Value do_map(const Value& v, const CallArgs& a) {
  ValueList out;
  if (!v.truthy()) return Value::make_list({});  // jinja2 maps nothing over a falsy value, iterable or not
  if (a.positional.empty()) {
    BoundArgs b(a, "map", {"attribute", "default"});
    if (!b.get(0)) fail("map requires a filter argument");
    const Value* fallback = b.get(1);
    for (const Value& item : iterate(v)) out.push_back(get_attribute_path(item, *b.get(0), fallback));
  } else {
    if (!a.positional[0].is_string() || !has_filter(a.positional[0].s)) fail("map: no filter named " + to_repr(a.positional[0]));
    CallArgs rest{ValueList(a.positional.begin() + 1, a.positional.end()), a.keyword};
    for (const Value& item : iterate(v)) out.push_back(apply_filter(a.positional[0].s, item, rest));
  }
  return Value::make_list(std::move(out));
}

Value do_sort(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "sort", {"reverse", "case_sensitive", "attribute"});
  bool reverse = b.bool_or(0, false), cs = b.bool_or(1, false);
  ValueList items = iterate(v);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key(x, b.get(2), cs), ky = sort_key(y, b.get(2), cs);
    return reverse ? value_less(ky, kx) : value_less(kx, ky);
  });
  return Value::make_list(std::move(items));
}

Value do_unique(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "unique", {"case_sensitive", "attribute"});
  ValueList out, seen;
  for (const Value& item : iterate(v)) {
    Value key = sort_key(item, b.get(1), b.bool_or(0, false));
    if (!is_hashable(key)) fail(std::string("TypeError: unhashable type: '") + type_name(key) + "'");
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return values_equal(s, key); })) continue;
    seen.push_back(key);
    out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

Value min_or_max(const Value& v, const CallArgs& a, bool want_max) {
  BoundArgs b(a, want_max ? "max" : "min", {"case_sensitive", "attribute"});
  ValueList items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    Value kb = sort_key(items[best], b.get(1), b.bool_or(0, false)), kk = sort_key(items[k], b.get(1), b.bool_or(0, false));
    if (want_max ? value_less(kb, kk) : value_less(kk, kb)) best = k;
  }
  return items[best];
}

Value do_reverse(const Value& v, const CallArgs&) {
  if (v.is_string()) {
    std::u32string cps = text::decode(v.s);
    std::reverse(cps.begin(), cps.end());
    return string_like(v, text::encode(cps));
  }
  ValueList items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::make_list(std::move(items));
}

Value do_indent(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "indent", {"width", "first", "blank"});
  Value width = b.get_or(0, Value::integer(4));
  std::string pad = width.is_string() ? width.s : std::string(std::max<int64_t>(0, width.as_int()), ' ');
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_string()) fail(std::string("TypeError: indent expects a string, got '") + type_name(v) + "'");
  std::vector<std::string> lines = text::splitlines(v.s + "\n");
  const Value& like = v;
  std::string out;
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k) out += "\n";
    if (k && (b.bool_or(2, false) || !lines[k].empty())) out += pad;
    out += lines[k];
  }
  if (b.bool_or(1, false)) out = pad + out;
  return string_like(like, std::move(out));
}

Value do_escape(const Value& v, const CallArgs&) {
  if (v.markup) return v;  // already safe: markupsafe does not escape twice
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return Value::markup_string(std::move(out));
}

Value do_items(const Value& v, const CallArgs&) {
  if (v.is_undefined()) return Value::make_list({});
  if (!v.is_dict()) fail("TypeError: Can only get item pairs from a mapping.");
  ValueList out;
  for (const auto& [k, val] : *v.dict) out.push_back(Value::make_tuple({Value::string(k), val}));
  return Value::make_list(std::move(out));
}

Value do_dictsort(const Value& v, const CallArgs& a) {
  if (v.is_undefined()) fail_undefined(v);
  BoundArgs b(a, "dictsort", {"case_sensitive", "by", "reverse"});
  ValueList items = *do_items(v, {}).list;
  size_t pos = b.optional_string(1).value_or("key") == "value" ? 1 : 0;
  bool cs = b.bool_or(0, false), reverse = b.bool_or(2, false);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key((*x.list)[pos], nullptr, cs), ky = sort_key((*y.list)[pos], nullptr, cs);
    return reverse ? value_less(ky, kx) : value_less(kx, ky);
  });
  return Value::make_list(std::move(items));
}

Value do_sum(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "sum", {"attribute", "start"});
  Value total = b.get_or(1, Value::integer(0));
  for (const Value& item : iterate(v))
    total = binary_op("+", total, b.get(0) ? get_attribute_path(item, *b.get(0)) : item);
  return total;
}

Value do_replace(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "replace", {"old", "new", "count"});
  return Value::string(text::replace(to_str(v), to_str(b.get_or(0, Value::string(""))),
                                     to_str(b.get_or(1, Value::string(""))), b.int_or(2, -1)));
}

Value do_attr(const Value& v, const CallArgs& a) {
  BoundArgs b(a, "attr", {"name"});
  std::string name = to_str(b.get_or(0, Value::string("")));
  // attribute only, no item fallback: a dict's keys are not attributes
  if (v.is_dict()) return dict_method(v, name);
  if (v.is_string()) return string_method(v, name);
  return v.kind == Kind::Namespace ? get_attr(v, name) : Value::undefined("no attribute '" + name + "'");
}

const std::unordered_map<std::string_view, Filter>& filters() {
  static const std::unordered_map<std::string_view, Filter> table = {
      {"abs", [](const Value& v, const CallArgs&) { return negate(v, v.is_number() && v.as_double() < 0); }},
      {"attr", do_attr},
      {"capitalize", [](const Value& v, const CallArgs&) { return str_filter(v, text::capitalize); }},
      {"count", [](const Value& v, const CallArgs&) { return Value::integer(length_of(v)); }},
      {"length", [](const Value& v, const CallArgs&) { return Value::integer(length_of(v)); }},
      {"default", do_default},
      {"d", do_default},
      {"dictsort", do_dictsort},
      {"escape", do_escape},
      {"e", do_escape},
      {"first", [](const Value& v, const CallArgs&) { return first_or_last(v, true); }},
      {"format",
       [](const Value& v, const CallArgs& a) {
         if (!a.positional.empty() && !a.keyword.empty()) fail("can't handle positional and keyword arguments at the same time");
         ValueDict named(a.keyword.begin(), a.keyword.end());
         return printf_format(to_str(v), a.keyword.empty() ? Value::make_tuple(a.positional) : Value::make_dict(std::move(named)));
       }},
      {"last", [](const Value& v, const CallArgs&) { return first_or_last(v, false); }},
      {"float", do_float},
      {"int", do_int},
      {"indent", do_indent},
      {"items", do_items},
      {"join", do_join},
      {"list", [](const Value& v, const CallArgs&) { return Value::make_list(iterate(v)); }},
      {"lower", [](const Value& v, const CallArgs&) { return str_filter(v, text::lower); }},
      {"upper", [](const Value& v, const CallArgs&) { return str_filter(v, text::upper); }},
      {"title", [](const Value& v, const CallArgs&) { return Value::string(text::jinja_title(to_str(v))); }},
      {"map", do_map},
      {"max", [](const Value& v, const CallArgs& a) { return min_or_max(v, a, true); }},
      {"min", [](const Value& v, const CallArgs& a) { return min_or_max(v, a, false); }},
      {"select", [](const Value& v, const CallArgs& a) { return select_or_reject(v, a, true, false); }},
      {"reject", [](const Value& v, const CallArgs& a) { return select_or_reject(v, a, false, false); }},
      {"selectattr", [](const Value& v, const CallArgs& a) { return select_or_reject(v, a, true, true); }},
      {"rejectattr", [](const Value& v, const CallArgs& a) { return select_or_reject(v, a, false, true); }},
      {"replace", do_replace},
      {"reverse", do_reverse},
      {"round", do_round},
      {"safe", [](const Value& v, const CallArgs&) { return Value::markup_string(to_str(v)); }},
      {"sort", do_sort},
      {"string", [](const Value& v, const CallArgs&) { return string_like(v, to_str(v)); }},
      {"sum", do_sum},
      {"tojson", do_tojson},
      {"trim",
       [](const Value& v, const CallArgs& a) {
         BoundArgs b(a, "trim", {"chars"});
         return string_like(v, text::strip(to_str(v), b.optional_string(0), true, true));
       }},
      {"unique", do_unique},
  };
  return table;
}

// str.islower(): has cased characters and none of them is uppercase.
bool is_lower(const std::string& s) { return text::lower(s) == s && text::upper(s) != s; }

bool is_sequence_like(const Value& v) {
  return v.is_string() || v.is_sequence() || v.is_dict() || v.is_undefined();
}

const Value& test_arg(const CallArgs& a, const char* test) {
  if (a.positional.empty()) fail(std::string("test '") + test + "' needs an argument");
  return a.positional[0];
}

const std::unordered_map<std::string_view, Test>& tests() {
  static const std::unordered_map<std::string_view, Test> table = {
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const CallArgs&) { return v.is_none(); }},
      {"boolean", [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool; }},
      {"true", [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool && v.b; }},
      {"false", [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool && !v.b; }},
      {"integer", [](const Value& v, const CallArgs&) { return v.kind == Kind::Int; }},
      {"float", [](const Value& v, const CallArgs&) { return v.kind == Kind::Float; }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.is_dict(); }},
      {"iterable", [](const Value& v, const CallArgs&) { return is_sequence_like(v); }},
      {"sequence", [](const Value& v, const CallArgs&) { return is_sequence_like(v); }},
      {"callable", [](const Value& v, const CallArgs&) { return v.kind == Kind::Function || v.is_undefined(); }},
      {"escaped", [](const Value&, const CallArgs&) { return false; }},
      {"lower", [](const Value& v, const CallArgs&) { return is_lower(to_str(v)); }},
      {"upper", [](const Value& v, const CallArgs&) { return is_lower(text::swapcase(to_str(v))); }},
      {"even", [](const Value& v, const CallArgs&) { return binary_op("%", v, Value::integer(2)).as_double() == 0; }},
      {"odd", [](const Value& v, const CallArgs&) { return binary_op("%", v, Value::integer(2)).as_double() == 1; }},
      {"divisibleby",
       [](const Value& v, const CallArgs& a) { return binary_op("%", v, test_arg(a, "divisibleby")).as_double() == 0; }},
      {"sameas",
       [](const Value& v, const CallArgs& a) {
         const Value& o = test_arg(a, "sameas");
         if (v.kind != o.kind) return false;
         if (v.is_none() || v.is_undefined() || v.kind == Kind::Bool) return values_equal(v, o);
         return v.list == o.list && v.dict == o.dict && v.ns == o.ns && v.fn == o.fn && values_equal(v, o);
       }},
      {"in", [](const Value& v, const CallArgs& a) { return compare_op("in", v, test_arg(a, "in")); }},
      {"eq", [](const Value& v, const CallArgs& a) { return compare_op("==", v, test_arg(a, "eq")); }},
      {"equalto", [](const Value& v, const CallArgs& a) { return compare_op("==", v, test_arg(a, "equalto")); }},
      {"==", [](const Value& v, const CallArgs& a) { return compare_op("==", v, test_arg(a, "==")); }},
      {"ne", [](const Value& v, const CallArgs& a) { return compare_op("!=", v, test_arg(a, "ne")); }},
      {"!=", [](const Value& v, const CallArgs& a) { return compare_op("!=", v, test_arg(a, "!=")); }},
      {"lt", [](const Value& v, const CallArgs& a) { return compare_op("<", v, test_arg(a, "lt")); }},
      {"lessthan", [](const Value& v, const CallArgs& a) { return compare_op("<", v, test_arg(a, "lessthan")); }},
      {"<", [](const Value& v, const CallArgs& a) { return compare_op("<", v, test_arg(a, "<")); }},
      {"le", [](const Value& v, const CallArgs& a) { return compare_op("<=", v, test_arg(a, "le")); }},
      {"<=", [](const Value& v, const CallArgs& a) { return compare_op("<=", v, test_arg(a, "<=")); }},
      {"gt", [](const Value& v, const CallArgs& a) { return compare_op(">", v, test_arg(a, "gt")); }},
      {"greaterthan", [](const Value& v, const CallArgs& a) { return compare_op(">", v, test_arg(a, "greaterthan")); }},
      {">", [](const Value& v, const CallArgs& a) { return compare_op(">", v, test_arg(a, ">")); }},
      {"ge", [](const Value& v, const CallArgs& a) { return compare_op(">=", v, test_arg(a, "ge")); }},
      {">=", [](const Value& v, const CallArgs& a) { return compare_op(">=", v, test_arg(a, ">=")); }},
  };
  return table;
}

}  // namespace

bool has_filter(std::string_view name) { return filters().count(name) > 0; }
bool has_test(std::string_view name) { return tests().count(name) > 0; }

Value apply_filter(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) fail("No filter named '" + name + "'.");
  return it->second(v, args);
}

bool apply_test(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) fail("No test named '" + name + "'.");
  return it->second(v, args);
}

}  // namespace stem::jinja
