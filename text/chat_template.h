// Chat templates: the Jinja2 subset that Hugging Face chat templates are written in, rendered
// the way transformers renders them (jinja2 with trim_blocks, lstrip_blocks, loop controls,
// raise_exception, strftime_now and transformers' tojson).
#pragma once

#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/check.h"

namespace stem {

// What went wrong while parsing or rendering a chat template.
//   kSyntax: the template source does not parse; the message names line and column.
//   kRender: the template failed while rendering (e.g. `'a' + none`); the message names the line.
//   kRaised: the template called raise_exception(msg); what() is exactly msg, written for the
//            person who sent the conversation (the server maps it to HTTP 400).
class ChatTemplateError : public Error {
 public:
  enum class Kind { kSyntax, kRender, kRaised };
  ChatTemplateError(Kind kind, const std::string& message) : Error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

namespace jinja {
struct Program;
}

// One parsed template. Parsing happens once, in the constructor; render() is const and may be
// called from many threads at once.
class ChatTemplate {
 public:
  // The broken-down local time that strftime_now() formats; replaceable so tests are repeatable.
  using Clock = std::function<std::tm()>;

  explicit ChatTemplate(std::string source);  // throws ChatTemplateError (kSyntax)

  // Renders with `context`'s keys as the template's variables (messages, add_generation_prompt,
  // tools, bos_token, ...). ordered_json keeps the caller's key order, which tojson and `.items()`
  // reproduce; a plain nlohmann::json converts implicitly but its keys come out sorted.
  std::string render(const nlohmann::ordered_json& context) const;

  void set_clock(Clock clock) { clock_ = std::move(clock); }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<const jinja::Program> program_;
  Clock clock_;
};

// The inputs a request supplies; the model supplies the rest (template, bos/eos strings).
struct ChatTemplateInputs {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  bool add_generation_prompt = true;
  nlohmann::ordered_json tools = nullptr;                            // null: no tools
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // other kwargs: date_string, ...
};

// A model's chat template(s) with the special-token strings its tokenizer_config.json names.
class ModelChatTemplate {
 public:
  ModelChatTemplate(ChatTemplate main, std::optional<ChatTemplate> tool_use,
                    std::optional<std::string> bos_token, std::optional<std::string> eos_token);

  // As transformers' apply_chat_template(tokenize=False): `tools` is passed as null when absent,
  // and the "tool_use" template (when the model has one) is used when tools are given.
  std::string render(const ChatTemplateInputs& inputs) const;

  const ChatTemplate& main_template() const { return main_; }
  // The template render() uses when tools are given: "tool_use" when the model has one.
  const ChatTemplate& template_for_tools() const { return tool_use_ ? *tool_use_ : main_; }
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  const std::optional<std::string>& eos_token() const { return eos_token_; }
  void set_clock(const ChatTemplate::Clock& clock);

 private:
  ChatTemplate main_;
  std::optional<ChatTemplate> tool_use_;
  std::optional<std::string> bos_token_, eos_token_;
};

// Finds the model's templates as transformers does: chat_template.jinja (and
// additional_chat_templates/<name>.jinja) when present, else tokenizer_config.json's
// `chat_template`, a string or a list of {"name", "template"}; last, chat_template.json. Uses
// "default", and "tool_use" when tools are given. bos_token / eos_token come from
// tokenizer_config.json, as strings or {"content": ...} objects.
// Throws stem::Error when there is no template, ChatTemplateError when one does not parse.
ModelChatTemplate load_chat_template(const std::filesystem::path& model_dir);

}  // namespace stem
