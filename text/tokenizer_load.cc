// load_tokenizer (tokenizer.json or tokenizer.model, plus tokenizer_config.json and
// generation_config.json) and the IncrementalDetokenizer.
#include <sentencepiece_processor.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "text/tokenizer.h"
#include "text/tokenizer_hf.h"
#include "text/tokenizer_sentencepiece.h"
#include "kernels/check.h"

namespace stem {
namespace fs = std::filesystem;
using tok::json;

namespace {

json read_json(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open file");
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return json::parse(buf.str());
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
    throw Error(file.string() + ": not valid JSON: " + e.what());
  }
}

json read_json_if_present(const fs::path& file) {
  if (!fs::exists(file)) return json();
  json j = read_json(file);
  if (!j.is_object()) throw Error(file.string() + ": expected a JSON object");
  return j;
}

// bos_token / eos_token / pad_token / unk_token: a string, {"content": "..."} or null.
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

std::optional<int32_t> lookup(const Tokenizer& tok, const std::optional<std::string>& token, const char* what,
                              const fs::path& config_file) {
  if (!token) return std::nullopt;
  auto id = tok.token_to_id(*token);
  if (!id) spdlog::warn("{}: {} '{}' is not in the vocabulary; ignored", config_file.string(), what, *token);
  return id;
}

// What the tokenizer itself says when no config names the token.
std::optional<int32_t> first_known(const Tokenizer& tok, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (auto id = tok.token_to_id(n)) return id;
  }
  return std::nullopt;
}

void fill_special_tokens(const Tokenizer& tok, const json& config, const json& generation, const fs::path& dir,
                         SpecialTokens& s) {
  const fs::path cfg = dir / "tokenizer_config.json";
  bool has_config = config.is_object();
  s.bos_id = lookup(tok, config_token(config, "bos_token"), "bos_token", cfg);
  if (auto eos = lookup(tok, config_token(config, "eos_token"), "eos_token", cfg)) s.eos_ids.push_back(*eos);
  s.pad_id = lookup(tok, config_token(config, "pad_token"), "pad_token", cfg);
  s.unk_id = lookup(tok, config_token(config, "unk_token"), "unk_token", cfg);

  if (generation.is_object() && generation.contains("eos_token_id")) {
    const json& e = generation["eos_token_id"];
    std::vector<int32_t> ids;
    if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    if (e.is_array()) {
      for (const json& x : e) {
        if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
      }
    }
    for (int32_t id : ids) {
      if (std::find(s.eos_ids.begin(), s.eos_ids.end(), id) == s.eos_ids.end()) s.eos_ids.push_back(id);
    }
  }
  if (auto* sp = dynamic_cast<const tok::SpTokenizer*>(&tok)) {
    const auto& p = sp->processor();
    if (!has_config || !config.contains("bos_token")) {
      if (p.bos_id() >= 0) s.bos_id = p.bos_id();
    }
    if (s.eos_ids.empty() && p.eos_id() >= 0) s.eos_ids.push_back(p.eos_id());
    if (!s.unk_id && p.unk_id() >= 0) s.unk_id = p.unk_id();
    if (!s.pad_id && p.pad_id() >= 0) s.pad_id = p.pad_id();
  } else {
    if (!s.bos_id && !(has_config && config.contains("bos_token"))) {
      s.bos_id = first_known(tok, {"<|begin_of_text|>", "<s>", "<bos>"});
    }
    if (s.eos_ids.empty() && !(has_config && config.contains("eos_token"))) {
      if (auto e = first_known(tok, {"<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>", "<|im_end|>"})) {
        s.eos_ids.push_back(*e);
      }
    }
    if (!s.unk_id) s.unk_id = static_cast<const tok::HfTokenizer&>(tok).unk_id();
  }
  auto probe = tok.encode("", true);
  s.adds_bos = s.bos_id && !probe.empty() && probe.front() == *s.bos_id;
}

