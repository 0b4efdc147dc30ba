// Methods of str and dict values, and the global functions templates call.
#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>

#include "text/chat_template.h"
#include "text/chat_template_ops.h"
#include "text/chat_template_text.h"

namespace stem::jinja {
namespace {

using Method = std::function<Value(const std::string& self, const CallArgs& args)>;

Value list_of_strings(const std::vector<std::string>& parts) {
  ValueList out;
  for (const auto& p : parts) out.push_back(Value::string(p));
  return Value::make_list(std::move(out));
}

// str.startswith / endswith: a prefix or a tuple of them.
bool affix_matches(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) fail(std::string("TypeError: startswith/endswith arg must be str or a tuple of str, not ") + type_name(a));
    if (a.s.size() > s.size()) return false;
    return prefix ? s.compare(0, a.s.size(), a.s) == 0 : s.compare(s.size() - a.s.size(), a.s.size(), a.s) == 0;
  };
  if (affix.is_sequence()) {
    for (const Value& a : *affix.list)
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

// str.format with {}, {0} and {name} fields and !s / !r conversions (no format specs).
std::string python_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
      else fail("ValueError: Single '}' encountered in format string");
      out.push_back('}');
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
      continue;
    }
    size_t close = fmt.find('}', k);
    if (close == std::string::npos) fail("ValueError: Single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    k = close;
    char conversion = 's';
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conversion = bang + 1 < field.size() ? field[bang + 1] : 's';
      field = field.substr(0, bang);
    }
    if (field.find(':') != std::string::npos) fail("str.format specs are not supported");
    const Value* v = nullptr;
    if (field.empty() || field.find_first_not_of("0123456789") == std::string::npos) {
      size_t index = field.empty() ? auto_index++ : std::stoul(field);
      if (index >= args.positional.size()) fail("IndexError: Replacement index out of range for positional args tuple");
      v = &args.positional[index];
    } else {
      for (const auto& [name, value] : args.keyword)
        if (name == field) v = &value;
      if (!v) fail("KeyError: '" + field + "'");
    }
    out += conversion == 'r' ? to_repr(*v) : to_str(*v);
  }
  return out;
}

// One %-conversion of Python's printf-style formatting, with its flags, width and precision.
std::string printf_one(char conv, const std::string& flags, int width, int precision, const Value& v) {
  std::string spec = "%" + flags + (width >= 0 ? std::to_string(width) : "") + (precision >= 0 ? "." + std::to_string(precision) : "");
  char buf[512];
  if (conv == 's' || conv == 'r' || conv == 'a') {
    std::string text = conv == 's' ? to_str(v) : to_repr(v);
    if (precision >= 0 && text::length(text) > precision) text = text::encode(text::decode(text).substr(0, precision));
    int pad = width - static_cast<int>(text::length(text));
    if (pad <= 0) return text;
    return flags.find('-') != std::string::npos ? text + std::string(pad, ' ') : std::string(pad, ' ') + text;
  }
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_number()) fail(std::string("TypeError: %") + conv + " format: a real number is required, not " + type_name(v));
  if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o') {
    long long n = v.is_integral() ? v.as_int() : static_cast<long long>(v.f);
    std::snprintf(buf, sizeof buf, (spec + "ll" + (conv == 'i' || conv == 'u' ? 'd' : conv)).c_str(), n);
    return buf;
  }
  if (conv == 'c') return std::string(1, static_cast<char>(v.as_int()));
  std::snprintf(buf, sizeof buf, (spec + conv).c_str(), v.as_double());
  return buf;
}

}  // namespace

