// The chat-template engine on arbitrary input. The first byte picks the mode:
//   odd:  the rest is template source (a model folder's chat_template), parsed and rendered with
//         a fixed conversation;
//   even: the default model's template renders the rest as the conversation: a JSON array of
//         messages when it parses as one, else NUL-separated role, content, role, content, ...
// Syntax and render errors must be ChatTemplateError (a stem::Error): nothing else may escape.
#include <memory>

#include "text/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

using nlohmann::ordered_json;

namespace {

const stem::ModelChatTemplate& model_template() {
  static const auto t = std::make_unique<stem::ModelChatTemplate>(stem::load_chat_template(
      std::filesystem::exists(stem::fuzz::default_model_dir() / "tokenizer_config.json")
          ? stem::fuzz::default_model_dir()
          : stem::fuzz::source_dir() / "tests/fixtures/tokenizers/smollm2"));
  return *t;
}

ordered_json fixed_context() {
  ordered_json messages = ordered_json::array();
  messages.push_back({{"role", "system"}, {"content", "Be brief."}});
  messages.push_back({{"role", "user"}, {"content", "Hi <b>there</b> \xc3\xa9"}});
  messages.push_back({{"role", "assistant"}, {"content", "Hello."}});
  messages.push_back({{"role", "user"}, {"content", ""}});
  return {{"messages", messages}, {"add_generation_prompt", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
          {"tools", nullptr}, {"nums", {3, 1, 2}}, {"d", {{"k", "v"}, {"n", nullptr}}}};
}

std::tm fixed_time() {
  std::tm t{};
  t.tm_year = 124;
  t.tm_mday = 1;
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool raw_template = data[0] & 1;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (raw_template) {
    static const ordered_json context = fixed_context();
    stem::fuzz::expect_ok_or_error([&] {
      stem::ChatTemplate t(rest);
      t.set_clock(fixed_time);
      (void)t.render(context);
    });
    return 0;
  }
  stem::ChatTemplateInputs in;
  in.add_generation_prompt = data[0] & 2;
  ordered_json parsed = ordered_json::parse(rest, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_array()) {
    in.messages = std::move(parsed);
  } else {
    std::vector<std::string> fields;
    size_t start = 0;
    for (size_t i = 0; i <= rest.size(); ++i)
      if (i == rest.size() || rest[i] == '\0') fields.push_back(rest.substr(start, i - start)), start = i + 1;
    for (size_t i = 0; i + 1 < fields.size(); i += 2)
      in.messages.push_back({{"role", fields[i]}, {"content", fields[i + 1]}});
    // As a request's would be: the server's JSON strings are valid UTF-8 (U+FFFD for bad bytes).
    in.messages = ordered_json::parse(in.messages.dump(-1, ' ', false, ordered_json::error_handler_t::replace));
  }
  stem::fuzz::expect_ok_or_error([&] { (void)model_template().render(in); });
  return 0;
}
