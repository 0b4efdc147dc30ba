// The OpenAI request parser and response builder without HTTP: fields land in the engine
// request, bad fields name themselves, events become choices, chunks and usage.
#include "text/tokenizer.h"
#include "server/openai_response.h"
#include "server/request_parse.h"
#include "tests/test_util.h"

using namespace stem;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const Engine& engine() {
  static std::unique_ptr<Engine> e = [] {
    EngineOptions o;
    o.max_model_len = 128;
    o.max_num_seqs = 4;
    return std::make_unique<Engine>(test::default_model_dir(), o);
  }();
  return *e;
}

ServedModel served() { return ServedModel{"smol", test::default_model_dir().string(), &engine()}; }

// The ApiError's status and param for a body ("" when it parses).
std::pair<int, std::string> failure(ApiKind kind, const std::string& body) {
  try {
    parse_generation(kind, parse_json_body(body), served());
  } catch (const ApiError& e) {
    return {e.status(), e.param()};
  }
  return {0, ""};
}

}  // namespace

TEST_CASE("request parse: completion fields become the engine request") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto p = parse_generation(ApiKind::Completion, parse_json_body(R"({
      "model": "smol", "prompt": "Hello world", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": -0.3,
      "n": 2, "seed": 11, "stop": ["\n", "END"], "stop_token_ids": [5], "ignore_eos": true, "logprobs": 3,
      "stream": true, "stream_options": {"include_usage": true}, "cache_salt": "tenant-7"})"), served());
  const GenerateRequest& r = p.request;
  CHECK(r.cache_salt == "tenant-7");
  CHECK(r.prompt == engine().tokenizer().encode("Hello world", true));
  CHECK(r.stop.max_tokens == 7);
  CHECK(r.sampling.temperature == 0.5f);
  CHECK(r.sampling.top_p == 0.9f);
  CHECK(r.sampling.top_k == 40);
  CHECK(r.sampling.min_p == 0.1f);
  CHECK(r.sampling.repetition_penalty == 1.2f);
  CHECK(r.sampling.presence_penalty == 0.3f);
  CHECK(r.sampling.frequency_penalty == -0.3f);
  CHECK(r.n == 2);
  CHECK(r.sampling.seed == 11u);
  CHECK(r.stop.stop == std::vector<std::string>{"\n", "END"});
  CHECK(r.stop.stop_token_ids == std::vector<int32_t>{5});
  CHECK(r.stop.ignore_eos);
  CHECK(p.logprobs);
  CHECK(p.top_logprobs == 3);
  CHECK(r.sampling.top_logprobs == 3);
  CHECK(p.stream);
  CHECK(p.include_usage);
}

TEST_CASE("request parse: defaults, token-id prompts and chat messages") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto c = parse_generation(ApiKind::Completion, parse_json_body(R"({"prompt": [1, 2, 3]})"), served());
  CHECK(c.request.prompt == std::vector<int32_t>{1, 2, 3});
  CHECK(c.request.stop.max_tokens == 16);  // OpenAI's completions default
  CHECK(c.request.sampling.temperature == 1.0f);
  CHECK_FALSE(c.stream);
  auto one = parse_generation(ApiKind::Completion, parse_json_body(R"({"prompt": ["Hi"]})"), served());
  CHECK(one.request.prompt == engine().tokenizer().encode("Hi", true));

  auto chat = parse_generation(ApiKind::Chat, parse_json_body(R"({"messages": [
      {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}],
      "logprobs": true, "top_logprobs": 2})"), served());
  const std::string rendered = engine().apply_chat_template(nlohmann::ordered_json::parse(R"([{"role":"user","content":"Hello"}])"), true);
  CHECK(chat.request.prompt == engine().tokenizer().encode(rendered, false));
  // Chat defaults to what the context leaves.
  CHECK(chat.request.stop.max_tokens == 128 - static_cast<int32_t>(chat.request.prompt.size()));
  CHECK(chat.logprobs);
  CHECK(chat.top_logprobs == 2);
  auto mct = parse_generation(ApiKind::Chat,
                              parse_json_body(R"({"messages": [{"role": "user", "content": "Hi"}],
                                                  "max_tokens": 9, "max_completion_tokens": 4})"),
                              served());
  CHECK(mct.request.stop.max_tokens == 4);
}

