// The gRPC front end without a network: protobuf requests land in the engine request with the
// HTTP API's rules, errors carry the right status code and field, engine events become stream
// messages; and our protobuf lives beside libsentencepiece's private copy in one process.
#include "text/tokenizer.h"
#include "server/grpc_context.h"
#include "server/grpc_convert.h"
#include "server/request_parse.h"
#include <functional>

#include "tests/test_util.h"

using namespace stem;
namespace v1 = stemserve::v1;
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

bool have_model() { return fs::exists(test::default_model_dir() / "model.safetensors"); }

ServedModel served() { return ServedModel{"smol", test::default_model_dir().string(), &engine()}; }

// The message starts with the field's name, as status_of() makes it: "field: ..." or "'field' ...".
bool names(const std::string& message, const std::string& field) {
  return message.rfind(field + ": ", 0) == 0 || message.rfind("'" + field, 0) == 0 || message.rfind(field + " ", 0) == 0;
}

// The status code and message a request fails with (OK when it parses).
grpc::Status failure(const v1::GenerateRequest& r) {
  try {
    parse_grpc_generate(r, served());
  } catch (const ApiError& e) {
    return status_of(e);
  }
  return grpc::Status::OK;
}

}  // namespace

TEST_CASE("grpc: our protobuf and libsentencepiece's own copy live in one process") {
  // Were libprotobuf.so loaded, one of the two would bind to the other's symbols and crash here.
  v1::GenerateRequest r;
  r.set_text("héllo");
  r.mutable_sampling()->set_seed(42);
  v1::GenerateRequest back;
  REQUIRE(back.ParseFromString(r.SerializeAsString()));
  CHECK(back.text() == "héllo");
  CHECK(back.sampling().seed() == 42);
  std::string bad = r.SerializeAsString();
  bad[bad.find("h\xc3\xa9")] = '\xc3';  // 0xC3 0xC3: not UTF-8
  CHECK_FALSE(back.ParseFromString(bad));

  auto tok = load_tokenizer(fs::path(stem::test::fixtures_dir()) / "tokenizers" / "sp_bpe" / "tokenizer.model");
  const std::vector<int32_t> ids = tok->encode("Hello world", true);
  CHECK(ids.front() == 1);
  CHECK(tok->decode(ids, true) == "Hello world");
}

TEST_CASE("grpc: a Generate request lands in the engine request") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  v1::GenerateRequest r;
  r.set_text("The capital of France is");
  r.mutable_sampling()->set_temperature(0.5f);
  r.mutable_sampling()->set_top_k(7);
  r.mutable_sampling()->set_seed(9);
  r.set_max_tokens(5);
  r.add_stop("\n");
  r.add_stop_token_ids(13);
  r.set_ignore_eos(true);
  r.set_n(2);
  r.set_logprobs(true);
  r.set_top_logprobs(3);
  r.set_sparse_prefill("stem");
  r.set_cache_salt("tenant-7");
  const ParsedGeneration p = parse_grpc_generate(r, served());
  CHECK(p.kind == ApiKind::Completion);
  CHECK(p.request.prompt == engine().tokenizer().encode("The capital of France is", true));
  CHECK(p.request.sampling.temperature == 0.5f);
  CHECK(p.request.sampling.top_k == 7);
  CHECK(p.request.sampling.seed == 9u);
  CHECK(p.request.sampling.top_p == 1.0f);  // unset: the HTTP default
  CHECK(p.request.stop.max_tokens == 5);
  CHECK(p.request.stop.stop == std::vector<std::string>{"\n"});
  CHECK(p.request.stop.stop_token_ids == std::vector<int32_t>{13});
  CHECK(p.request.stop.ignore_eos);
  CHECK(p.request.n == 2);
  CHECK(p.logprobs);
  CHECK(p.request.sampling.top_logprobs == 3);
  CHECK(p.request.sparse_prefill == SparsePrefill::Stem);
  CHECK(p.request.cache_salt == "tenant-7");

  v1::GenerateRequest chat;
  v1::ChatMessage* m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  const ParsedGeneration c = parse_grpc_generate(chat, served());
  CHECK(c.kind == ApiKind::Chat);
  CHECK(c.request.stop.max_tokens == 128 - static_cast<int64_t>(c.request.prompt.size()));  // chat: the rest
  CHECK_FALSE(c.request.sparse_prefill.has_value());
  CHECK(c.request.cache_salt.empty());
  v1::GenerateRequest ids;
  for (int32_t id : {1, 2, 3}) ids.mutable_token_ids()->add_ids(id);
  CHECK(parse_grpc_generate(ids, served()).request.stop.max_tokens == 16);  // completions: 16
}

