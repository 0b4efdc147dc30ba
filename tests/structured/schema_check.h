// A JSON-schema check for the subset structured/json_schema.h compiles (a second, independent
// reading of it): the tests validate every constrained output with it.
#pragma once
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

namespace stem::test {

// Code points of a UTF-8 string (the unit of minLength / maxLength).
inline size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// `pattern` checked with std::regex (ECMAScript; the whole string, as structured/ generates it)
// unless the check is off: the schema fuzzer's random patterns use syntax std::regex reads
// otherwise (it checks patterns against itself in fuzz_regex instead). A pattern std::regex
// cannot read is not checked.
inline bool& check_patterns() {
  static bool on = true;
  return on;
}

inline bool schema_accepts(const nlohmann::json& v, const nlohmann::json& s, const nlohmann::json& root) {
  using nlohmann::json;
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    const std::string defs = ref.rfind("#/$defs/", 0) == 0 ? "$defs" : "definitions";
    return schema_accepts(v, root[defs][ref.substr(ref.find('/', 2) + 1)], root);
  }
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) {
    for (const json& e : s["enum"])
      if (v == e) return true;
    return false;
  }
  if (s.contains("anyOf")) {
    for (const json& a : s["anyOf"])
      if (schema_accepts(v, a, root)) return true;
    return false;
  }
  if (s.contains("type")) {
    const json& t = s["type"];
    if (t.is_array()) {
      for (const json& one : t) {
        json copy = s;
        copy["type"] = one;
        if (schema_accepts(v, copy, root)) return true;
      }
      return false;
    }
    const std::string type = t;
    if (type == "string") {
      if (!v.is_string()) return false;
      const std::string str = v.get<std::string>();
      if (s.contains("minLength") && code_points(str) < s["minLength"].get<size_t>()) return false;
      if (s.contains("maxLength") && code_points(str) > s["maxLength"].get<size_t>()) return false;
      if (s.contains("pattern") && check_patterns()) {
        std::regex re;
        try {
          re = std::regex(s["pattern"].get<std::string>(), std::regex::ECMAScript);
        } catch (const std::regex_error&) {
          return true;
        }
        return std::regex_match(str, re);
      }
      return true;
    }
    if (type == "integer") return v.is_number_integer();
    if (type == "number") return v.is_number();
    if (type == "boolean") return v.is_boolean();
    if (type == "null") return v.is_null();
    if (type == "object" && !v.is_object()) return false;
    if (type == "array" && !v.is_array()) return false;
  }
  if (v.is_object()) {
    const json props = s.value("properties", json::object());
    for (const json& r : s.value("required", json::array()))
      if (!v.contains(r.get<std::string>())) return false;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props.contains(it.key())) {
        if (!schema_accepts(it.value(), props[it.key()], root)) return false;
      } else if (s.contains("additionalProperties") && s["additionalProperties"] == false) {
        return false;
      }
    }
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
    if (s.contains("items"))
      for (const json& item : v)
        if (!schema_accepts(item, s["items"], root)) return false;
  }
  return true;
}

inline bool schema_accepts(const nlohmann::json& v, const nlohmann::json& schema) {
  return schema_accepts(v, schema, schema);
}

}  // namespace stem::test
