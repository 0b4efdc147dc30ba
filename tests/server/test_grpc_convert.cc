// The gRPC front end without a network: protobuf requests land in the engine request with the
// HTTP API's rules, errors carry the right status code and field, engine events become stream
// messages; and our protobuf lives beside libsentencepiece's private copy in one process.
#include "text/tokenizer.h"
#include "server/grpc_context.h"
#include "server/grpc_convert.h"
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

  auto tok = load_tokenizer(fs::path(STEM_FIXTURES_DIR) / "tokenizers" / "sp_bpe" / "tokenizer.model");
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

  for (const char* schema : {R"({"type": "string", "minLength": 2})", "{not json", R"({"type": "array", "maxItems": 9999})"}) {
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