// transformers' Llama and Gemma fast tokenizers rebuild the post-processor from add_bos_token
// (default true) and add_eos_token (default false), whatever tokenizer.json says.
void apply_llama_template(tok::HfTokenizer& tok, const json& config, const fs::path& dir) {
  static const char* kClasses[] = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                   "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"};
  if (!config.is_object() || !config.contains("tokenizer_class") || !config["tokenizer_class"].is_string()) return;
  const std::string cls = config["tokenizer_class"].get<std::string>();
  if (std::none_of(std::begin(kClasses), std::end(kClasses), [&](const char* c) { return cls == c; })) return;
  const fs::path cfg = dir / "tokenizer_config.json";
  std::vector<int32_t> prefix, suffix;
  auto add_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean()
                     ? config["add_bos_token"].get<bool>() : true;
  auto add_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean()
                     ? config["add_eos_token"].get<bool>() : false;
  if (add_bos) {
    if (auto id = lookup(tok, config_token(config, "bos_token"), "bos_token", cfg)) prefix.push_back(*id);
  }
  if (add_eos) {
    if (auto id = lookup(tok, config_token(config, "eos_token"), "eos_token", cfg)) suffix.push_back(*id);
  }
  tok.set_template(std::move(prefix), std::move(suffix));
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path) {
  fs::path dir, file;
  if (fs::is_directory(path)) {
    dir = path;
    if (fs::exists(dir / "tokenizer.json")) file = dir / "tokenizer.json";
    else if (fs::exists(dir / "tokenizer.model")) file = dir / "tokenizer.model";
    else throw Error(dir.string() + ": no tokenizer.json or tokenizer.model in this directory");
  } else if (fs::exists(path)) {
    file = path;
    dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  } else {
    throw Error(path.string() + ": no such file or directory (expected a model directory with tokenizer.json "
                                "or tokenizer.model)");
  }
  json config = read_json_if_present(dir / "tokenizer_config.json");
  json generation = read_json_if_present(dir / "generation_config.json");
  bool clean_up = config.is_object() && config.contains("clean_up_tokenization_spaces") &&
                  config["clean_up_tokenization_spaces"].is_boolean() &&
                  config["clean_up_tokenization_spaces"].get<bool>();

  std::unique_ptr<Tokenizer> tok;
  if (file.extension() == ".json") {
    tok = std::make_unique<tok::HfTokenizer>(read_json(file), file.string(), clean_up);
  } else {
    tok = std::make_unique<tok::SpTokenizer>(file, config, clean_up);
  }
  if (auto* hf = dynamic_cast<tok::HfTokenizer*>(tok.get())) apply_llama_template(*hf, config, dir);
  fill_special_tokens(*tok, config, generation, dir, tok->special_);
  tok->special_.clean_up_tokenization_spaces = clean_up;
  spdlog::debug("tokenizer {}: {} ids, bos {}, {} eos ids", file.string(), tok->vocab_size(),
                tok->bos_id() ? *tok->bos_id() : -1, tok->eos_ids().size());
  return tok;
}

bool Tokenizer::is_eos(int32_t id) const {
  return std::find(special_.eos_ids.begin(), special_.eos_ids.end(), id) != special_.eos_ids.end();
}

// ---- IncrementalDetokenizer ------------------------------------------------------------------

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens),
      state_(tokenizer.new_decode_state(skip_special_tokens)) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  ++num_tokens_;
  return release(state_->push(id));
}

std::string IncrementalDetokenizer::push(std::span<const int32_t> ids) {
  std::string out;
  for (int32_t id : ids) {
    ++num_tokens_;
    out += state_->push(id);
  }
  return release(std::move(out));
}

std::string IncrementalDetokenizer::flush() {
  std::string out = held_ + state_->flush();
  held_.clear();
  num_tokens_ = 0;
  return out;
}

void IncrementalDetokenizer::reset() {
  state_ = tokenizer_->new_decode_state(skip_special_tokens_);
  held_.clear();
  num_tokens_ = 0;
}

// Holds back a trailing incomplete UTF-8 sequence, should a decode state ever return one.
std::string IncrementalDetokenizer::release(std::string text) {
  if (!held_.empty()) text.insert(0, held_), held_.clear();
  size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    if (c >= 0xC0 && tok::utf8_seq_len(c) > back) {
      held_ = text.substr(n - back);
      text.resize(n - back);
    }
    break;
  }
  return text;
}

}  // namespace stem