TEST_CASE("grpc: bad Generate requests name the field with the right status code") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  auto with = [](auto set) {
    v1::GenerateRequest r;
    r.set_text("Hi");
    set(r);
    return failure(r);
  };
  CHECK(failure(v1::GenerateRequest()).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status s = with([](auto& r) { r.set_max_tokens(1000); });
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.error_message().rfind("max_tokens: ", 0) == 0);
  s = with([](auto& r) { r.set_sparse_prefill("sparse"); });
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.error_message().find("sparse_prefill") != std::string::npos);
  s = with([](auto& r) { r.set_model("gpt-17"); });
  CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(with([](auto& r) { r.set_top_logprobs(2); }).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(with([](auto& r) { r.mutable_sampling()->set_top_p(0); }).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(with([](auto& r) { r.set_n(5); }).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(with([](auto& r) { r.set_model("smol"); }).ok());
  CHECK(status_of(ApiError(429, "full")).error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(status_of(ApiError(503, "loading")).error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(status_of(ApiError(401, "key")).error_code() == grpc::StatusCode::UNAUTHENTICATED);
}

TEST_CASE("grpc: each bad Generate field is INVALID_ARGUMENT with a message that starts with its name") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  using Set = std::function<void(v1::GenerateRequest&)>;
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += "hello ";
  const std::vector<std::pair<std::string, Set>> cases = {
      {"prompt", [](auto& r) { r.clear_text(); }},
      {"text", [](auto& r) { r.set_text(""); }},
      {"text", [&](auto& r) { r.set_text(long_text); }},
      {"token_ids", [](auto& r) { r.mutable_token_ids(); }},
      {"token_ids", [](auto& r) { r.mutable_token_ids()->add_ids(-1); }},
      {"token_ids", [](auto& r) { for (int32_t id : {1, 999999}) r.mutable_token_ids()->add_ids(id); }},
      {"token_ids", [](auto& r) { for (int i = 0; i < 128; ++i) r.mutable_token_ids()->add_ids(1); }},
      {"chat.messages", [](auto& r) { r.mutable_chat(); }},
      {"chat.messages", [&](auto& r) {
         v1::ChatMessage* m = r.mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content(long_text);
       }},
      {"max_tokens", [](auto& r) { r.set_max_tokens(0); }},
      {"max_tokens", [](auto& r) { r.set_max_tokens(1000); }},
      {"n", [](auto& r) { r.set_n(5); }},
      {"temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1); }},
      {"temperature", [](auto& r) { r.mutable_sampling()->set_temperature(2.5f); }},
      {"top_p", [](auto& r) { r.mutable_sampling()->set_top_p(0); }},
      {"top_p", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }},
      {"top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-2); }},
      {"min_p", [](auto& r) { r.mutable_sampling()->set_min_p(2); }},
      {"repetition_penalty", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0); }},
      {"presence_penalty", [](auto& r) { r.mutable_sampling()->set_presence_penalty(3); }},
      {"frequency_penalty", [](auto& r) { r.mutable_sampling()->set_frequency_penalty(-3); }},
      {"stop_token_ids", [](auto& r) { r.add_stop_token_ids(-3); }},
      {"top_logprobs", [](auto& r) { r.set_top_logprobs(2); }},
      {"top_logprobs", [](auto& r) {
         r.set_logprobs(true);
         r.set_top_logprobs(21);
       }},
      {"sparse_prefill", [](auto& r) { r.set_sparse_prefill("sparse"); }},
  };
  for (const auto& [field, set] : cases) {
    v1::GenerateRequest r;
    r.set_text("Hi");
    set(r);
    const grpc::Status s = failure(r);
    INFO(field << ": " << s.error_message());
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    const std::string& m = s.error_message();
    CHECK((m.rfind(field + ": ", 0) == 0 || m.rfind(field + " ", 0) == 0 || m.rfind("'" + field + "'", 0) == 0));
  }
  // The same request over HTTP's parser and over gRPC's conversion becomes the same engine request.
  v1::GenerateRequest r;
  r.set_text("Hi");
  r.mutable_sampling()->set_top_p(0.5f);
  r.set_max_tokens(3);
  r.add_stop("x");
  const GenerationFields f = generation_fields(r);
  CHECK(std::get<std::string>(f.prompt) == "Hi");
  CHECK(f.prompt_field == "text");
  CHECK(f.top_p == 0.5);
  CHECK_FALSE(f.temperature.has_value());
  const ParsedGeneration g = build_generation(f, served());
  CHECK(g.request.sampling.top_p == 0.5f);
  CHECK(g.request.stop.max_tokens == 3);
  CHECK(g.request.stop.stop == std::vector<std::string>{"x"});
}

TEST_CASE("grpc: Tokenize and Detokenize check their fields as HTTP does") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  v1::TokenizeRequest t;
  t.set_text("Hello");
  CHECK(parse_grpc_tokenize(t, served()) == engine().tokenizer().encode("Hello", true));
  t.set_add_special_tokens(false);
  CHECK(parse_grpc_tokenize(t, served()) == engine().tokenizer().encode("Hello", false));
  v1::TokenizeRequest empty;
  CHECK(test::error_of([&] { parse_grpc_tokenize(empty, served()); }).find("input") != std::string::npos);
  v1::TokenizeRequest chat;
  chat.mutable_chat();
  try {
    parse_grpc_tokenize(chat, served());
    FAIL("an empty chat was tokenized");
  } catch (const ApiError& e) {
    CHECK(e.param() == "chat.messages");
  }
  v1::DetokenizeRequest d;
  for (int32_t id : {1, 999999}) d.add_token_ids(id);
  try {
    parse_grpc_detokenize(d, served());
    FAIL("an id outside the vocabulary was accepted");
  } catch (const ApiError& e) {
    CHECK(e.param() == "token_ids");
    CHECK(status_of(e).error_message().find("999999") != std::string::npos);
  }
  d.set_model("gpt-17");
  CHECK(test::error_of([&] { parse_grpc_detokenize(d, served()); }).find("gpt-17") != std::string::npos);
}

TEST_CASE("grpc: engine events become stream messages") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  const Tokenizer& tok = engine().tokenizer();
  v1::GenerateResponse msg;
  TokenEvent e;
  e.index = 1;
  e.token = tok.encode(" Paris", false).at(0);
  e.text = " Paris";
  e.sample.logprob = -0.25f;
  e.sample.top = {{e.token, -0.25f}, {5, -2.0f}};
  add_event(e, true, tok, msg);
  e.token = tok.encode(".", false).at(0);
  e.text = ".";
  e.finished = true;
  e.finish = FinishReason::Stop;
  e.stop_reason = "\n";
  e.prompt_tokens = 5;
  e.completion_tokens = 2;
  e.cached_tokens = 32;
  add_event(e, true, tok, msg);
  CHECK(msg.index() == 1);
  CHECK(msg.text() == " Paris.");
  CHECK(msg.token_ids_size() == 2);
  REQUIRE(msg.logprobs_size() == 2);
  CHECK(msg.logprobs(0).token() == " Paris");
  CHECK(msg.logprobs(0).logprob() == -0.25f);
  CHECK(msg.logprobs(0).top_logprobs_size() == 2);
  CHECK(msg.finish_reason() == v1::FINISH_REASON_STOP);
  CHECK(msg.stop_reason() == "\n");
  CHECK(msg.usage().prompt_tokens() == 5);
  CHECK(msg.usage().completion_tokens() == 2);
  CHECK(msg.usage().cached_tokens() == 32);
}

