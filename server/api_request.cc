#include "server/api_request.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "structured/ebnf.h"
#include "structured/json_schema.h"
#include "structured/regex.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace stem {

ServedModel ServedModel::of(const Engine& engine, const std::string& served_name) {
  ServedModel m;
  m.engine = &engine;
  m.path = engine.model_dir().string();
  m.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                  .count();
  m.name = served_name;
  if (m.name.empty()) m.name = std::filesystem::path(m.path).lexically_normal().filename().string();
  if (m.name.empty()) m.name = std::filesystem::path(m.path).parent_path().filename().string();  // "dir/"
  return m;
}

std::shared_ptr<const structured::TokenVocab> ServedModel::token_vocab_ptr() const {
  std::call_once(vocab->once, [&] {
    vocab->vocab = structured::TokenVocab::from_tokenizer(engine->tokenizer(), engine->config().vocab_size);
  });
  return vocab->vocab;
}

const structured::TokenVocab& ServedModel::token_vocab() const { return *token_vocab_ptr(); }

std::shared_ptr<structured::TokenGrammar> GrammarCache::get(
    const std::string& key, const std::function<std::shared_ptr<structured::TokenGrammar>()>& make) {
  std::lock_guard lock(mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }
  // Compiled under the lock: a compile takes well under a millisecond (bench/RESULTS.md), and two
  // requests with the same new schema then compile it once.
  std::shared_ptr<structured::TokenGrammar> g = make();
  lru_.emplace_front(key, g);
  index_[key] = lru_.begin();
  if (lru_.size() > kGrammars) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return g;
}

