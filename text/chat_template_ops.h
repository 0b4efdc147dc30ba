// Operations on template values: operators, attribute and item access, filters, tests, methods
// and global functions, each with the semantics jinja2 gives it on Python values.
#pragma once

#include <ctime>
#include <functional>
#include <string>
#include <string_view>

#include "text/chat_template_value.h"

namespace stem::jinja {

// Binds call arguments to parameter names the way Python does, for builtins.
class BoundArgs {
 public:
  BoundArgs(const CallArgs& args, std::string_view function, std::initializer_list<std::string_view> params);
  const Value* get(size_t index) const { return index < bound_.size() ? bound_[index] : nullptr; }
  Value get_or(size_t index, Value fallback) const;
  std::optional<std::string> optional_string(size_t index) const;  // absent or None: nullopt
  int64_t int_or(size_t index, int64_t fallback) const;
  bool bool_or(size_t index, bool fallback) const;

 private:
  std::string function_;
  std::vector<const Value*> bound_;
};

Value binary_op(const std::string& op, const Value& a, const Value& b);  // + - * / // % **
Value concat_str(const Value& a, const Value& b);                        // ~
Value printf_format(const std::string& format, const Value& args);       // str % args
bool compare_op(const std::string& op, const Value& a, const Value& b);  // == != < <= > >= in notin
Value negate(const Value& v, bool minus);
bool is_hashable(const Value& v);  // what Python can put in a set or use as a dict key

// jinja2's environment.getattr / getitem: attribute first then item (or the reverse), and an
// Undefined when neither exists. Using either on an Undefined fails.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value* start, const Value* stop, const Value* step);
// The filters' attribute lookup ("a.b" or "0"), Undefined when missing (or `fallback` if given).
Value get_attribute_path(const Value& obj, const Value& path, const Value* fallback = nullptr);
Value call_value(const Value& callee, const CallArgs& args);

bool has_filter(std::string_view name);
bool has_test(std::string_view name);
Value apply_filter(const std::string& name, const Value& v, const CallArgs& args);
bool apply_test(const std::string& name, const Value& v, const CallArgs& args);

// Bound methods of str and dict values (`s.strip`, `d.items`); Undefined when there is none.
Value string_method(const Value& s, const std::string& name);
Value dict_method(const Value& d, const std::string& name);

// Globals every template sees unless the context overrides them: range, namespace, dict,
// raise_exception, strftime_now.
using TimeSource = std::function<std::tm()>;
Value builtin_global(const std::string& name, const TimeSource& now);

}  // namespace stem::jinja
