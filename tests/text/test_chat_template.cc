// The chat template API and the Jinja features one at a time. (Byte-exactness against Python's
// jinja2 is test_chat_template_fixtures.cc's job; these read as a specification.)
#include "text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/catch.h"
#include "tests/test_util.h"

using stem::ChatTemplate;
using stem::ChatTemplateError;
using json = nlohmann::ordered_json;

namespace {

std::string render(const std::string& source, const json& context = json::object()) {
  return ChatTemplate(source).render(context);
}

ChatTemplateError::Kind error_kind(const std::string& source, const json& context = json::object()) {
  try {
    render(source, context);
  } catch (const ChatTemplateError& e) {
    return e.kind();
  }
  FAIL("no error from: " << source);
  return ChatTemplateError::Kind::kRender;
}

std::string error_message(const std::string& source, const json& context = json::object()) {
  try {
    render(source, context);
  } catch (const ChatTemplateError& e) {
    return e.what();
  }
  return "";
}

const json kMessages = json::parse(R"([{"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])");

// A scratch model directory, removed afterwards.
struct ModelDir {
  std::filesystem::path path;
  explicit ModelDir(const std::string& name) : path(std::filesystem::temp_directory_path() / ("stem_ct_" + name)) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~ModelDir() { std::filesystem::remove_all(path); }
  void write(const std::string& file, const std::string& text) const {
    std::filesystem::create_directories((path / file).parent_path());
    std::ofstream(path / file) << text;
  }
};

}  // namespace

TEST_CASE("chat template: variables, literals and output conversion") {
  CHECK(render("hello {{ name }}", {{"name", "world"}}) == "hello world");
  CHECK(render("{{ none }} {{ true }} {{ 1.0 }} {{ 1e-5 }} {{ [1, 'a'] }} {{ {'k': none} }} {{ (1,) }}") ==
        "None True 1.0 1e-05 [1, 'a'] {'k': None} (1,)");
  CHECK(render("{{ 'a\\tb\\u00e9' }}") == "a\tb\xC3\xA9");
  CHECK(render("{{ 1_000 + 0x10 }}") == "1016");
}

TEST_CASE("chat template: plain nlohmann::json contexts convert implicitly (keys then come sorted)") {
  nlohmann::json plain = {{"d", {{"b", 1}, {"a", 2}}}, {"x", 3}};
  CHECK(ChatTemplate("{{ x }}{% for k in d %}{{ k }}{% endfor %}").render(plain) == "3ab");
  json ordered = {{"d", {{"b", 1}, {"a", 2}}}, {"x", 3}};
  CHECK(ChatTemplate("{{ x }}{% for k in d %}{{ k }}{% endfor %}").render(ordered) == "3ba");
}

TEST_CASE("chat template: trim_blocks, lstrip_blocks and whitespace control") {
  CHECK(render("a\n  {% if true %}\n  b\n  {% endif %}\nc") == "a\n  b\nc");
  CHECK(render("a  {{- 'b' -}}  c") == "abc");
  CHECK(render("{%- if true -%}  x  {%- endif -%}") == "x");
  CHECK(render("  {{ 'v' }}\n") == "  v");  // lstrip only applies to blocks; one trailing newline dropped
  CHECK(render("{# note #}\nx{% raw %}{{ y }}{% endraw %}") == "x{{ y }}");
}

TEST_CASE("chat template: if / elif / else and conditional expressions") {
  const std::string t = "{% if n > 1 %}many{% elif n == 1 %}one{% else %}none{% endif %}";
  CHECK(render(t, {{"n", 2}}) == "many");
  CHECK(render(t, {{"n", 1}}) == "one");
  CHECK(render(t, {{"n", 0}}) == "none");
  CHECK(render("{{ 'y' if x else 'n' }}|{{ 'y' if x }}|{{ x or 'd' }}", {{"x", ""}}) == "n||d");
}

TEST_CASE("chat template: for loops: loop variables, else, filters, unpacking, break and continue") {
  CHECK(render("{% for x in xs %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }} {% endfor %}",
               {{"xs", {"a", "b"}}}) == "1TrueFalse22 2FalseTrue21 ");
  CHECK(render("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for x in range(6) if x is even %}{{ loop.index }}:{{ x }} {% endfor %}") == "1:0 2:2 3:4 ");
  CHECK(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"b", 1}, {"a", 2}}}}) == "b=1;a=2;");
  CHECK(render("{% for n in range(9) %}{% if n == 1 %}{% continue %}{% endif %}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}") == "023");
}

TEST_CASE("chat template: set scoping follows jinja2: loops do not leak, if blocks do") {
  CHECK(render("{% set a = 1 %}{% for x in [1, 2] %}{% set a = a + 1 %}{{ a }}{% endfor %}{{ a }}") == "221");
  CHECK(render("{% if true %}{% set q = 3 %}{% endif %}{{ q }}") == "3");
  CHECK(render("{% set ns = namespace(n=0) %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}") == "6");
  CHECK(render("{% set a, b = 1, 2 %}{{ b }}{{ a }}") == "21");
  CHECK(render("{% set x %}in {{ 'block' }}{% endset %}{{ x|upper }}") == "IN BLOCK");
}

