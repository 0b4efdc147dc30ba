// Replays every case that tests/fixtures/make_chat_template_fixtures.py rendered with Python's
// jinja2 (configured as transformers does) and requires the same bytes, or the same error.
#include <fstream>
#include <optional>
#include <sstream>

#include "text/chat_template.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using stem::ChatTemplate;
using stem::ChatTemplateError;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The fixtures pin strftime_now() to this moment (FIXED_NOW in the script).
std::tm fixture_now() {
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 8;
  tm.tm_mday = 5;
  tm.tm_hour = 13;
  tm.tm_min = 7;
  tm.tm_sec = 9;
  tm.tm_isdst = -1;
  std::tm normalised = tm;
  std::mktime(&normalised);  // fills in the weekday and day of the year
  tm.tm_wday = normalised.tm_wday;
  tm.tm_yday = normalised.tm_yday;
  return tm;
}

std::string first_difference(const std::string& want, const std::string& got) {
  size_t k = 0;
  while (k < want.size() && k < got.size() && want[k] == got[k]) ++k;
  auto around = [&](const std::string& s) { return s.substr(k < 40 ? 0 : k - 40, 100); };
  return "first difference at byte " + std::to_string(k) + "\n  want: ..." + around(want) + "\n  got:  ..." + around(got);
}

void replay(const std::string& name) {
  const std::string dir = stem::test::fixtures_dir() + "/chat_templates/";
  auto fixture = nlohmann::ordered_json::parse(read_text(dir + name + ".json"));
  ChatTemplate tmpl(read_text(dir + fixture["template"].get<std::string>()));
  tmpl.set_clock(fixture_now);
  size_t rendered = 0, errors = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string label = name + ": " + c["name"].get<std::string>();
    INFO(label);
    if (c.contains("expected")) {
      std::string got;
      try {
        got = tmpl.render(c["context"]);
      } catch (const std::exception& e) {
        FAIL_CHECK("threw: " << e.what());
        continue;
      }
      const std::string want = c["expected"].get<std::string>();
      if (got != want) FAIL_CHECK(first_difference(want, got));
      ++rendered;
      continue;
    }
    try {
      tmpl.render(c["context"]);
      FAIL_CHECK("rendered, but Python raised: " << c["message"].get<std::string>());
    } catch (const ChatTemplateError& e) {
      if (c["error"] == "raised") {
        CHECK(e.kind() == ChatTemplateError::Kind::kRaised);
        CHECK(std::string(e.what()) == c["message"].get<std::string>());
      } else {
        CHECK(e.kind() == ChatTemplateError::Kind::kRender);
      }
    }
    ++errors;
  }
  CHECK(rendered + errors == fixture["cases"].size());
  CHECK(rendered > 0);
}

// A file of {template, expected | error} cases sharing one context.
void replay_templates(const std::string& file) {
  const std::string dir = stem::test::fixtures_dir() + "/chat_templates/";
  auto fixture = nlohmann::ordered_json::parse(read_text(dir + file));
  const auto& context = fixture["context"];
  size_t checked = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string source = c["template"].get<std::string>();
    INFO("template: " << source);
    ++checked;
    std::optional<ChatTemplate> tmpl;
    try {
      tmpl.emplace(source);
    } catch (const ChatTemplateError& e) {
      if (c.value("error", "") != "syntax") FAIL_CHECK("did not parse: " << e.what());
      else CHECK(e.kind() == ChatTemplateError::Kind::kSyntax);
      continue;
    }
    if (c.value("error", "") == "syntax") {
      FAIL_CHECK("parsed, but jinja2 says: " << c["message"].get<std::string>());
      continue;
    }
    tmpl->set_clock(fixture_now);
    try {
      std::string got = tmpl->render(context);
      if (!c.contains("expected")) FAIL_CHECK("rendered '" << got << "', but jinja2 says: " << c["message"].get<std::string>());
      else if (got != c["expected"].get<std::string>()) FAIL_CHECK(first_difference(c["expected"].get<std::string>(), got));
    } catch (const ChatTemplateError& e) {
      if (c.contains("expected")) FAIL_CHECK("threw: " << e.what());
      else if (c["error"] == "raised") CHECK(std::string(e.what()) == c["message"].get<std::string>());
      else CHECK(e.kind() == ChatTemplateError::Kind::kRender);
    }
  }
  CHECK(checked == fixture["cases"].size());
}

}  // namespace

// One Jinja feature per probe (feature_probes.json), each rendered by Python into features.json.
TEST_CASE("chat template features match jinja2 probe by probe") { replay_templates("features.json"); }

// Grammar-generated templates mixing everything (whitespace control, loops, macros, filters).
TEST_CASE("chat template random templates match jinja2") { replay_templates("random_templates.json"); }

TEST_CASE("chat template fixtures: SmolLM2") { replay("smollm2"); }
TEST_CASE("chat template fixtures: Qwen2") { replay("qwen2"); }
TEST_CASE("chat template fixtures: Qwen2.5 with tools") { replay("qwen2_5"); }
TEST_CASE("chat template fixtures: Llama 2 chat") { replay("llama2"); }
TEST_CASE("chat template fixtures: Llama 3") { replay("llama3"); }
TEST_CASE("chat template fixtures: Llama 3.1 / 3.3 with tools and builtin tools") { replay("llama3_1"); }
TEST_CASE("chat template fixtures: Llama 3.2 with tools and strftime_now") { replay("llama3_2"); }
TEST_CASE("chat template fixtures: Mistral 7B Instruct v0.1") { replay("mistral_v0_1"); }
TEST_CASE("chat template fixtures: Mistral 7B Instruct v0.2") { replay("mistral_v0_2"); }
TEST_CASE("chat template fixtures: Mistral 7B Instruct v0.3 with tools") { replay("mistral_v0_3"); }