Value printf_format(const std::string& fmt, const Value& args) {
  // Python's str % args: a tuple gives positional arguments; anything else is the one argument,
  // and when it supports [] (dict, list, Undefined) unused arguments are not an error.
  ValueList positional = args.kind == Kind::Tuple ? *args.list : ValueList{args};
  bool mapping = args.kind == Kind::Dict || args.kind == Kind::List || args.is_undefined();
  size_t used = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) fail("ValueError: incomplete format");
    const Value* v = nullptr;
    Value keyed;
    if (fmt[k] == '(') {
      size_t close = fmt.find(')', k);
      if (close == std::string::npos) fail("ValueError: incomplete format key");
      if (!mapping) fail("TypeError: format requires a mapping");
      keyed = get_item(args, Value::string(fmt.substr(k + 1, close - k - 1)));
      if (keyed.is_undefined()) fail("KeyError: '" + fmt.substr(k + 1, close - k - 1) + "'");
      v = &keyed;
      k = close + 1;
    }
    std::string flags;
    while (k < fmt.size() && std::string_view("-+ #0").find(fmt[k]) != std::string_view::npos) flags.push_back(fmt[k++]);
    int width = -1, precision = -1;
    while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) width = std::max(width, 0) * 10 + (fmt[k++] - '0');
    if (k < fmt.size() && fmt[k] == '.') {
      precision = 0;
      while (++k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) precision = precision * 10 + (fmt[k] - '0');
    }
    while (k < fmt.size() && (fmt[k] == 'h' || fmt[k] == 'l' || fmt[k] == 'L')) ++k;
    if (k >= fmt.size()) fail("ValueError: incomplete format");
    char conv = fmt[k];
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (std::string_view("sradiuoxXeEfFgGc").find(conv) == std::string_view::npos)
      fail(std::string("ValueError: unsupported format character '") + conv + "'");
    if (!v) {
      if (used >= positional.size()) fail("TypeError: not enough arguments for format string");
      v = &positional[used++];
    }
    out += printf_one(conv, flags, width, precision, *v);
  }
  if (used < positional.size() && !mapping)
    fail("TypeError: not all arguments converted during string formatting");
  return Value::string(std::move(out));
}

namespace {

Value strip_method(const std::string& s, const CallArgs& a, const char* name, bool left, bool right) {
  BoundArgs b(a, name, {"chars"});
  return Value::string(text::strip(s, b.optional_string(0), left, right));
}

const std::vector<std::pair<std::string_view, Method>>& string_methods() {
  static const std::vector<std::pair<std::string_view, Method>> methods = {
      {"strip", [](const std::string& s, const CallArgs& a) { return strip_method(s, a, "strip", true, true); }},
      {"lstrip", [](const std::string& s, const CallArgs& a) { return strip_method(s, a, "lstrip", true, false); }},
      {"rstrip", [](const std::string& s, const CallArgs& a) { return strip_method(s, a, "rstrip", false, true); }},
      {"split",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "split", {"sep", "maxsplit"});
         return list_of_strings(text::split(s, b.optional_string(0), b.int_or(1, -1)));
       }},
      {"rsplit",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "rsplit", {"sep", "maxsplit"});
         return list_of_strings(text::rsplit(s, b.optional_string(0), b.int_or(1, -1)));
       }},
      {"splitlines", [](const std::string& s, const CallArgs&) { return list_of_strings(text::splitlines(s)); }},
      {"startswith",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "startswith", {"prefix"});
         return Value::boolean(affix_matches(s, b.get_or(0, Value::none()), true));
       }},
      {"endswith",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "endswith", {"suffix"});
         return Value::boolean(affix_matches(s, b.get_or(0, Value::none()), false));
       }},
      {"upper", [](const std::string& s, const CallArgs&) { return Value::string(text::upper(s)); }},
      {"lower", [](const std::string& s, const CallArgs&) { return Value::string(text::lower(s)); }},
      {"casefold", [](const std::string& s, const CallArgs&) { return Value::string(text::lower(s)); }},
      {"swapcase", [](const std::string& s, const CallArgs&) { return Value::string(text::swapcase(s)); }},
      {"title", [](const std::string& s, const CallArgs&) { return Value::string(text::title(s)); }},
      {"capitalize", [](const std::string& s, const CallArgs&) { return Value::string(text::capitalize(s)); }},
      {"replace",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "replace", {"old", "new", "count"});
         auto old_s = b.optional_string(0), new_s = b.optional_string(1);
         if (!old_s || !new_s) fail("replace() takes two string arguments");
         return Value::string(text::replace(s, *old_s, *new_s, b.int_or(2, -1)));
       }},
      {"format", [](const std::string& s, const CallArgs& a) { return Value::string(python_format(s, a)); }},
      {"find",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "find", {"sub"});
         return Value::integer(text::find(s, b.optional_string(0).value_or(""), false));
       }},
      {"rfind",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "rfind", {"sub"});
         return Value::integer(text::find(s, b.optional_string(0).value_or(""), true));
       }},
      {"count",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "count", {"sub"});
         return Value::integer(text::count(s, b.optional_string(0).value_or("")));
       }},
      {"join",
       [](const std::string& s, const CallArgs& a) {
         BoundArgs b(a, "join", {"iterable"});
         std::string out;
         bool first = true;
         for (const Value& v : iterate(b.get_or(0, Value::none()))) {
           if (!v.is_string()) fail(std::string("TypeError: sequence item: expected str instance, ") + type_name(v) + " found");
           if (!first) out += s;
           out += v.s;
           first = false;
         }
         return Value::string(std::move(out));
       }},
      {"isdigit", [](const std::string& s, const CallArgs&) { return Value::boolean(text::all_chars(s, text::is_digit)); }},
      {"isalpha", [](const std::string& s, const CallArgs&) { return Value::boolean(text::all_chars(s, text::is_alpha)); }},
      {"isalnum", [](const std::string& s, const CallArgs&) { return Value::boolean(text::all_chars(s, text::is_alnum)); }},
      {"isspace", [](const std::string& s, const CallArgs&) { return Value::boolean(text::all_chars(s, text::is_space)); }},
      {"islower",
       [](const std::string& s, const CallArgs&) {
         return Value::boolean(text::lower(s) == s && text::upper(s) != s);
       }},
      {"isupper",
       [](const std::string& s, const CallArgs&) {
         return Value::boolean(text::upper(s) == s && text::lower(s) != s);
       }},
  };
  return methods;
}

}  // namespace