size_t GrammarCache::size() const {
  std::lock_guard lock(mu_);
  return lru_.size();
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

std::string quoted(const std::string& field) { return "'" + field + "'"; }

// Token ids below `vocab`, as the engine takes them.
std::vector<int32_t> token_ids(const std::vector<int64_t>& ids, const std::string& field, int64_t vocab) {
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab) bad(field, "token id " + std::to_string(id) + " is outside the vocabulary");
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

std::vector<int32_t> chat_ids(const ChatPrompt& chat, const std::string& field, const Engine& engine) {
  if (chat.messages.empty()) bad(field, quoted(field) + " must not be empty");
  const ModelChatTemplate* chat_template = engine.chat_template();
  if (!chat_template) bad(field, "the model has no chat template; use /v1/completions");
  std::string text;
  try {
    ChatTemplateInputs in;
    in.messages = chat.messages;
    in.add_generation_prompt = chat.add_generation_prompt;
    in.tools = chat.tools;
    in.extra = chat.kwargs;
    text = chat_template->render(in);
  } catch (const std::exception& e) {
    bad(field, std::string("the chat template could not render these messages: ") + e.what());
  }
  // The template writes the special tokens (BOS and the role markers) itself.
  return engine.tokenizer().encode(text, false);
}

std::vector<int32_t> prompt_ids(const GenerationFields& f, const toolcall::ToolRequest& tools, const Engine& engine) {
  if (const auto* chat = std::get_if<ChatPrompt>(&f.prompt)) {
    if (tools.choice == toolcall::Choice::None) return chat_ids(*chat, f.prompt_field, engine);
    ChatPrompt with_tools = *chat;  // the template sees the tools unless tool_choice is "none" (as vLLM)
    with_tools.tools = f.tools;
    return chat_ids(with_tools, f.prompt_field, engine);
  }
  if (const auto* ids = std::get_if<std::vector<int64_t>>(&f.prompt)) {
    if (ids->empty()) bad(f.prompt_field, quoted(f.prompt_field) + " must not be empty");
    return token_ids(*ids, f.prompt_field, engine.config().vocab_size);
  }
  const std::string& text = std::get<std::string>(f.prompt);
  if (text.empty()) bad(f.prompt_field, quoted(f.prompt_field) + " must not be empty");
  return engine.tokenizer().encode(text, true);
}

SamplingParams sampling(const GenerationFields& f) {
  SamplingParams s;
  auto num = [](const std::optional<double>& v, float& out) {
    if (v) out = static_cast<float>(*v);
  };
  num(f.temperature, s.temperature);
  if (s.temperature > 2.0f) bad("temperature", "'temperature' must be in [0, 2]");
  num(f.top_p, s.top_p);
  num(f.min_p, s.min_p);
  num(f.repetition_penalty, s.repetition_penalty);
  num(f.presence_penalty, s.presence_penalty);
  num(f.frequency_penalty, s.frequency_penalty);
  if (f.top_k) {
    if (*f.top_k < -1 || *f.top_k > INT32_MAX) bad("top_k", "'top_k' must be -1, 0 (off) or a positive count");
    s.top_k = static_cast<int32_t>(*f.top_k);
  }
  if (f.seed) s.seed = static_cast<uint64_t>(*f.seed);
  try {
    s.validate();  // its message starts with the field's name
  } catch (const Error& e) {
    const std::string msg = e.what();
    bad(msg.substr(0, msg.find(' ')), msg);
  }
  return s;
}

StopConditions stop_conditions(const GenerationFields& f) {
  StopConditions stop;
  for (const std::string& s : f.stop)
    if (!s.empty()) stop.stop.push_back(s);
  for (int64_t id : f.stop_token_ids) {
    if (id < 0 || id > INT32_MAX) bad("stop_token_ids", "token id " + std::to_string(id) + " is outside the vocabulary");
    stop.stop_token_ids.push_back(static_cast<int32_t>(id));
  }
  stop.ignore_eos = f.ignore_eos;
  stop.include_stop_str = f.include_stop_str;
  return stop;
}

// What a response format's grammar is compiled from, as the grammar cache's key.
std::string grammar_key(const ResponseFormat& rf) {
  std::string key = rf.type + '\n';
  if (rf.type == "json_schema") key += rf.schema.dump();  // in the sender's order, as compiled
  if (rf.type == "regex" || rf.type == "grammar") key += rf.pattern;
  if (rf.type == "choice")
    for (const std::string& c : rf.choices) key += nlohmann::json(c).dump() + ',';
  return key;
}

// The grammar that response_format asks for, or null for plain text.
std::shared_ptr<structured::TokenGrammar> compile_response_grammar(const ResponseFormat& rf, const ServedModel& model) {
  const std::string& field = rf.field;
  structured::Grammar g;
  if (rf.type == "json_object") {
    g = structured::any_json_object();
  } else if (rf.type == "json_schema") {
    try {
      g = structured::compile_json_schema(rf.schema);
    } catch (const structured::SchemaError& e) {
      bad(field, quoted(rf.value_field) + ": " + e.what());
    }
  } else if (rf.type == "regex") {
    try {
      g = structured::compile_regex(rf.pattern);
    } catch (const structured::RegexError& e) {
      bad(field, quoted(rf.value_field) + ": " + e.what());
    }
  } else if (rf.type == "grammar") {
    try {
      g = structured::compile_gbnf(rf.pattern);
    } catch (const structured::EbnfError& e) {
      bad(field, quoted(rf.value_field) + ": " + e.what());
    }
  } else if (rf.type == "choice") {
    if (rf.choices.empty()) bad(field, quoted(rf.value_field) + " must be a non-empty list of strings");
    g = structured::compile_choice(rf.choices);
  } else {
    bad(field, quoted(field + ".type") + " must be \"text\", \"json_object\" or \"json_schema\", got \"" + rf.type + "\"");
  }
  return std::make_shared<structured::TokenGrammar>(std::move(g), model.token_vocab_ptr());
}

std::shared_ptr<structured::TokenGrammar> response_grammar(const ResponseFormat& rf, const ServedModel& model) {
  if (rf.type == "text") return nullptr;
  return model.grammars->get(grammar_key(rf), [&] { return compile_response_grammar(rf, model); });
}

// How the model writes tool calls: --tool-call-parser, else what its chat template teaches it.
toolcall::Format tool_format(const ServedModel& model) {
  if (!model.tool_call_parser.empty()) {
    if (auto f = toolcall::format_named(model.tool_call_parser)) return *f;
  }
  const ModelChatTemplate* t = model.engine->chat_template();
  if (t)
    if (auto f = toolcall::format_of_template(t->template_for_tools().source())) return *f;
  bad("tools", "this model's chat template has no tool-call format that stemserve knows; start the server with "
               "--tool-call-parser (hermes, llama3_json or mistral), or force the call with 'tool_choice' "
               "\"required\" or a named function");
}

// tools, tool_choice and parallel_tool_calls, checked; a forced call's grammar in `grammar`.
toolcall::ToolRequest tool_request(const GenerationFields& f, const ServedModel& model,
                                   std::shared_ptr<structured::TokenGrammar>& grammar) {
  toolcall::ToolRequest r;
  try {
    std::vector<toolcall::Function> functions;
    if (!f.tools.is_null()) functions = toolcall::check_tools(f.tools);
    r = toolcall::check_tool_choice(f.tool_choice, std::move(functions), f.parallel_tool_calls.value_or(true));
  } catch (const toolcall::ToolError& e) {
    bad(e.param(), e.what());
  }
  if (r.choice == toolcall::Choice::Auto) r.format = tool_format(model);
  if (r.choice != toolcall::Choice::Required && r.choice != toolcall::Choice::Named) return r;
  if (f.response_format.type != "text")
    bad("tool_choice", "'tool_choice' \"required\" or a named function cannot be combined with " +
                           quoted(f.response_format.field));
  // The forced call is generated under its JSON schema: each function's parameters must be in
  // the subset structured/ enforces.
  for (size_t i = 0; i < r.functions.size(); ++i) {
    if (r.choice == toolcall::Choice::Named && r.functions[i].name != r.named) continue;
    const std::string where = "tools[" + std::to_string(i) + "].function.parameters";
    try {
      (void)structured::compile_json_schema(r.functions[i].parameters);
    } catch (const structured::SchemaError& e) {
      bad(where, quoted(where) + " (enforced for tool_choice \"required\" or a named function): " + e.what());
    }
  }
  try {
    const nlohmann::ordered_json schema = toolcall::forced_schema(r);
    grammar = model.grammars->get("tool_call\n" + schema.dump(), [&] {
      return std::make_shared<structured::TokenGrammar>(structured::compile_json_schema(schema), model.token_vocab_ptr());
    });
  } catch (const structured::SchemaError& e) {
    bad("tools", std::string("'tools': the forced tool call's schema: ") + e.what());
  }
  return r;
}

}  // namespace