TEST_CASE("request parse: each bad field is a 4xx naming it") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  using P = std::pair<int, std::string>;
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "model": "other"})") == P{404, "model"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": 3})") == P{400, "prompt"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": ["a", "b"]})") == P{400, "prompt"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "max_tokens": 1.5})") == P{400, "max_tokens"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "max_tokens": 128})") == P{400, "max_tokens"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "n": 5})") == P{400, "n"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "temperature": 2.5})") == P{400, "temperature"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "min_p": 2})") == P{400, "min_p"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "top_k": -2})") == P{400, "top_k"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "ignore_eos": 1})") == P{400, "ignore_eos"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "logprobs": 21})") == P{400, "logprobs"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "echo": true})") == P{400, "echo"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "stream_options": 1})") == P{400, "stream_options"});
  // Fields not served are refused by name; stream_options needs stream; roles are OpenAI's.
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "logit_bias": {"1": 2}})") == P{400, "logit_bias"});
  CHECK(failure(ApiKind::Chat, R"({"messages": [{"role": "user", "content": "Hi"}], "store": true})") ==
        P{400, "store"});
  CHECK(failure(ApiKind::Chat, R"({"messages": [{"role": "user", "content": "Hi"}], "prompt": "x"})") ==
        P{400, "prompt"});
  CHECK(failure(ApiKind::Completion, R"({"prompt": "Hi", "stream_options": {"include_usage": true}})") ==
        P{400, "stream_options"});
  CHECK(failure(ApiKind::Chat, R"({"messages": [{"role": "robot", "content": "Hi"}]})") ==
        P{400, "messages[0].role"});
  CHECK_NOTHROW(parse_generation(ApiKind::Chat,
                                 parse_json_body(R"({"messages": [{"role": "developer", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi"}], "user": "u-1"})"),
                                 served()));
  CHECK(failure(ApiKind::Completion, R"({"prompt": [1, -4]})") == P{400, "prompt"});
  CHECK(failure(ApiKind::Chat, R"({"messages": "hi"})") == P{400, "messages"});
  CHECK(failure(ApiKind::Chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})") ==
        P{400, "messages[0].content"});
  CHECK(failure(ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 30,
                                  "logprobs": true})") == P{400, "top_logprobs"});
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "hello ";
  CHECK(failure(ApiKind::Completion, R"({"prompt": ")" + long_prompt + R"("})") == P{400, "prompt"});
  CHECK(test::error_of([] { parse_json_body("[1]"); }).find("JSON object") != std::string::npos);
  CHECK(test::error_of([] { parse_json_body("{\"prompt\": \"\xc3\x28\"}"); }).find("UTF-8") != std::string::npos);
}

TEST_CASE("response builder: events become choices, stream chunks and usage") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto p = parse_generation(ApiKind::Chat,
                            parse_json_body(R"({"messages": [{"role": "user", "content": "Hi"}], "n": 2,
                                                "logprobs": true, "top_logprobs": 1, "stream": true,
                                                "stream_options": {"include_usage": true}})"),
                            served());
  ResponseBuilder rb(p, "smol", engine().tokenizer());
  CHECK(rb.id().rfind("chatcmpl-", 0) == 0);
  auto token = [&](int32_t index, int32_t id, std::string text, int64_t n, bool finished = false) {
    TokenEvent e;
    e.index = index;
    e.token = id;
    e.text = std::move(text);
    e.sample.token = id;
    e.sample.logprob = -0.5f;
    e.sample.top = {{id, -0.5f}};
    e.completion_tokens = n;
    e.finished = finished;
    return e;
  };
  json c0 = rb.add(token(0, 19556, "Hello", 1)).at(0);
  CHECK(c0["object"] == "chat.completion.chunk");
  CHECK(c0["choices"][0]["delta"]["content"] == "Hello");
  CHECK(c0["choices"][0]["logprobs"]["content"][0]["token"] == "Hello");
  CHECK(c0["usage"].is_null());
  TokenEvent stop = token(0, 2, "", 2, true);
  stop.finish = FinishReason::Stop;
  stop.stop_reason = "2";
  json c1 = rb.add(stop).at(0);
  CHECK(c1["choices"][0]["finish_reason"] == "stop");
  CHECK(c1["choices"][0]["stop_reason"] == 2);
  TokenEvent len = token(1, 905, " world", 1, true);
  len.finish = FinishReason::Length;
  len.cached_tokens = 16;
  rb.add(len);
  json r = rb.response();
  CHECK(r["object"] == "chat.completion");
  CHECK(r["choices"][0]["message"]["content"] == "Hello");
  CHECK(r["choices"][1]["message"]["content"] == " world");
  CHECK(r["choices"][1]["finish_reason"] == "length");
  CHECK(r["choices"][0]["logprobs"]["content"].size() == 2);
  CHECK(r["usage"]["completion_tokens"] == 3);
  CHECK(r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"].get<int64_t>() + 3);
  CHECK(r["usage"]["prompt_tokens_details"]["cached_tokens"] == 16);
  json u = rb.usage_chunk();
  CHECK(u["choices"].empty());
  CHECK(u["usage"] == r["usage"]);
  CHECK(rb.role_chunk(1)["choices"][0]["delta"]["role"] == "assistant");
}

