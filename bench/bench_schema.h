// The JSON schema the structured-output benchmarks constrain with (bench_structured on the CPU,
// bench_constrained through the whole engine): a typical response_format schema, a nested
// object with arrays, an enum, optional fields, anyOf and required fields.
#pragma once

namespace stem::bench {

inline constexpr const char* kTypicalSchema = R"({"type": "object", "additionalProperties": false,
  "required": ["name", "age", "address", "tags"],
  "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
    "email": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "role": {"enum": ["admin", "editor", "viewer"]}, "verified": {"type": "boolean"},
    "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 8},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
    "address": {"type": "object", "additionalProperties": false, "required": ["city", "country"],
      "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"},
        "country": {"type": "string"}}}}})";

}  // namespace stem::bench