// Markup's methods return Markup (split and friends a list of them), and Markup.join escapes.
Value as_markup_result(const std::string& name, Value result) {
  static const std::string_view kStringResults[] = {"strip", "lstrip", "rstrip", "upper", "lower", "casefold", "swapcase",
                                                    "title", "capitalize", "replace", "format", "join"};
  if (result.is_string() && std::find(std::begin(kStringResults), std::end(kStringResults), name) != std::end(kStringResults))
    result.markup = true;
  if (result.kind == Kind::List && (name == "split" || name == "rsplit" || name == "splitlines")) {
    ValueList items = *result.list;
    for (Value& item : items) item.markup = true;
    result = Value::make_list(std::move(items));
  }
  return result;
}

Value string_method(const Value& s, const std::string& name) {
  for (const auto& [n, method] : string_methods()) {
    if (n != name) continue;
    if (!s.markup)
      return Value::make_function("str." + name, [self = s.s, m = method](const CallArgs& a) { return m(self, a); });
    return Value::make_function("Markup." + name, [self = s.s, m = method, name](const CallArgs& a) {
      if (name != "join" || a.positional.empty()) return as_markup_result(name, m(self, a));
      ValueList escaped;
      for (const Value& item : iterate(a.positional[0]))
        escaped.push_back(item.is_string() && !item.markup ? apply_filter("escape", item, {}) : item);
      return as_markup_result(name, m(self, CallArgs{{Value::make_list(std::move(escaped))}, {}}));
    });
  }
  return Value::undefined("'str object' has no attribute '" + name + "'");
}

