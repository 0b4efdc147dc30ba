// Token masks over a real tokenizer (tests/fixtures/tokenizers): the trie walk agrees with
// trying every token, EOS comes only with a complete value, and random sampling under the mask
// always yields JSON that the schema accepts.
#include <nlohmann/json.hpp>
#include <filesystem>
#include <map>
#include <random>

#include "structured/json_schema.h"
#include "structured/token_mask.h"
#include "tests/catch.h"
#include "tests/structured/brute_force_mask.h"
#include "tests/structured/schema_check.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace stem::structured {
namespace {

using nlohmann::json;

std::shared_ptr<const TokenVocab> vocab(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const TokenVocab>> cache;
  auto& v = cache[name];
  if (!v) {
    auto tok = load_tokenizer(test::fixtures_dir() + "/tokenizers/" + name);
    v = TokenVocab::from_tokenizer(*tok, tok->vocab_size() + 5);  // a model vocabulary larger than the tokenizer's
  }
  return v;
}

int32_t id_of(const TokenVocab& v, const std::string& bytes) {
  for (size_t id = 0; id < v.num_tokens(); ++id)
    if (v.bytes(static_cast<int32_t>(id)) == bytes) return static_cast<int32_t>(id);
  return -1;
}

const json kPerson = json::parse(R"({"type": "object", "additionalProperties": false, "required": ["name", "age"],
  "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "email": {"anyOf": [{"type": "string"},
  {"type": "null"}]}, "role": {"enum": ["admin", "user"]}, "scores": {"type": "array", "items": {"type": "number"},
  "maxItems": 4}, "address": {"type": "object", "additionalProperties": false, "required": ["city"],
  "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}, "active": {"type": "boolean"}}})");

TEST_CASE("token bytes: byte-level and SentencePiece-style vocabularies") {
  for (const char* name : {"smollm2", "qwen2", "llama3"}) {
    const auto& v = *vocab(name);
    INFO(name);
    CHECK(id_of(v, " the") >= 0);
    CHECK(id_of(v, "\n") >= 0);
    CHECK_FALSE(v.eos_ids().empty());
    for (int32_t eos : v.eos_ids()) CHECK(v.bytes(eos).empty());  // special: never part of the JSON
  }
  const auto& sp = *vocab("llama2_hf");
  CHECK(id_of(sp, " the") >= 0);
  CHECK(id_of(sp, "\n") >= 0);  // <0x0A>
}

TEST_CASE("the trie walk's mask equals trying every token, along a document") {
  for (const char* name : {"smollm2", "llama2_hf"}) {
    auto v = vocab(name);
    TokenGrammar tg(compile_json_schema(kPerson), v);
    const std::string doc = R"({"address":{"city":"Paris \u00e9\"x"},"age":-42,"email":null,"name":"Ann","scores":[1.5,2e3]})";
    GrammarMatcher m(tg.grammar());
    for (size_t i = 0; i <= doc.size(); ++i) {
      INFO(name << " after " << doc.substr(0, i));
      CHECK(tg.compute_mask(m) == brute_force_mask(*v, m));
      if (i < doc.size()) REQUIRE(m.advance(static_cast<uint8_t>(doc[i])));
    }
    CHECK(m.can_end());
  }
}

TEST_CASE("tokens that span several JSON units, and EOS only when the value is complete") {
  auto v = vocab("smollm2");
  auto tg = std::make_shared<TokenGrammar>(compile_json_schema(kPerson), v);
  TokenMatcher tm(tg);
  const int32_t eos = v->eos_ids().at(0);
  auto id = [&](const std::string& bytes) {
    const int32_t i = id_of(*v, bytes);
    REQUIRE(i >= 0);
    return i;
  };
  auto allowed = [&](const std::string& bytes) { return mask_allows(tm.mask(), id(bytes)); };
  CHECK(allowed("{"));
  CHECK_FALSE(allowed(" \""));  // no whitespace outside strings
  CHECK_FALSE(mask_allows(tm.mask(), eos));
  // Properties come in the schema's (sorted) order: active, address, age, email, name, ...
  for (const char* piece : {"{", "\"", "age", "\"", ":", "1", ",", "\"", "name", "\"", ":", "\"", "A"}) {
    INFO(piece);
    CHECK(allowed(piece));
    REQUIRE(tm.accept(id(piece)));
  }
  CHECK(allowed("\","));  // the string's end and the comma before "role" or "scores", in one token
  CHECK_FALSE(mask_allows(tm.mask(), eos));
  CHECK(allowed(" the"));
  CHECK_FALSE(tm.accept(id("\n")));  // a raw newline inside a string: refused, and nothing changes
  REQUIRE(tm.accept(id("\"")));
  CHECK(allowed("}"));
  CHECK_FALSE(allowed("]"));
  REQUIRE(tm.accept(id("}")));
  CHECK(tm.can_end());
  CHECK(mask_allows(tm.mask(), eos));
  CHECK_FALSE(allowed(","));  // a complete object: only EOS
  REQUIRE(tm.accept(eos));
  CHECK(tm.finished());
  CHECK(mask_allows(tm.mask(), eos));
  CHECK(tg->cached_states() > 0);
}