TEST_CASE("request parse: a body nested too deep is a 400, not a stack overflow") {
  auto nested = [](int depth) {
    return R"({"messages": [{"role": "user", "content": "hi", "x": )" + std::string(depth, '[') +
           std::string(depth, ']') + "}]}";
  };
  CHECK_NOTHROW(parse_json_body(nested(50)));
  for (int depth : {kMaxJsonDepth, 200000}) {
    try {
      parse_json_body(nested(depth));
      FAIL("no error at depth " << depth);
    } catch (const ApiError& e) {
      CHECK(e.status() == 400);
      CHECK_THAT(e.what(), Catch::Matchers::Contains("nested deeper than"));
    }
  }
}

TEST_CASE("request parse: a number too large for a double is a 400") {
  for (const char* body : {R"({"prompt": "Hi", "max_tokens": 1E400})", R"({"x": -1e99999})"}) {
    try {
      parse_json_body(body);
      FAIL("no error for " << body);
    } catch (const ApiError& e) {
      CHECK(e.status() == 400);
      CHECK_THAT(e.what(), Catch::Matchers::Contains("not valid JSON"));
    }
  }
}

TEST_CASE("request parse: response_format becomes the request's grammar, or a 400 naming it") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  using P = std::pair<int, std::string>;
  auto parse = [](const std::string& body) { return parse_generation(ApiKind::Chat, parse_json_body(body), served()); };
  const std::string chat = R"({"messages": [{"role": "user", "content": "x"}], )";
  CHECK_FALSE(parse(chat + R"("response_format": {"type": "text"}})").request.sampling.grammar);
  CHECK(parse(chat + R"("response_format": {"type": "json_object"}})").request.sampling.grammar);
  const ParsedGeneration p = parse(chat + R"("response_format": {"type": "json_schema", "json_schema": {"name": "n",
      "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}})");
  REQUIRE(p.request.sampling.grammar);
  structured::GrammarMatcher m(p.request.sampling.grammar->grammar());
  CHECK((m.advance(std::string(R"({"a":12})")) && m.can_end()));
  CHECK(p.request.sampling.grammar->vocab().mask_size() == engine().config().vocab_size);

  for (const char* rf : {R"("json")", R"({"type": "yaml"})", R"({"type": "json_schema"})",
                         R"({"type": "json_schema", "json_schema": {"schema": {}}})",
                         R"({"type": "json_object", "schema": {}})",
                         R"({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string", "pattern": "(?=a)b"}}})",
                         R"({"type": "regex"})", R"({"type": "choice"})",
                         R"({"type": "json_schema", "json_schema": {"name": "n", "extra": 1}})"}) {
    INFO(rf);
    CHECK(failure(ApiKind::Chat, chat + R"("response_format": )" + rf + "}") == P{400, "response_format"});
  }
  const std::string msg = test::error_of([&] {
    parse(chat + R"("response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema":
        {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}})");
  });
  CHECK(msg.find("'format' is not supported (at /properties/d)") != std::string::npos);
}