TEST_CASE("grpc: response_format gives the request a grammar; a bad schema names the field") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  v1::GenerateRequest r;
  r.set_text("A person as JSON:");
  CHECK_FALSE(parse_grpc_generate(r, served()).request.sampling.grammar);
  r.mutable_response_format()->set_type("json_object");
  CHECK(parse_grpc_generate(r, served()).request.sampling.grammar);
  r.mutable_response_format()->set_type("json_schema");
  r.mutable_response_format()->set_json_schema(R"({"type": "array", "items": {"type": "boolean"}, "maxItems": 2})");
  const ParsedGeneration p = parse_grpc_generate(r, served());
  REQUIRE(p.request.sampling.grammar);
  structured::GrammarMatcher m(p.request.sampling.grammar->grammar());
  CHECK((m.advance(std::string("[true,false]")) && m.can_end()));

  for (const char* schema : {R"({"type": "string", "format": "date"})", "{not json", R"({"type": "array", "maxItems": 9999})"}) {
    INFO(schema);
    r.mutable_response_format()->set_json_schema(schema);
    const grpc::Status s = failure(r);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message().rfind("response_format: ", 0) == 0);
  }
  r.mutable_response_format()->set_type("json_object");
  CHECK(failure(r).error_code() == grpc::StatusCode::INVALID_ARGUMENT);  // a schema needs type json_schema
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += "[";
  r.mutable_response_format()->set_type("json_schema");
  r.mutable_response_format()->set_json_schema(deep);
  CHECK(failure(r).error_message().find("deeper") != std::string::npos);
}