TEST_CASE("the default model's vocabulary: multi-unit tokens such as {\" and \":\"") {
  const auto dir = test::default_model_dir();
  if (!std::filesystem::exists(dir / "tokenizer.json")) SKIP("default model not prepared at " << dir);
  auto tok = load_tokenizer(dir);
  auto v = TokenVocab::from_tokenizer(*tok, tok->vocab_size());
  auto tg = std::make_shared<TokenGrammar>(compile_json_schema(kPerson), v);
  TokenMatcher tm(tg);
  auto step = [&](const std::string& bytes, bool expect) {
    const int32_t i = id_of(*v, bytes);
    INFO(bytes);
    REQUIRE(i >= 0);
    CHECK(mask_allows(tm.mask(), i) == expect);
    if (expect) REQUIRE(tm.accept(i));
  };
  step("{\"", true);
  step("age", true);
  step("\":\"", false);  // an integer follows, not a string
  step("\":", true);
  step("4", true);
  step(",\"", true);
  step("name", true);
  step("\":\"", true);
  step("Bob", true);
  step("\"}", true);
  CHECK(tm.can_end());
  GrammarMatcher m(tg->grammar());
  REQUIRE(m.advance(std::string(R"({"address":{"city":"Paris"},"age":3,"name":"A)")));
  CHECK(tg->compute_mask(m) == brute_force_mask(*v, m));
}

// Samples among the allowed tokens (EOS as soon as it is allowed) until EOS; returns
// the text, or "" when `limit` tokens were not enough.
std::string random_document(const std::shared_ptr<TokenGrammar>& tg, uint64_t seed, int limit) {
  std::mt19937_64 rng(seed);
  TokenMatcher tm(tg);
  const TokenVocab& v = tg->vocab();
  std::string text;
  std::vector<int32_t> ids;
  for (int step = 0; step < limit; ++step) {
    const uint32_t* mask = tm.mask();
    for (int32_t eos : v.eos_ids())
      if (mask_allows(mask, eos)) {
        REQUIRE(tm.accept(eos));
        return text;
      }
    ids.clear();
    for (int64_t id = 0; id < v.mask_size(); ++id)
      if (mask_allows(mask, static_cast<int32_t>(id))) ids.push_back(static_cast<int32_t>(id));
    REQUIRE_FALSE(ids.empty());
    // Half the time among the tokens that close something, so that strings and lists end.
    if (rng() % 2) {
      std::vector<int32_t> closing;
      for (int32_t id : ids)
        if (v.bytes(id).find_first_of("\"]}") != std::string::npos) closing.push_back(id);
      if (!closing.empty()) ids.swap(closing);
    }
    const int32_t id = ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)];
    REQUIRE(tm.accept(id));
    text += v.bytes(id);
  }
  return "";
}

TEST_CASE("random sampling under the mask: every output parses and the schema accepts it") {
  const std::vector<json> schemas = {
      kPerson,
      json::parse(R"({"type": "array", "items": {"type": "object", "additionalProperties": false,
        "required": ["ok"], "properties": {"ok": {"type": "boolean"}, "n": {"type": ["integer", "null"]}}},
        "minItems": 1, "maxItems": 3})"),
      json::parse(R"({"enum": ["red", "green", "blue", 3, null]})"),
      json::parse(R"({"type": "object", "additionalProperties": false, "required": ["a"], "properties":
        {"a": {"type": "object", "additionalProperties": false, "required": ["b"], "properties":
        {"b": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}}})"),
  };
  for (const char* name : {"smollm2", "llama2_hf"}) {
    for (size_t k = 0; k < schemas.size(); ++k) {
      auto tg = std::make_shared<TokenGrammar>(compile_json_schema(schemas[k]), vocab(name));
      int finished = 0;
      for (uint64_t seed = 0; seed < 40; ++seed) {
        const std::string text = random_document(tg, seed * 7919 + k, 400);
        if (text.empty()) continue;
        ++finished;
        INFO(name << " schema " << k << " seed " << seed << ": " << text);
        json value;
        REQUIRE_NOTHROW(value = json::parse(text));
        CHECK(test::schema_accepts(value, schemas[k]));
      }
      INFO(name << " schema " << k);
      CHECK(finished >= 20);
    }
  }
  // Any JSON object (response_format json_object).
  auto tg = std::make_shared<TokenGrammar>(any_json_object(), vocab("smollm2"));
  int finished = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const std::string text = random_document(tg, seed, 400);
    if (text.empty()) continue;
    ++finished;
    INFO(text);
    json value;
    REQUIRE_NOTHROW(value = json::parse(text));
    CHECK(value.is_object());
  }
  CHECK(finished >= 20);
}

}  // namespace
}  // namespace stem::structured
