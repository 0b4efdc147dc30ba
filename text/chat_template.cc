#include "text/chat_template.h"

#include <fstream>
#include <map>
#include <sstream>

#include "text/chat_template_eval.h"

namespace stem {

namespace {

std::tm local_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  return tm;
}

std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::ordered_json read_json(const std::filesystem::path& path, const std::string& text) {
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": not valid JSON: " + e.what());
  }
}

// tokenizer_config.json writes special tokens as strings or as AddedToken objects.
std::optional<std::string> token_string(const nlohmann::ordered_json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return std::nullopt;
}

ChatTemplate parse_named(const std::string& source, const std::filesystem::path& where) {
  try {
    return ChatTemplate(source);
  } catch (const ChatTemplateError& e) {
    throw ChatTemplateError(e.kind(), where.string() + ": " + e.what());
  }
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)),
      program_(std::make_shared<const jinja::Program>(jinja::parse_program(source_))),
      clock_(local_now) {}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) throw Error("chat template context must be a JSON object");
  jinja::Value vars = jinja::from_json(context);
  try {
    return jinja::render_program(*program_, vars, clock_);
  } catch (const jinja::RenderFailure& e) {
    throw ChatTemplateError(ChatTemplateError::Kind::kRender, std::string("chat template error: ") + e.what());
  }
}

ModelChatTemplate::ModelChatTemplate(ChatTemplate main, std::optional<ChatTemplate> tool_use,
                                     std::optional<std::string> bos_token, std::optional<std::string> eos_token)
    : main_(std::move(main)),
      tool_use_(std::move(tool_use)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)) {}

void ModelChatTemplate::set_clock(const ChatTemplate::Clock& clock) {
  main_.set_clock(clock);
  if (tool_use_) tool_use_->set_clock(clock);
}

std::string ModelChatTemplate::render(const ChatTemplateInputs& inputs) const {
  // The same variables, in the same order, as transformers' render_jinja_template.
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  ctx["messages"] = inputs.messages;
  ctx["tools"] = inputs.tools;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = inputs.add_generation_prompt;
  if (bos_token_) ctx["bos_token"] = *bos_token_;
  if (eos_token_) ctx["eos_token"] = *eos_token_;
  for (auto it = inputs.extra.begin(); it != inputs.extra.end(); ++it) ctx[it.key()] = it.value();
  const ChatTemplate& chosen = (!inputs.tools.is_null() && tool_use_) ? *tool_use_ : main_;
  return chosen.render(ctx);
}

ModelChatTemplate load_chat_template(const std::filesystem::path& model_dir) {
  const auto config_path = model_dir / "tokenizer_config.json";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (auto text = read_file(config_path)) config = read_json(config_path, *text);

  // As transformers: chat_template.jinja and additional_chat_templates/<name>.jinja, when present,
  // replace whatever tokenizer_config.json says.
  std::map<std::string, std::pair<std::string, std::filesystem::path>> named;  // name -> source, origin
  if (auto text = read_file(model_dir / "chat_template.jinja")) named["default"] = {*text, model_dir / "chat_template.jinja"};
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(model_dir / "additional_chat_templates", ec)) {
    if (entry.path().extension() != ".jinja") continue;
    if (auto text = read_file(entry.path())) named[entry.path().stem().string()] = {*text, entry.path()};
  }
  auto field = config.find("chat_template");
  if (named.empty() && field != config.end() && field->is_string()) {
    named["default"] = {field->get<std::string>(), config_path};
  } else if (named.empty() && field != config.end() && field->is_array()) {
    for (const auto& entry : *field) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template"))
        throw Error(config_path.string() + ": chat_template entries need \"name\" and \"template\"");
      named[entry["name"].get<std::string>()] = {entry["template"].get<std::string>(), config_path};
    }
  }
  if (named.empty()) {  // processors keep it in chat_template.json
    if (auto json_text = read_file(model_dir / "chat_template.json")) {
      auto j = read_json(model_dir / "chat_template.json", *json_text);
      if (j.contains("chat_template") && j["chat_template"].is_string())
        named["default"] = {j["chat_template"].get<std::string>(), model_dir / "chat_template.json"};
    }
  }
  if (!named.count("default")) {
    throw Error(model_dir.string() + ": no chat template (tokenizer_config.json has no \"default\" chat_template "
                                     "and there is no chat_template.jinja)");
  }
  ChatTemplate main = parse_named(named["default"].first, named["default"].second);
  std::optional<ChatTemplate> tool_use;
  if (named.count("tool_use")) tool_use = parse_named(named["tool_use"].first, named["tool_use"].second);
  return ModelChatTemplate(std::move(main), std::move(tool_use), token_string(config, "bos_token"),
                           token_string(config, "eos_token"));
}

}  // namespace stem