TEST_CASE("chat template: transformers' {% generation %} tag renders its body") {
  CHECK(render("{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}",
               {{"messages", kMessages}}) == "<Be brief.><Hi><Hello!>");
}

TEST_CASE("chat template: unsupported tags are syntax errors that say so") {
  try {
    ChatTemplate("{% filter upper %}x{% endfilter %}");
    FAIL("parsed");
  } catch (const ChatTemplateError& e) {
    CHECK(e.kind() == ChatTemplateError::Kind::kSyntax);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("'filter' tag is not supported"));
  }
}

TEST_CASE("chat template: macros") {
  CHECK(render("{% macro m(who, p='!') %}hi {{ who }}{{ p }}{% endmacro %}{{ m('a') }} {{ m(p='?', who='b') }}") ==
        "hi a! hi b?");
}

TEST_CASE("chat template: attribute, item and slice access") {
  json ctx = {{"m", {{"role", "user"}, {"content", "héllo"}}}, {"xs", {1, 2, 3, 4}}};
  CHECK(render("{{ m.role }} {{ m['content'] }} {{ m.content[1] }} {{ m.content[::-1] }} {{ m.content|length }}", ctx) ==
        "user héllo é olléh 5");
  CHECK(render("{{ xs[1:] }} {{ xs[-1] }} {{ xs[::2] }} {{ xs[10] }}|{{ m.missing }}|", ctx) == "[2, 3, 4] 4 [1, 3] ||");
  CHECK(render("{{ m.get('missing', 'dflt') }} {{ m.get('missing') }}", ctx) == "dflt None");
}

TEST_CASE("chat template: operators follow Python") {
  CHECK(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'ab' * 2 }} {{ 'a' ~ 1 ~ none }}") ==
        "3 -4 2 3.5 1024 abab a1None");
  CHECK(render("{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 2 not in [1, 2] }} {{ [1] + [2] }} {{ 1 == 1.0 }}") ==
        "True True False [1, 2] True");
}

TEST_CASE("chat template: tests") {
  CHECK(render("{{ x is defined }} {{ y is undefined }} {{ n is none }} {{ s is string }} {{ d is mapping }} {{ s is iterable }}",
               {{"x", 1}, {"n", nullptr}, {"s", "s"}, {"d", json::object()}}) == "True True True True True True");
  CHECK(render("{{ 4 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 1 is integer }} {{ 1.5 is float }} {{ true is boolean }}") ==
        "True True True True True True");
}

TEST_CASE("chat template: filters") {
  CHECK(render("{{ '  x '|trim }}|{{ 'ab'|upper }}|{{ 'hello world'|title }}|{{ [3, 1, 2]|sort|join(',') }}|{{ missing|default('d') }}") ==
        "x|AB|Hello World|1,2,3|d");
  json users = json::parse(R"([{"name": "a", "on": true}, {"name": "b"}, {"name": "c", "on": true}])");
  CHECK(render("{{ users|selectattr('on')|map(attribute='name')|join }} {{ users|rejectattr('on')|list|length }}",
               {{"users", users}}) == "ac 1");
  CHECK(render("{{ ['a', 'x']|reject('equalto', 'x')|list }} {{ '42'|int + 1 }} {{ 2.5|round }} {{ [1, 1, 2]|unique|list }}") ==
        "['a'] 43 2.0 [1, 2]");
}

TEST_CASE("chat template: tojson behaves like transformers' json.dumps") {
  json v = json::parse(R"({"b": [1, 2.5, null], "a": "é\"\n"})");
  CHECK(render("{{ v|tojson }}", {{"v", v}}) == "{\"b\": [1, 2.5, null], \"a\": \"é\\\"\\n\"}");
  CHECK(render("{{ v|tojson(indent=2) }}", {{"v", json::parse(R"({"k": [1]})")}}) == "{\n  \"k\": [\n    1\n  ]\n}");
  CHECK(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}") == "{\"a\": 2, \"b\": 1}");
}

TEST_CASE("chat template: string methods") {
  CHECK(render("{{ ' x '.strip() }}|{{ 'a,b'.split(',') }}|{{ 'abc'.startswith('ab') }}|{{ 'a-a'.replace('-', '+') }}|{{ '{}!'.format(1) }}") ==
        "x|['a', 'b']|True|a+a|1!");
}

TEST_CASE("chat template: undefined values print empty and fail when used") {
  CHECK(render("[{{ nope }}] {{ nope|length }} {{ nope is defined }}") == "[] 0 False");
  CHECK(error_kind("{{ nope + 1 }}") == ChatTemplateError::Kind::kRender);
  CHECK(error_kind("{{ nope.attr }}") == ChatTemplateError::Kind::kRender);
}

TEST_CASE("chat template: raise_exception surfaces the template's message unchanged") {
  const std::string t = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user') }}{% endif %}ok";
  CHECK(error_kind(t, {{"messages", kMessages}}) == ChatTemplateError::Kind::kRaised);
  CHECK(error_message(t, {{"messages", kMessages}}) == "Conversation must start with a user");
}

