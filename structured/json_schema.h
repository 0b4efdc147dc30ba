// JSON schemas (a subset) compiled to a byte-level Grammar that accepts exactly the compact JSON
// texts (no whitespace outside strings; numbers within kMaxIntegerDigits) that the schema
// accepts, within these rules:
//   type: object, array, string, integer, number, boolean, null, or a list of them
//   object: properties, required, additionalProperties (false, true or absent: only the listed
//     properties are generated, in the schema's order; no properties listed and no
//     additionalProperties: false means any object)
//   array: items, minItems, maxItems (at most kMaxItemsBound)
//   string: pattern (structured/regex.h's subset, matched against the whole string), or
//     minLength / maxLength (characters, at most kMaxRegexRepeat); not both
//   enum, const (any JSON values), anyOf, $ref to "#/$defs/..." or "#/definitions/..."
//   annotations, ignored: title, description, default, examples, $schema, $id, $comment,
//     deprecated, readOnly, writeOnly, $defs, definitions
// Any other keyword throws SchemaError naming it and where it is (a JSON pointer).
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "structured/grammar.h"

namespace stem::structured {

constexpr int64_t kMaxItemsBound = 256;
// Numbers have at most this many digits before the point and two exponent digits.
constexpr int kMaxIntegerDigits = 15;

class SchemaError : public std::runtime_error {
 public:
  SchemaError(const std::string& keyword, const std::string& where, const std::string& why)
      : std::runtime_error(why + (where.empty() ? "" : " (at " + where + ")")), keyword_(keyword) {}
  const std::string& keyword() const { return keyword_; }

 private:
  std::string keyword_;
};

// The grammar of the JSON texts the schema accepts. `true` and {} accept any JSON value. An object's
// properties are generated in the order the schema lists them (a plain nlohmann::json converts,
// its keys sorted).
Grammar compile_json_schema(const nlohmann::ordered_json& schema);
// Any JSON object (response_format json_object).
Grammar any_json_object();

}  // namespace stem::structured