TEST_CASE("request parse: requests with the same constraint share one compiled grammar, and its masks") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  const ServedModel m = served();
  auto grammar = [&](const std::string& body) {
    auto g = parse_generation(ApiKind::Completion, parse_json_body(body), m).request.sampling.grammar;
    REQUIRE(g);
    return g;
  };
  const auto a = grammar(R"({"prompt": "Hi", "structured_outputs": {"regex": "a+"}})");
  CHECK(grammar(R"({"prompt": "Other", "max_tokens": 3, "structured_outputs": {"regex": "a+"}})") == a);
  CHECK(grammar(R"({"prompt": "Hi", "guided_regex": "a+"})") == a);  // the same constraint, another field
  CHECK(grammar(R"({"prompt": "Hi", "structured_outputs": {"regex": "a*"}})") != a);
  CHECK(grammar(R"({"prompt": "Hi", "structured_outputs": {"choice": ["a+"]}})") != a);  // another kind, same text
  const std::string ab = R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})";
  const std::string ba = R"({"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}})";
  const auto schema = grammar(R"({"prompt": "Hi", "structured_outputs": {"json": )" + ab + "}}");
  CHECK(grammar(R"({"prompt": "Hi", "guided_json": )" + ab + "}") == schema);
  CHECK(grammar(R"({"prompt": "Hi", "guided_json": )" + ba + "}") != schema);  // properties in the order sent
  // A mask computed for one request serves the next.
  std::vector<uint32_t> spill;
  (void)schema->mask(structured::GrammarMatcher(schema->grammar()), spill);
  const size_t cached = schema->cached_states();
  CHECK(cached > 0);
  CHECK(grammar(R"({"prompt": "Again", "guided_json": )" + ab + "}")->cached_states() == cached);
  // A refused constraint caches nothing; the cache keeps the most recent kGrammars.
  const size_t before = m.grammars->size();
  CHECK_THROWS_AS(grammar(R"({"prompt": "Hi", "guided_regex": "(a"})"), ApiError);
  CHECK(m.grammars->size() == before);
  for (size_t i = 0; i < GrammarCache::kGrammars; ++i)
    (void)grammar(R"({"prompt": "Hi", "guided_regex": "x{)" + std::to_string(i + 1) + R"(}"})");
  CHECK(m.grammars->size() == GrammarCache::kGrammars);
  CHECK(grammar(R"({"prompt": "Hi", "guided_regex": "a+"})") != a);  // evicted: compiled again
}

