#include "structured/json_schema.h"

#include <map>
#include <set>

#include "structured/regex.h"

namespace stem::structured {

using json = nlohmann::ordered_json;

namespace {

const std::set<std::string>& annotations() {
  static const std::set<std::string> k = {"title",    "description", "default",   "examples",   "$schema",
                                          "$id",      "$comment",    "deprecated", "readOnly",  "writeOnly",
                                          "$defs",    "definitions"};
  return k;
}
const std::set<std::string>& served_keywords() {
  static const std::set<std::string> k = {"type",     "properties", "required", "additionalProperties", "items",
                                          "minItems", "maxItems",   "enum",     "const",                "anyOf",
                                          "$ref",     "pattern",    "minLength", "maxLength"};
  return k;
}

class Compiler {
 public:
  explicit Compiler(const json& root) : root_(root) {}

  Grammar take(int32_t root_rule) {
    g_.set_root(root_rule);
    return std::move(g_);
  }

  int32_t compile(const json& s, const std::string& where) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return any_value();
      throw SchemaError("false", where, "the schema false accepts nothing");
    }
    if (!s.is_object()) throw SchemaError("", where, "a schema must be an object or a boolean");
    for (auto it = s.begin(); it != s.end(); ++it)
      if (!served_keywords().count(it.key()) && !annotations().count(it.key()))
        throw SchemaError(it.key(), where, "the JSON schema keyword '" + it.key() + "' is not supported");
    if (s.contains("$ref")) return ref(s, where);
    if (s.contains("const")) return literal_rule({s["const"].dump()});
    if (s.contains("enum")) {
      const json& e = s["enum"];
      if (!e.is_array() || e.empty()) throw SchemaError("enum", where, "'enum' must be a non-empty list");
      std::vector<std::string> values;
      for (const json& v : e) values.push_back(v.dump());
      return literal_rule(values);
    }
    if (s.contains("anyOf")) return any_of(s, where);
    if (!s.contains("type")) {
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties"))
        return object(s, where);
      if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) return array(s, where);
      if (s.contains("pattern") || s.contains("minLength") || s.contains("maxLength")) return string_schema(s, where);
      return any_value();
    }
    const json& type = s["type"];
    if (type.is_array()) {  // ["string", "null"]: one alternative per type, with the same keywords
      if (type.empty()) throw SchemaError("type", where, "'type' must not be an empty list");
      const int32_t start = g_.add_state(), end = g_.add_state(true);
      for (const json& t : type) {
        json one = s;
        one["type"] = t;
        g_.call(start, compile(one, where), end);
      }
      return start;
    }
    if (!type.is_string()) throw SchemaError("type", where, "'type' must be a string or a list of strings");
    const std::string t = type.get<std::string>();
    if (t == "object") return object(s, where);
    if (t == "array") return array(s, where);
    if (t == "string") return string_schema(s, where);
    if (t == "integer") return number_rule(false);
    if (t == "number") return number_rule(true);
    if (t == "boolean") return literal_rule({"true", "false"});
    if (t == "null") return literal_rule({"null"});
    throw SchemaError("type", where, "unknown type '" + t + "'");
  }

  // Any JSON value; objects and arrays nest through calls back to this rule.
  int32_t any_value() {
    if (any_ >= 0) return any_;
    any_ = g_.add_state();
    const int32_t end = g_.add_state(true);
    const int32_t str = string_rule();
    const int32_t member = g_.add_state(), key = g_.add_state(), colon = g_.add_state(),
                  member_end = g_.add_state(true);  // "key":value
    g_.call(member, str, key);
    g_.edge(key, ':', colon);
    g_.call(colon, any_, member_end);
    any_object_ = list_rule('{', '}', member);
    g_.call(any_, any_object_, end);
    g_.call(any_, list_rule('[', ']', any_), end);
    g_.call(any_, str, end);
    g_.call(any_, number_rule(true), end);
    g_.call(any_, literal_rule({"true", "false", "null"}), end);
    return any_;
  }

  int32_t any_object() {
    any_value();
    return any_object_;
  }

 private:
  // open (item (',' item)*)? close
  int32_t list_rule(uint8_t open, uint8_t close, int32_t item) {
    const int32_t start = g_.add_state(), in = g_.add_state(), after = g_.add_state(), comma = g_.add_state(),
                  end = g_.add_state(true);
    g_.edge(start, open, in);
    g_.edge(in, close, end);
    g_.call(in, item, after);
    g_.edge(after, close, end);
    g_.edge(after, ',', comma);
    g_.call(comma, item, after);
    return start;
  }

  int32_t literal_rule(const std::vector<std::string>& values) {
    const int32_t start = g_.add_state();
    for (int32_t end : g_.literals(start, values)) g_.set_accept(end);
    return start;
  }

  int32_t ref(const json& s, const std::string& where) {
    const json& r = s["$ref"];
    if (!r.is_string()) throw SchemaError("$ref", where, "'$ref' must be a string");
    const std::string path = r.get<std::string>();
    if (auto it = refs_.find(path); it != refs_.end()) return it->second;
    std::string name;
    const json* defs = nullptr;
    for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
      const std::string p = prefix;
      if (path.rfind(p, 0) == 0) {
        name = path.substr(p.size());
        const std::string key = p.substr(2, p.size() - 3);
        if (root_.is_object() && root_.contains(key)) defs = &root_[key];
      }
    }
    if (!defs || name.empty() || name.find('/') != std::string::npos || !defs->is_object() || !defs->contains(name))
      throw SchemaError("$ref", where,
                        "'$ref' \"" + path + "\" must name an entry of the root's \"$defs\" or \"definitions\"");
    // The rule exists before its body, so a definition may refer to itself.
    const int32_t start = g_.add_state(), end = g_.add_state(true);
    refs_[path] = start;
    g_.call(start, compile((*defs)[name], path.substr(1)), end);
    return start;
  }

  int32_t any_of(const json& s, const std::string& where) {
    const json& alts = s["anyOf"];
    if (!alts.is_array() || alts.empty()) throw SchemaError("anyOf", where, "'anyOf' must be a non-empty list");
    for (auto it = s.begin(); it != s.end(); ++it)
      if (it.key() != "anyOf" && !annotations().count(it.key()))
        throw SchemaError(it.key(), where, "'" + it.key() + "' beside 'anyOf' is not supported");
    const int32_t start = g_.add_state(), end = g_.add_state(true);
    for (size_t i = 0; i < alts.size(); ++i)
      g_.call(start, compile(alts[i], where + "/anyOf/" + std::to_string(i)), end);
    return start;
  }

  int32_t object(const json& s, const std::string& where) {
    const json* props = s.contains("properties") ? &s["properties"] : nullptr;
    if (props && !props->is_object()) throw SchemaError("properties", where, "'properties' must be an object");
    bool additional = true;
    if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      if (!a.is_boolean())
        throw SchemaError("additionalProperties", where, "'additionalProperties' other than true or false is not supported");
      additional = a.get<bool>();
    }
    std::set<std::string> required;
    if (s.contains("required")) {
      const json& r = s["required"];
      if (!r.is_array()) throw SchemaError("required", where, "'required' must be a list of property names");
      for (const json& name : r) {
        if (!name.is_string()) throw SchemaError("required", where, "'required' must be a list of property names");
        if (!props || !props->contains(name.get<std::string>()))
          throw SchemaError("required", where,
                            "'required' names \"" + name.get<std::string>() + "\", which is not in 'properties'");
        required.insert(name.get<std::string>());
      }
    }
    if (!props && additional) return any_object();

    std::vector<std::string> keys;  // '"name":'
    std::vector<int32_t> values;
    std::vector<bool> req;
    if (props)
      for (auto it = props->begin(); it != props->end(); ++it) {
        keys.push_back(json(it.key()).dump() + ":");
        values.push_back(compile(it.value(), where + "/properties/" + it.key()));
        req.push_back(required.count(it.key()) > 0);
      }
    // after[i]: properties before i done (at least one written); first: none written yet.
    // Properties come in order; optional ones may be skipped, required ones not.
    const size_t n = keys.size();
    const int32_t start = g_.add_state(), first = g_.add_state(), end = g_.add_state(true);
    g_.edge(start, '{', first);
    std::vector<int32_t> after(n + 1, -1);
    for (size_t i = 1; i <= n; ++i) after[i] = g_.add_state();
    for (size_t i = 0; i <= n; ++i) {
      if (i > 0 && after[i] < 0) continue;
      size_t next_required = i;
      while (next_required < n && !req[next_required]) ++next_required;
      for (int32_t from : {i == 0 ? first : -1, i > 0 ? after[i] : -1}) {
        if (from < 0) continue;
        if (next_required == n) g_.edge(from, '}', end);
        const size_t last = std::min(next_required, n - (n > 0 ? 1 : 0));
        if (n == 0 || i >= n) continue;
        int32_t at = from;
        if (from != first) {
          at = g_.add_state();
          g_.edge(from, ',', at);
        }
        std::vector<std::string> some(keys.begin() + static_cast<std::ptrdiff_t>(i),
                                      keys.begin() + static_cast<std::ptrdiff_t>(last) + 1);
        const std::vector<int32_t> ends = g_.literals(at, some);
        for (size_t k = 0; k < ends.size(); ++k) g_.call(ends[k], values[i + k], after[i + k + 1]);
      }
    }
    return start;
  }

  int32_t array(const json& s, const std::string& where) {
    auto bound = [&](const char* name) -> int64_t {
      if (!s.contains(name)) return -1;
      const json& v = s[name];
      if (!v.is_number_integer() || v.get<int64_t>() < 0)
        throw SchemaError(name, where, std::string("'") + name + "' must be a non-negative integer");
      if (v.get<int64_t>() > kMaxItemsBound)
        throw SchemaError(name, where, std::string("'") + name + "' above " + std::to_string(kMaxItemsBound) +
                                           " is not supported");
      return v.get<int64_t>();
    };
    const int64_t min = std::max<int64_t>(bound("minItems"), 0), max = bound("maxItems");
    if (max >= 0 && min > max) throw SchemaError("minItems", where, "'minItems' is above 'maxItems'");
    const int32_t item = s.contains("items") ? compile(s["items"], where + "/items") : any_value();
    const int32_t start = g_.add_state(), empty = g_.add_state(), end = g_.add_state(true);
    g_.edge(start, '[', empty);
    if (min == 0) g_.edge(empty, ']', end);
    if (max == 0) return start;
    // have[k]: k items written. Unrolled up to max, or up to min where any count may follow.
    const int64_t unroll = max >= 0 ? max : std::max<int64_t>(min, 1);
    std::vector<int32_t> have(static_cast<size_t>(unroll) + 1);
    for (int64_t k = 1; k <= unroll; ++k) have[static_cast<size_t>(k)] = g_.add_state();
    g_.call(empty, item, have[1]);
    for (int64_t k = 1; k <= unroll; ++k) {
      const int32_t h = have[static_cast<size_t>(k)];
      if (k >= min) g_.edge(h, ']', end);
      if (k == unroll && max >= 0) continue;
      const int32_t comma = g_.add_state();
      g_.edge(h, ',', comma);
      g_.call(comma, item, k == unroll ? h : have[static_cast<size_t>(k) + 1]);
    }
    return start;
  }

  // A string schema: any string, or one whose characters match `pattern` in full, or whose
  // length is within minLength / maxLength (characters: code points).
  int32_t string_schema(const json& s, const std::string& where) {
    auto bound = [&](const char* name) -> int64_t {
      if (!s.contains(name)) return -1;
      const json& v = s[name];
      if (!v.is_number_integer() || v.get<int64_t>() < 0)
        throw SchemaError(name, where, std::string("'") + name + "' must be a non-negative integer");
      if (v.get<int64_t>() > kMaxRegexRepeat)
        throw SchemaError(name, where, std::string("'") + name + "' above " + std::to_string(kMaxRegexRepeat) +
                                           " is not supported");
      return v.get<int64_t>();
    };
    const int64_t min = bound("minLength"), max = bound("maxLength");
    if (s.contains("pattern")) {
      const json& p = s["pattern"];
      if (!p.is_string()) throw SchemaError("pattern", where, "'pattern' must be a string");
      if (min >= 0 || max >= 0)
        throw SchemaError(min >= 0 ? "minLength" : "maxLength", where,
                          std::string("'") + (min >= 0 ? "minLength" : "maxLength") +
                              "' beside 'pattern' is not supported (write the length into the pattern)");
      try {
        return add_json_string_regex(g_, p.get<std::string>());
      } catch (const RegexError& e) {
        throw SchemaError("pattern", where, std::string("'pattern': ") + e.what());
      }
    }
    if (min < 0 && max < 0) return string_rule();
    if (max >= 0 && min > max) throw SchemaError("minLength", where, "'minLength' is above 'maxLength'");
    try {
      return add_json_string_length(g_, std::max<int64_t>(min, 0), max);
    } catch (const RegexError& e) {
      throw SchemaError(max >= 0 ? "maxLength" : "minLength", where, e.what());
    }
  }

  // A JSON string: UTF-8 checked (no overlongs, no surrogates), escapes, no control characters;
  // \u escapes of surrogates (\uD...) are left out, so every string decodes.
  int32_t string_rule() {
    if (string_ >= 0) return string_;
    const int32_t start = g_.add_state(), body = g_.add_state(), end = g_.add_state(true);
    g_.edge(start, '"', body);
    g_.edge(body, '"', end);
    g_.edge(body, 0x20, 0x21, body);
    g_.edge(body, 0x23, 0x5B, body);
    g_.edge(body, 0x5D, 0x7F, body);
    const int32_t esc = g_.add_state();
    g_.edge(body, '\\', esc);
    for (char c : std::string("\"\\/bfnrt")) g_.edge(esc, static_cast<uint8_t>(c), body);
    const int32_t u1 = g_.add_state(), u2 = g_.add_state(), u3 = g_.add_state(), u4 = g_.add_state();
    g_.edge(esc, 'u', u1);
    for (auto [lo, hi] : {std::pair<char, char>{'0', '9'}, {'A', 'C'}, {'E', 'F'}, {'a', 'c'}, {'e', 'f'}})
      g_.edge(u1, static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), u2);
    for (auto [from, to] : {std::pair{u2, u3}, {u3, u4}, {u4, body}})
      for (auto [lo, hi] : {std::pair<char, char>{'0', '9'}, {'A', 'F'}, {'a', 'f'}})
        g_.edge(from, static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), to);
    // UTF-8: cont[k] expects k more continuation bytes.
    const int32_t c1 = g_.add_state(), c2 = g_.add_state(), c3 = g_.add_state();
    g_.edge(c1, 0x80, 0xBF, body);
    g_.edge(c2, 0x80, 0xBF, c1);
    g_.edge(c3, 0x80, 0xBF, c2);
    g_.edge(body, 0xC2, 0xDF, c1);
    const int32_t e0 = g_.add_state(), ed = g_.add_state(), f0 = g_.add_state(), f4 = g_.add_state();
    g_.edge(body, 0xE0, e0);
    g_.edge(e0, 0xA0, 0xBF, c1);
    g_.edge(body, 0xE1, 0xEC, c2);
    g_.edge(body, 0xED, ed);
    g_.edge(ed, 0x80, 0x9F, c1);
    g_.edge(body, 0xEE, 0xEF, c2);
    g_.edge(body, 0xF0, f0);
    g_.edge(f0, 0x90, 0xBF, c2);
    g_.edge(body, 0xF1, 0xF3, c3);
    g_.edge(body, 0xF4, f4);
    g_.edge(f4, 0x80, 0x8F, c2);
    return string_ = start;
  }

  // -?(0|[1-9][0-9]{0,14}), and for numbers (\.[0-9]+)?([eE][+-]?[0-9]{1,2})?: at most
  // kMaxIntegerDigits before the point (integers stay exact in a double, which is what most JSON
  // parsers read them into) and two exponent digits (no overflow to infinity).
  int32_t number_rule(bool fraction) {
    int32_t& cached = fraction ? number_ : integer_;
    if (cached >= 0) return cached;
    const int32_t start = g_.add_state(), minus = g_.add_state(), zero = g_.add_state(true);
    std::vector<int32_t> whole;  // whole[k]: k+1 digits written
    for (int k = 0; k < kMaxIntegerDigits; ++k) whole.push_back(g_.add_state(true));
    for (int32_t from : {start, minus}) {
      g_.edge(from, '0', zero);
      g_.edge(from, '1', '9', whole[0]);
    }
    g_.edge(start, '-', minus);
    for (size_t k = 0; k + 1 < whole.size(); ++k) g_.edge(whole[k], '0', '9', whole[k + 1]);
    if (fraction) {
      const int32_t dot = g_.add_state(), frac = g_.add_state(true), e = g_.add_state(), sign = g_.add_state(),
                    exp1 = g_.add_state(true), exp2 = g_.add_state(true);
      std::vector<int32_t> ends = whole;
      ends.push_back(zero);
      for (int32_t from : ends) g_.edge(from, '.', dot);
      g_.edge(dot, '0', '9', frac);
      g_.edge(frac, '0', '9', frac);
      ends.push_back(frac);
      for (int32_t from : ends) {
        g_.edge(from, 'e', e);
        g_.edge(from, 'E', e);
      }
      g_.edge(e, '+', sign);
      g_.edge(e, '-', sign);
      for (int32_t from : {e, sign}) g_.edge(from, '0', '9', exp1);
      g_.edge(exp1, '0', '9', exp2);
    }
    return cached = start;
  }

  const json& root_;
  Grammar g_;
  std::map<std::string, int32_t> refs_;
  int32_t any_ = -1, any_object_ = -1, string_ = -1, integer_ = -1, number_ = -1;
};

}  // namespace

Grammar compile_json_schema(const json& schema) {
  Compiler c(schema);
  const int32_t root = c.compile(schema, "");
  return c.take(root);
}

Grammar any_json_object() {
  Compiler c(json::object());
  const int32_t root = c.any_object();
  return c.take(root);
}

}  // namespace stem::structured