TEST_CASE("grpc: structured_outputs (json, regex, choice, grammar, json_object) give the request a grammar") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  auto accepts = [](const v1::GenerateRequest& r, const std::string& text) {
    const ParsedGeneration p = parse_grpc_generate(r, served());
    REQUIRE(p.request.sampling.grammar);
    structured::GrammarMatcher m(p.request.sampling.grammar->grammar());
    return m.advance(text) && m.can_end();
  };
  v1::GenerateRequest r;
  r.set_text("A code:");
  r.mutable_structured_outputs()->set_regex("[A-Z]{2}-\\d{3}");
  CHECK(accepts(r, "AB-123"));
  CHECK_FALSE(accepts(r, "AB-12"));
  r.mutable_structured_outputs()->mutable_choice()->add_values("left");
  r.mutable_structured_outputs()->mutable_choice()->add_values("right");
  CHECK(accepts(r, "right"));
  CHECK_FALSE(accepts(r, "up"));
  r.mutable_structured_outputs()->set_json(R"({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})");
  CHECK(accepts(r, R"({"n":3})"));
  r.mutable_structured_outputs()->set_json_object(true);
  CHECK(accepts(r, R"({"x":[]})"));
  // Chat prompts take them too.
  v1::GenerateRequest chat;
  chat.mutable_chat()->add_messages()->set_content("Pick one");
  chat.mutable_chat()->mutable_messages(0)->set_role("user");
  chat.mutable_structured_outputs()->set_regex("(yes|no)");
  CHECK(accepts(chat, "no"));

  auto refused = [](const v1::GenerateRequest& req) {
    const grpc::Status s = failure(req);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    return s.error_message();
  };
  r.mutable_structured_outputs()->set_regex("a(?=b)c");
  CHECK(refused(r) == "structured_outputs: 'structured_outputs.regex': regex: the lookahead '(?=' is not supported "
                      "(at offset 1 of the pattern; docs/api.md lists the subset)");
  r.mutable_structured_outputs()->set_grammar("root ::= \"a\" root | \"b\"");
  CHECK(accepts(r, "aab"));
  CHECK_FALSE(accepts(r, "aa"));
  r.mutable_structured_outputs()->set_grammar("root ::= root \"a\"");
  CHECK(refused(r).rfind("structured_outputs: 'structured_outputs.grammar': grammar: the rule 'root' can reach itself", 0) == 0);
  r.mutable_structured_outputs()->mutable_choice()->clear_values();
  CHECK(names(refused(r), "structured_outputs"));
  r.mutable_structured_outputs()->set_json("{");
  CHECK(names(refused(r), "structured_outputs"));
  r.mutable_structured_outputs()->set_json(R"({"type": "string", "pattern": "(a)\\1"})");
  CHECK(refused(r).find("backreference") != std::string::npos);
  r.mutable_structured_outputs()->set_json_object(false);
  CHECK(names(refused(r), "structured_outputs"));
  r.mutable_structured_outputs()->Clear();
  CHECK(names(refused(r), "structured_outputs"));
  r.mutable_structured_outputs()->set_regex("a");
  r.mutable_response_format()->set_type("json_object");
  CHECK(refused(r) == "'structured_outputs' cannot be combined with 'response_format'");
  r.clear_structured_outputs();
  r.mutable_response_format()->set_type("regex");
  CHECK(names(refused(r), "response_format"));
}

