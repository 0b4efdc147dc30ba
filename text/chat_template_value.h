// The values a chat template computes with: Python's None/bool/int/float/str/list/tuple/dict plus
// jinja2's Undefined, namespace() objects and callables, with Python's semantics where a template
// can observe them (truthiness, ==, str(), repr(), json.dumps()).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace stem::jinja {

struct Value;
using ValueList = std::vector<Value>;
// Insertion-ordered like a Python dict; keys are strings (all that JSON and templates produce).
using ValueDict = std::vector<std::pair<std::string, Value>>;

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct FunctionObj {
  std::string name;
  std::function<Value(const CallArgs&)> call;
};

// namespace() objects are the one mutable value: `{% set ns.x = ... %}` inside a loop must be seen
// after it, so copies share the attributes.
struct NamespaceObj {
  ValueDict attrs;
};

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Function };

struct Value {
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;  // the string, or for Undefined the reason ("'x' is undefined") used in errors
  std::shared_ptr<const ValueList> list;  // List and Tuple
  std::shared_ptr<const ValueDict> dict;
  std::shared_ptr<NamespaceObj> ns;
  std::shared_ptr<const FunctionObj> fn;
  const char* view_name = nullptr;  // "dict_items" etc.: a list that Python prints as a dict view
  bool markup = false;  // a markupsafe.Markup string (from |safe, |e): prints as Markup('...') in repr

  static Value undefined(std::string reason);
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value markup_string(std::string v);  // a Markup: |safe and |e make these
  static Value make_list(ValueList items);
  static Value make_tuple(ValueList items);
  static Value make_dict(ValueDict items);
  static Value make_function(std::string name, std::function<Value(const CallArgs&)> call);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_sequence() const { return kind == Kind::List || kind == Kind::Tuple; }
  bool is_dict() const { return kind == Kind::Dict; }
  bool is_number() const { return kind == Kind::Bool || kind == Kind::Int || kind == Kind::Float; }
  bool is_integral() const { return kind == Kind::Bool || kind == Kind::Int; }
  int64_t as_int() const { return kind == Kind::Bool ? (b ? 1 : 0) : i; }
  double as_double() const { return kind == Kind::Float ? f : static_cast<double>(as_int()); }

  bool truthy() const;
  // Dict entry by key; nullptr when absent (or when this is not a dict).
  const Value* find(std::string_view key) const;
};

// A string result that keeps `like`'s Markup-ness, as Markup's own methods do.
inline Value string_like(const Value& like, std::string s) {
  Value v = Value::string(std::move(s));
  v.markup = like.markup;
  return v;
}

// Internal failure while rendering; the interpreter adds the template line and turns it into a
// ChatTemplateError.
class RenderFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
[[noreturn]] void fail(const std::string& message);
// jinja2's UndefinedError: any use of an Undefined beyond printing, testing and iterating.
[[noreturn]] void fail_undefined(const Value& v);

const char* type_name(const Value& v);  // Python's: 'str', 'int', 'NoneType', 'dict', ...
bool values_equal(const Value& a, const Value& b);
bool value_less(const Value& a, const Value& b);  // Python's <, failing where Python raises TypeError

std::string to_str(const Value& v);   // Python str(); Undefined prints as ""
std::string to_repr(const Value& v);  // Python repr()
std::string float_repr(double v);     // Python repr(float): shortest round-trip, '1e-05', '2.0'

struct JsonStyle {
  std::optional<std::string> indent;  // json.dumps indent (already as the indent string)
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;  // escape non-ASCII as \uXXXX (surrogate pairs above U+FFFF)
};
std::string to_json_text(const Value& v, const JsonStyle& style);  // json.dumps(ensure_ascii=False)

Value from_json(const nlohmann::ordered_json& j);

// The items a `for` loop (or list()) visits: list/tuple elements, dict keys, string characters;
// nothing for Undefined. Fails for values Python cannot iterate.
ValueList iterate(const Value& v);
int64_t length_of(const Value& v);  // Python len()

}  // namespace stem::jinja
