// HfTokenizer: a tokenizer.json tokenizer (added tokens -> normalizer -> pre-tokenizer -> BPE ->
// post-processor; decoders for the way back).
#include "text/tokenizer_hf.h"

#include "kernels/check.h"

namespace stem::tok {

void fail(const std::string& where, const std::string& why) { throw Error(where + ": " + why); }

const json& member(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) fail(where, std::string("missing \"") + key + "\"");
  return j[key];
}

std::string string_or(const json& j, const char* key, const std::string& fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<std::string>();
}

bool bool_or(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<bool>();
}

namespace {

// The single-sequence template of a post-processor as ids before and after the sequence.
void parse_post_processor(const json& j, const std::string& where, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  std::string type = member(j, "type", where).get<std::string>();
  std::string here = where + " " + type;
  std::vector<int32_t> pre, post;
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const json& p : member(j, "processors", here)) parse_post_processor(p, where, prefix, suffix);
    return;
  }
  if (type == "TemplateProcessing") {
    const json& specials = member(j, "special_tokens", here);
    bool seen_sequence = false;
    for (const json& item : member(j, "single", here)) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        std::string name = member(item["SpecialToken"], "id", here).get<std::string>();
        if (!specials.contains(name)) fail(here, "special token '" + name + "' missing from special_tokens");
        for (const json& id : member(specials[name], "ids", here)) (seen_sequence ? post : pre).push_back(id.get<int32_t>());
      } else {
        fail(here, "template item " + item.dump() + " is neither Sequence nor SpecialToken");
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    pre.push_back(member(j, "cls", here).at(1).get<int32_t>());
    post.push_back(member(j, "sep", here).at(1).get<int32_t>());
  } else {
    fail(where, "post_processor type '" + type +
                    "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence, BertProcessing, "
                    "RobertaProcessing)");
  }
  prefix.insert(prefix.begin(), pre.begin(), pre.end());
  suffix.insert(suffix.end(), post.begin(), post.end());
}

const json kNull;
const json& optional_member(const json& j, const char* key) { return j.contains(key) ? j[key] : kNull; }

class HfDecodeState final : public DecodeState {
 public:
  HfDecodeState(const HfTokenizer& tok, bool skip) : tok_(tok), skip_(skip), pipe_(tok.stages()) {}
  std::string push(int32_t id) override {
    const std::string* s = tok_.decode_string(id, skip_);
    if (!s) return "";
    std::vector<Frag> items;
    items.push_back({*s, Frag::Whole});
    return pipe_.run(std::move(items), false);
  }
  std::string flush() override {
    std::string rest = pipe_.run({}, true);
    pipe_ = Pipeline(tok_.stages());
    return rest;
  }

 private:
  const HfTokenizer& tok_;
  bool skip_;
  Pipeline pipe_;
};

}  // namespace

HfTokenizer::HfTokenizer(const json& j, const std::string& file, bool clean_up_tokenization_spaces) {
  if (!j.is_object()) fail(file, "expected a JSON object");
  model_ = std::make_unique<Bpe>(member(j, "model", file), file + ": model");
  normalizer_ = parse_normalizer(optional_member(j, "normalizer"), file + ": normalizer");
  pre_tokenizer_ = parse_pre_tokenizer(optional_member(j, "pre_tokenizer"), file + ": pre_tokenizer");
  std::vector<AddedToken> added;
  const json& list = optional_member(j, "added_tokens");
  if (!list.is_null()) {
    for (const json& t : list) {
      AddedToken a;
      a.id = member(t, "id", file + ": added_tokens").get<int32_t>();
      a.content = member(t, "content", file + ": added_tokens").get<std::string>();
      a.single_word = bool_or(t, "single_word", false);
      a.lstrip = bool_or(t, "lstrip", false);
      a.rstrip = bool_or(t, "rstrip", false);
      a.special = bool_or(t, "special", false);
      a.normalized = bool_or(t, "normalized", !a.special);
      added.push_back(std::move(a));
    }
  }
  added_.build(std::move(added), normalizer_.get());
  parse_post_processor(optional_member(j, "post_processor"), file + ": post_processor", prefix_, suffix_);
  parse_decoder(optional_member(j, "decoder"), file + ": decoder", stages_);
  if (clean_up_tokenization_spaces) append_cleanup_stages(stages_);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view input, bool add_special_tokens) const {
  std::string text;
  if (is_valid_utf8(input)) text.assign(input);
  else utf8_lossy_append(input, text, false);

  Pieces pieces;
  if (!text.empty()) pieces.push_back({std::move(text), -1, true});
  added_.split(pieces, /*normalized=*/false);
  if (normalizer_) {
    for (Piece& p : pieces) {
      if (p.token < 0) normalizer_->normalize(p.text);
    }
    std::erase_if(pieces, [](const Piece& p) { return p.token < 0 && p.text.empty(); });
  }
  added_.split(pieces, /*normalized=*/true);
  if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);

  std::vector<int32_t> ids;
  ids.reserve(pieces.size() * 2 + prefix_.size() + suffix_.size());
  if (add_special_tokens) ids = prefix_;
  for (const Piece& p : pieces) {
    if (p.token >= 0) ids.push_back(p.token);
    else model_->tokenize(p.text, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

const std::string* HfTokenizer::decode_string(int32_t id, bool skip_special_tokens) const {
  const std::string* s = nullptr;
  if (const AddedToken* t = added_.by_id(id)) s = &t->decode_form;
  else s = model_->id_to_token(id);
  // Skipping goes by the token's string, as in TokenizerImpl::decode.
  if (s && skip_special_tokens && added_.is_special_content(*s)) return nullptr;
  return s;
}

std::string HfTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<Frag> items;
  items.reserve(ids.size());
  for (int32_t id : ids) {
    if (const std::string* s = decode_string(id, skip_special_tokens)) items.push_back({*s, Frag::Whole});
  }
  Pipeline pipe(stages_);
  return pipe.run(std::move(items), true);
}

std::unique_ptr<DecodeState> HfTokenizer::new_decode_state(bool skip_special_tokens) const {
  return std::make_unique<HfDecodeState>(*this, skip_special_tokens);
}

int32_t HfTokenizer::vocab_size() const {
  int32_t max_id = model_->max_id();
  for (const AddedToken& t : added_.tokens()) max_id = std::max(max_id, t.id);
  return max_id + 1;
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  if (auto id = added_.by_content(token)) return id;
  return model_->token_to_id(token);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* t = added_.by_id(id)) return t->content;
  const std::string* s = model_->id_to_token(id);
  return s ? *s : std::string();
}

bool HfTokenizer::is_special(int32_t id) const {
  const AddedToken* t = added_.by_id(id);
  return t && t->special;
}

}  // namespace stem::tok