void set_chat_template_kwargs(ChatPrompt& chat, const nlohmann::ordered_json& kwargs, const std::string& field) {
  if (!kwargs.is_object()) bad(field, quoted(field) + " must be an object of template variables");
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
    const std::string& k = it.key();
    if (k == "messages" || k == "tools" || k == "add_generation_prompt")
      bad(field + "." + k, quoted(field + "." + k) + " is the request's own field: send '" + k + "' itself");
  }
  chat.kwargs = kwargs;
}

void check_model(const std::optional<std::string>& name, const ServedModel& model) {
  if (name && !name->empty() && !model.matches(*name))
    throw ApiError(404, "The model '" + *name + "' does not exist; this server serves '" + model.name + "'.", "model");
}

ParsedGeneration build_generation(const GenerationFields& f, const ServedModel& model) {
  const Engine& engine = *model.engine;
  check_model(f.model, model);
  ParsedGeneration p;
  p.kind = std::holds_alternative<ChatPrompt>(f.prompt) ? ApiKind::Chat : ApiKind::Completion;
  GenerateRequest& r = p.request;
  std::shared_ptr<structured::TokenGrammar> tool_grammar;
  p.tools = tool_request(f, model, tool_grammar);
  r.prompt = prompt_ids(f, p.tools, engine);
  const int64_t prompt_len = static_cast<int64_t>(r.prompt.size()), context = engine.max_model_len();
  if (prompt_len == 0) bad(f.prompt_field, "the prompt is empty after tokenization");
  if (prompt_len >= context)
    bad(f.prompt_field,
        "This model's maximum context length is " + std::to_string(context) + " tokens (--max-model-len). However, "
        "your prompt has " + std::to_string(prompt_len) + " tokens (at least one more is needed for the completion).");

  // As OpenAI: completions default to 16 tokens, chat to whatever the context leaves.
  const std::string& max_name = f.max_tokens_field;
  const int64_t room = context - prompt_len;
  const int64_t max_new = f.max_tokens.value_or(p.kind == ApiKind::Chat ? room : std::min<int64_t>(16, room));
  if (max_new < 1) bad(max_name, quoted(max_name) + " must be at least 1");
  if (max_new > room)
    bad(max_name, "This model's maximum context length is " + std::to_string(context) +
                      " tokens (--max-model-len). However, you requested " +
                      std::to_string(prompt_len + max_new) + " tokens (" + std::to_string(prompt_len) +
                      " in the prompt, " + std::to_string(max_new) + " for the completion).");
  r.stop = stop_conditions(f);
  r.stop.max_tokens = static_cast<int32_t>(max_new);

  if (f.n) {
    if (*f.n < 1 || *f.n > engine.options().max_num_seqs)
      bad("n", "'n' must be between 1 and " + std::to_string(engine.options().max_num_seqs) +
                   " (the server's --max-num-seqs)");
    r.n = static_cast<int32_t>(*f.n);
  }
  r.sampling = sampling(f);

  p.logprobs = f.logprobs;
  if (f.top_logprobs) {
    const std::string& name = f.top_logprobs_field;
    if (*f.top_logprobs < 0 || *f.top_logprobs > 20) bad(name, quoted(name) + " must be in [0, 20]");
    if (*f.top_logprobs > 0 && !f.logprobs) bad(name, quoted(name) + " needs 'logprobs': true");
    p.top_logprobs = static_cast<int32_t>(*f.top_logprobs);
  }
  r.sampling.grammar = tool_grammar ? tool_grammar : response_grammar(f.response_format, model);
  r.sampling.logprobs = p.logprobs;
  r.sampling.top_logprobs = p.top_logprobs;

  // stemserve's own field: Stem or dense prefill for this request (default: --sparse-prefill).
  if (f.sparse_prefill) {
    r.sparse_prefill = parse_sparse_prefill(*f.sparse_prefill);
    if (!r.sparse_prefill)
      bad("sparse_prefill", "'sparse_prefill' must be \"stem\" or \"dense\", got \"" + *f.sparse_prefill + "\"");
  }
  // As vLLM's: requests with different salts never share prefix-cache pages.
  if (f.cache_salt) {
    if (f.cache_salt->empty()) bad("cache_salt", "'cache_salt' must be a non-empty string");
    r.cache_salt = *f.cache_salt;
  }
  p.stream = f.stream;
  p.include_usage = f.include_usage;
  return p;
}

std::vector<int32_t> tokenize_prompt(const std::variant<std::string, ChatPrompt>& input, const std::string& field,
                                     bool add_special_tokens, const ServedModel& model) {
  const Engine& engine = *model.engine;
  if (const auto* chat = std::get_if<ChatPrompt>(&input)) return chat_ids(*chat, field, engine);
  return engine.tokenizer().encode(std::get<std::string>(input), add_special_tokens);
}

std::vector<int32_t> checked_token_ids(const std::vector<int64_t>& ids, const std::string& field,
                                       const ServedModel& model) {
  return token_ids(ids, field, model.engine->tokenizer().vocab_size());
}

}  // namespace stem