TEST_CASE("request parse: structured_outputs and guided_* become the request's grammar, or a 400 naming them") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  using P = std::pair<int, std::string>;
  auto grammar_of = [](ApiKind kind, const std::string& body) {
    auto g = parse_generation(kind, parse_json_body(body), served()).request.sampling.grammar;
    REQUIRE(g);
    return g;
  };
  auto accepts = [](const std::shared_ptr<structured::TokenGrammar>& g, const std::string& text) {
    structured::GrammarMatcher m(g->grammar());
    return m.advance(text) && m.can_end();
  };
  const std::string chat = R"({"messages": [{"role": "user", "content": "x"}], )";
  const std::string completion = R"({"prompt": "Hi", )";
  for (ApiKind kind : {ApiKind::Chat, ApiKind::Completion}) {
    const std::string& head = kind == ApiKind::Chat ? chat : completion;
    auto regex = grammar_of(kind, head + R"("structured_outputs": {"regex": "\\d{3}-[a-z]+"}})");
    CHECK(accepts(regex, "123-abc"));
    CHECK_FALSE(accepts(regex, "12-abc"));
    auto choice = grammar_of(kind, head + R"("structured_outputs": {"choice": ["yes", "no"]}})");
    CHECK(accepts(choice, "yes"));
    CHECK_FALSE(accepts(choice, "ye"));
    auto schema = grammar_of(kind, head + R"("structured_outputs": {"json": {"type": "object", "properties":
        {"a": {"type": "string", "maxLength": 2}}, "required": ["a"]}, "disable_any_whitespace": true}})");
    CHECK(accepts(schema, R"({"a":"xy"})"));
    CHECK_FALSE(accepts(schema, R"({"a":"xyz"})"));
    auto text_schema = grammar_of(kind, head + R"("structured_outputs": {"json": "{\"type\": \"integer\"}"}})");
    CHECK(accepts(text_schema, "42"));
    auto object = grammar_of(kind, head + R"("structured_outputs": {"json_object": true}})");
    CHECK(accepts(object, "{}"));
    CHECK(accepts(grammar_of(kind, head + R"("guided_regex": "a+"})"), "aaa"));
    CHECK(accepts(grammar_of(kind, head + R"("guided_choice": ["red", "green"]})"), "green"));
    CHECK(accepts(grammar_of(kind, head + R"("guided_json": {"enum": [1, 2]}})"), "2"));
    auto gbnf = grammar_of(kind, head + R"("structured_outputs": {"grammar": "root ::= \"(\" root \")\" | [a-z]"}})");
    CHECK(accepts(gbnf, "((x))"));
    CHECK_FALSE(accepts(gbnf, "((x)"));
    CHECK(accepts(grammar_of(kind, head + R"("guided_grammar": "root ::= (\"ab\")+"})"), "abab"));
  }
  for (const char* so : {R"("x")", R"({})", R"({"regex": "a", "choice": ["a"]})", R"({"grammar": "root ::= x"})", R"({"grammar": 5})",
                         R"({"structural_tag": "x"})", R"({"whitespace_pattern": " "})", R"({"unknown": 1})",
                         R"({"regex": 5})", R"({"regex": "a(?=b)c"})", R"({"regex": "(a"})", R"({"choice": []})",
                         R"({"choice": ["a", 1]})", R"({"json": 5})", R"({"json": "{"})", R"({"json_object": false})",
                         R"({"json": {"type": "string", "format": "email"}})", R"({"disable_fallback": 1, "regex": "a"})"}) {
    INFO(so);
    CHECK(failure(ApiKind::Chat, chat + R"("structured_outputs": )" + so + "}") == P{400, "structured_outputs"});
    CHECK(failure(ApiKind::Completion, completion + R"("structured_outputs": )" + so + "}") ==
          P{400, "structured_outputs"});
  }
  CHECK(failure(ApiKind::Chat, chat + R"("guided_grammar": "root ::= x"})") == P{400, "guided_grammar"});  // undefined x
  CHECK(failure(ApiKind::Chat, chat + R"("guided_grammar": ["root"]})") == P{400, "guided_grammar"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_decoding_backend": "xgrammar"})") == P{400, "guided_decoding_backend"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_whitespace_pattern": " "})") == P{400, "guided_whitespace_pattern"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_regex": "a", "guided_choice": ["a"]})") == P{400, "guided_choice"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_regex": "\\1"})") == P{400, "guided_regex"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_choice": "a"})") == P{400, "guided_choice"});
  CHECK(failure(ApiKind::Chat, chat + R"("guided_json": []})") == P{400, "guided_json"});
  CHECK(failure(ApiKind::Chat, chat + R"("response_format": {"type": "json_object"}, "structured_outputs":
      {"regex": "a"}})") == P{400, "structured_outputs"});
  CHECK(failure(ApiKind::Chat, chat + R"("structured_outputs": {"regex": "a"}, "guided_regex": "a"})") ==
        P{400, "guided_regex"});
  // response_format "text" beside them is no conflict.
  CHECK(parse_generation(ApiKind::Chat, parse_json_body(chat + R"("response_format": {"type": "text"},
      "structured_outputs": {"regex": "a"}})"), served()).request.sampling.grammar);
  const std::string msg = test::error_of([&] {
    parse_generation(ApiKind::Chat, parse_json_body(chat + R"("structured_outputs": {"regex": "(a)\\1"}})"), served());
  });
  CHECK(msg == "'structured_outputs.regex': regex: the backreference '\\1' is not supported (at offset 4 of the "
               "pattern; docs/api.md lists the subset)");
  CHECK(test::error_of([&] {
          parse_generation(ApiKind::Chat, parse_json_body(chat + R"("structured_outputs": {"grammar": "x"}})"), served());
        }) == "'structured_outputs.grammar': grammar: expected '::=' after the rule name 'x' (at line 1, column 2)");
  CHECK(test::error_of([&] {
          parse_generation(ApiKind::Chat, parse_json_body(chat + R"("structured_outputs": {"structural_tag": "x"}})"), served());
        }) == "'structured_outputs.structural_tag' is not supported; use 'json', 'regex', 'choice' or 'grammar'");
}