TEST_CASE("grpc: tools, tool_choice and tool history land as the HTTP API's; bad ones name the proto's field") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  ServedModel hermes = served();
  hermes.tool_call_parser = "hermes";
  v1::GenerateRequest r;
  auto* user = r.mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("Weather in Paris?");
  v1::Tool* t = r.add_tools();
  t->set_name("get_weather");
  t->set_description("The weather in a city");
  t->set_parameters(R"({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})");
  ParsedGeneration p = parse_grpc_generate(r, hermes);
  CHECK(p.tools.choice == toolcall::Choice::Auto);
  CHECK(p.tools.format == toolcall::Format::Hermes);
  CHECK_FALSE(p.request.sampling.grammar);

  r.mutable_tool_choice()->set_function("get_weather");
  p = parse_grpc_generate(r, hermes);
  CHECK(p.tools.choice == toolcall::Choice::Named);
  REQUIRE(p.request.sampling.grammar);
  structured::GrammarMatcher m(p.request.sampling.grammar->grammar());
  CHECK((m.advance(std::string(R"({"city":"Paris"})")) && m.can_end()));
  r.mutable_tool_choice()->set_mode("required");
  CHECK(parse_grpc_generate(r, hermes).tools.choice == toolcall::Choice::Required);
  r.mutable_tool_choice()->set_mode("none");
  CHECK(parse_grpc_generate(r, hermes).tools.choice == toolcall::Choice::None);
  r.set_parallel_tool_calls(false);
  r.mutable_tool_choice()->set_mode("auto");
  CHECK_FALSE(parse_grpc_generate(r, hermes).tools.parallel);

  // History: an assistant's call and the tool's answer.
  auto* assistant = r.mutable_chat()->add_messages();
  assistant->set_role("assistant");
  v1::ToolCall* call = assistant->add_tool_calls();
  call->set_id("call_1");
  call->set_name("get_weather");
  call->set_arguments(R"({"city": "Paris"})");
  auto* tool = r.mutable_chat()->add_messages();
  tool->set_role("tool");
  tool->set_tool_call_id("call_1");
  tool->set_content("22 C");
  // The same prompt as the HTTP API's for the same conversation.
  const std::string http = R"({"messages": [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function":
        {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}],
      "tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
      "parallel_tool_calls": false})";
  CHECK(parse_grpc_generate(r, hermes).request.prompt ==
        parse_generation(ApiKind::Chat, parse_json_body(http), hermes).request.prompt);

  auto refused = [&](const v1::GenerateRequest& req) {
    try {
      parse_grpc_generate(req, hermes);
    } catch (const ApiError& e) {
      const grpc::Status s = status_of(e);
      CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
      return s.error_message();
    }
    return std::string("(accepted)");
  };
  v1::GenerateRequest bad = r;
  bad.mutable_chat()->mutable_messages(2)->clear_tool_call_id();
  CHECK(names(refused(bad), "chat.messages[2].tool_call_id"));
  bad = r;
  bad.mutable_chat()->mutable_messages(1)->mutable_tool_calls(0)->set_arguments("[1]");
  CHECK(names(refused(bad), "chat.messages[1].tool_calls[0].arguments"));
  // Arguments nested past the request limit are refused by name, as a body that deep is.
  bad.mutable_chat()->mutable_messages(1)->mutable_tool_calls(0)->set_arguments(std::string(200, '[') + std::string(200, ']'));
  CHECK(names(refused(bad), "chat.messages[1].tool_calls[0].arguments"));
  CHECK(refused(bad).find("nested deeper") != std::string::npos);
  bad = r;
  bad.mutable_chat()->mutable_messages(0)->add_tool_calls()->set_name("x");
  CHECK(names(refused(bad), "chat.messages[0].tool_calls"));
  bad = r;
  bad.mutable_tools(0)->set_name("bad name!");
  CHECK(names(refused(bad), "tools[0].name"));
  bad = r;
  bad.mutable_tools(0)->set_parameters("{");
  CHECK(names(refused(bad), "tools[0].parameters"));
  bad = r;
  bad.mutable_tools(0)->set_parameters(R"({"type": "object", "properties": {"a": {"type": "string", "format": "x"}}})");
  bad.mutable_tool_choice()->set_function("get_weather");
  CHECK(names(refused(bad), "tools[0].parameters"));
  bad = r;
  bad.mutable_tool_choice()->set_function("nope");
  CHECK(names(refused(bad), "tool_choice"));
  bad = r;
  bad.mutable_tool_choice()->set_mode("sometimes");
  CHECK(names(refused(bad), "tool_choice"));
  bad = r;
  bad.mutable_tool_choice()->Clear();
  CHECK(names(refused(bad), "tool_choice"));
  bad = r;
  bad.mutable_tool_choice()->set_mode("required");
  bad.mutable_response_format()->set_type("json_object");
  CHECK(names(refused(bad), "tool_choice"));
  v1::GenerateRequest text;
  text.set_text("Hi");
  *text.mutable_tools() = r.tools();
  CHECK(refused(text) == "'tools' needs a 'chat' prompt");
  v1::GenerateRequest smol = r;  // SmolLM2's template teaches no tool format: auto needs --tool-call-parser
  try {
    parse_grpc_generate(smol, served());
    FAIL("accepted");
  } catch (const ApiError& e) {
    CHECK(e.param() == "tools");
  }
}