Value dict_method(const Value& d, const std::string& name) {
  auto dict = d.dict;
  if (name == "items") {
    return Value::make_function("dict.items", [dict](const CallArgs& a) {
      BoundArgs(a, "items", {});
      ValueList out;
      for (const auto& [k, v] : *dict) out.push_back(Value::make_tuple({Value::string(k), v}));
      Value view = Value::make_list(std::move(out));
      view.view_name = "dict_items";
      return view;
    });
  }
  if (name == "keys" || name == "values") {
    bool keys = name == "keys";
    return Value::make_function("dict." + name, [dict, keys](const CallArgs& a) {
      BoundArgs(a, keys ? "keys" : "values", {});
      ValueList out;
      for (const auto& [k, v] : *dict) out.push_back(keys ? Value::string(k) : v);
      Value view = Value::make_list(std::move(out));
      view.view_name = keys ? "dict_keys" : "dict_values";
      return view;
    });
  }
  if (name == "get") {
    return Value::make_function("dict.get", [d](const CallArgs& a) {
      BoundArgs b(a, "get", {"key", "default"});
      const Value* key = b.get(0);
      if (!key) fail("get() takes at least 1 argument");
      const Value* found = key->is_string() ? d.find(key->s) : nullptr;
      return found ? *found : b.get_or(1, Value::none());  // Python's None, not Undefined
    });
  }
  return Value::undefined("");
}

static Value make_namespace(const CallArgs& a) {
  auto ns = std::make_shared<NamespaceObj>();
  auto add = [&](const std::string& key, const Value& v) {
    if (!key.empty() && key[0] == '_')  // transformers' TemplateNamespace refuses these
      fail("SecurityError: chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + key + "'");
    for (auto& [k, old] : ns->attrs) {
      if (k == key) {
        old = v;
        return;
      }
    }
    ns->attrs.emplace_back(key, v);
  };
  if (a.positional.size() > 1) fail("namespace() takes at most one positional argument");
  if (!a.positional.empty()) {
    if (!a.positional[0].is_dict()) fail("namespace() expects a mapping");
    for (const auto& [k, v] : *a.positional[0].dict) add(k, v);
  }
  for (const auto& [k, v] : a.keyword) add(k, v);
  Value out;
  out.kind = Kind::Namespace;
  out.ns = std::move(ns);
  return out;
}

Value builtin_global(const std::string& name, const TimeSource& now) {
  if (name == "range") {
    return Value::make_function("range", [](const CallArgs& a) {
      BoundArgs b(a, "range", {"start", "stop", "step"});
      if (!b.get(0)) fail("range expected at least 1 argument, got 0");
      int64_t start = 0, stop = b.int_or(0, 0), step = 1;
      if (b.get(1)) {
        start = stop;
        stop = b.int_or(1, 0);
        step = b.int_or(2, 1);
      }
      if (step == 0) fail("ValueError: range() arg 3 must not be zero");
      ValueList out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        if (out.size() >= 100000) fail("OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        out.push_back(Value::integer(k));
      }
      return Value::make_list(std::move(out));
    });
  }
  if (name == "namespace") return Value::make_function("namespace", make_namespace);
  if (name == "dict") {
    return Value::make_function("dict", [](const CallArgs& a) {
      ValueDict out;
      if (!a.positional.empty() && a.positional[0].is_dict()) out = *a.positional[0].dict;
      for (const auto& [k, v] : a.keyword) out.emplace_back(k, v);
      return Value::make_dict(std::move(out));
    });
  }
  if (name == "raise_exception") {
    return Value::make_function("raise_exception", [](const CallArgs& a) -> Value {
      BoundArgs b(a, "raise_exception", {"message"});
      throw ChatTemplateError(ChatTemplateError::Kind::kRaised, to_str(b.get_or(0, Value::string(""))));
    });
  }
  if (name == "strftime_now") {
    return Value::make_function("strftime_now", [now](const CallArgs& a) {
      BoundArgs b(a, "strftime_now", {"format"});
      std::string fmt = b.optional_string(0).value_or("");
      std::tm tm = now();
      std::array<char, 1024> buf{};
      size_t n = fmt.empty() ? 0 : std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
      return Value::string(std::string(buf.data(), n));
    });
  }
  if (name == "lipsum" || name == "cycler" || name == "joiner") {  // jinja2 defines them; we do not run them
    return Value::make_function(name, [name](const CallArgs&) -> Value { fail(name + "() is not supported"); });
  }
  return Value::undefined("'" + name + "' is undefined");
}

}  // namespace stem::jinja