TEST_CASE("chat template: syntax errors name line and column") {
  try {
    ChatTemplate("line one\n{% if x %}\n  {{ x | nosuch }}\n{% endif %}");
    FAIL("parsed");
  } catch (const ChatTemplateError& e) {
    CHECK(e.kind() == ChatTemplateError::Kind::kSyntax);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("line 3, column 10"));
    CHECK_THAT(e.what(), Catch::Matchers::Contains("nosuch"));
  }
  CHECK_THROWS_AS(ChatTemplate("{% for x in xs %}never closed"), ChatTemplateError);
  CHECK_THROWS_AS(ChatTemplate("{{ 'unterminated }}"), ChatTemplateError);
  CHECK_THAT(error_message("a\nb\n{{ 1 / 0 }}"), Catch::Matchers::Contains("line 3"));
}

TEST_CASE("chat template: strftime_now uses the clock, which tests can pin") {
  ChatTemplate t("{{ strftime_now('%d %b %Y') }}");
  t.set_clock([] {
    std::tm tm{};
    tm.tm_year = 124;
    tm.tm_mon = 6;
    tm.tm_mday = 26;
    return tm;
  });
  CHECK(t.render(json::object()) == "26 Jul 2024");
  CHECK(ChatTemplate("{{ strftime_now('%Y')|int > 2000 }}").render(json::object()) == "True");
}

TEST_CASE("chat template: render is safe to call from several threads at once") {
  const ChatTemplate t("{% for m in messages %}<{{ m.role }}>{{ m.content|trim }}{% endfor %}");
  const json ctx = {{"messages", kMessages}};
  const std::string want = t.render(ctx);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (int r = 0; r < 200; ++r) ok[k] += t.render(ctx) == want;
    });
  for (auto& th : threads) th.join();
  for (int n : ok) CHECK(n == 200);
}

TEST_CASE("chat template: load_chat_template: string template and string special tokens") {
  ModelDir dir("string");
  dir.write("tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>",
    "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"})");
  auto model = stem::load_chat_template(dir.path);
  CHECK(model.bos_token() == "<s>");
  stem::ChatTemplateInputs in;
  in.messages = json::parse(R"([{"role": "user", "content": "hi"}])");
  CHECK(model.render(in) == "<s>[user]hi</s>[assistant]");
  in.add_generation_prompt = false;
  CHECK(model.render(in) == "<s>[user]hi</s>");
}

TEST_CASE("chat template: load_chat_template: named templates, AddedToken objects, tool_use picked when tools are given") {
  ModelDir dir("named");
  dir.write("tokenizer_config.json", R"({
    "bos_token": {"__type": "AddedToken", "content": "<|begin|>", "lstrip": false},
    "eos_token": null,
    "chat_template": [
      {"name": "default", "template": "default {{ bos_token }}{{ eos_token is defined }}"},
      {"name": "tool_use", "template": "tools {{ tools|length }} {{ date_string }}"}]})");
  auto model = stem::load_chat_template(dir.path);
  stem::ChatTemplateInputs in;
  CHECK(model.render(in) == "default <|begin|>False");
  in.tools = json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  in.extra = {{"date_string", "01 Jan 2025"}};
  CHECK(model.render(in) == "tools 1 01 Jan 2025");
}

TEST_CASE("chat template: load_chat_template: chat_template.jinja beside the config, and clear errors") {
  ModelDir dir("jinja");
  dir.write("tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  dir.write("chat_template.jinja", "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\n");
  stem::ChatTemplateInputs in;
  in.messages = json::parse(R"([{"role": "user", "content": "x"}])");
  CHECK(stem::load_chat_template(dir.path).render(in) == "x<|im_end|>");

  ModelDir both("both");  // the separate files win over the config, as in transformers
  both.write("tokenizer_config.json", R"({"chat_template": "from config"})");
  both.write("chat_template.jinja", "from file");
  both.write("additional_chat_templates/tool_use.jinja", "tool file");
  auto model = stem::load_chat_template(both.path);
  CHECK(model.render(in) == "from file");
  in.tools = json::array();
  CHECK(model.render(in) == "tool file");

  ModelDir empty("empty");
  empty.write("tokenizer_config.json", "{}");
  CHECK_THROWS_AS(stem::load_chat_template(empty.path), stem::Error);

  ModelDir broken("broken");
  broken.write("tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  try {
    stem::load_chat_template(broken.path);
    FAIL("loaded");
  } catch (const ChatTemplateError& e) {
    CHECK(e.kind() == ChatTemplateError::Kind::kSyntax);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("tokenizer_config.json"));
  }
}

TEST_CASE("chat template: the SmolLM2 template, as the server uses it") {
  std::ifstream in(stem::test::fixtures_dir() + "/chat_templates/smollm2.jinja");
  std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  stem::ModelChatTemplate model(ChatTemplate(source), std::nullopt, "<|im_start|>", "<|im_end|>");
  stem::ChatTemplateInputs inputs;
  inputs.messages = json::parse(R"([{"role": "user", "content": "What is 2+2?"}])");
  CHECK(model.render(inputs) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
}