TEST_CASE("grpc: under tools, a sequence's calls come back as tool_calls with finish reason tool_calls") {
  if (!have_model()) SKIP("default model not prepared at " << test::default_model_dir());
  const Tokenizer& tok = engine().tokenizer();
  toolcall::ToolRequest tools;
  tools.choice = toolcall::Choice::Auto;
  tools.format = toolcall::Format::Hermes;
  tools.functions = {{"get_weather", {{"type", "object"}}}, {"now", {{"type", "object"}}}};
  ToolText held;
  std::string text;
  std::vector<v1::GenerateResponse> msgs;
  const std::vector<std::string> pieces = {"Let me check.", " <tool", "_call>{\"name\": \"get_weather\", ",
                                           "\"arguments\": {\"city\": \"Paris\"}}</tool_call>\n<tool_call>",
                                           "{\"name\": \"now\", \"arguments\": {}}</tool_call>"};
  for (size_t i = 0; i < pieces.size(); ++i) {
    TokenEvent e;
    e.text = pieces[i];
    e.finished = i + 1 == pieces.size();
    e.finish = FinishReason::Stop;
    msgs.emplace_back();
    add_event(e, false, tok, msgs.back(), &tools, &held);
    text += msgs.back().text();
    if (!e.finished) CHECK(msgs.back().tool_calls_size() == 0);
  }
  CHECK(msgs[0].text() == "Let me check.");
  CHECK(msgs[1].text() == " ");  // "<tool" is held back: it may start a call
  CHECK(text == "Let me check. ");
  const v1::GenerateResponse& last = msgs.back();
  CHECK(last.finish_reason() == v1::FINISH_REASON_TOOL_CALLS);
  REQUIRE(last.tool_calls_size() == 2);
  CHECK(last.tool_calls(0).name() == "get_weather");
  CHECK(last.tool_calls(0).arguments() == R"({"city":"Paris"})");
  CHECK(last.tool_calls(0).id().rfind("call_", 0) == 0);
  CHECK(last.tool_calls(0).id() != last.tool_calls(1).id());
  CHECK(last.tool_calls(1).name() == "now");

  // No call: the held text comes at the end, finish reason stop.
  ToolText none;
  v1::GenerateResponse a, b;
  TokenEvent e;
  e.text = "It is <tool";
  add_event(e, false, tok, a, &tools, &none);
  e.text = " maybe>";
  e.finished = true;
  e.finish = FinishReason::Stop;
  add_event(e, false, tok, b, &tools, &none);
  CHECK(a.text() + b.text() == "It is <tool maybe>");
  CHECK(b.tool_calls_size() == 0);
  CHECK(b.finish_reason() == v1::FINISH_REASON_STOP);

  // A named function: the text is its arguments; it finishes with stop, as OpenAI's does.
  toolcall::ToolRequest named = tools;
  named.choice = toolcall::Choice::Named;
  named.named = "get_weather";
  ToolText args;
  v1::GenerateResponse c;
  e.text = R"({"city":"Oslo"})";
  add_event(e, false, tok, c, &named, &args);
  CHECK(c.text().empty());
  REQUIRE(c.tool_calls_size() == 1);
  CHECK(c.tool_calls(0).name() == "get_weather");
  CHECK(c.tool_calls(0).arguments() == R"({"city":"Oslo"})");
  CHECK(c.finish_reason() == v1::FINISH_REASON_STOP);
}
