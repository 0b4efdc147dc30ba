// SentencePiece `tokenizer.model` through libsentencepiece, with special tokens recognised in the
// text (each stretch between them encoded on its own, as Meta's Llama-2 reference does) and a
// streaming decoder that follows SentencePieceProcessor::Decode rule by rule.
#include <sentencepiece_processor.h>

#include "text/tokenizer_sentencepiece.h"
#include "kernels/check.h"

namespace stem::tok {
namespace {
constexpr std::string_view kSpace = "\xE2\x96\x81";  // ▁

// SentencePiece's DecodeUTF8: how many bytes of `b` form one valid character, 0 if `b` starts
// with an invalid one, -1 if more bytes are needed to know (and `final` is false).
int sp_char_len(std::string_view b, bool final) {
  unsigned char c0 = static_cast<unsigned char>(b[0]);
  if (c0 < 0x80) return 1;
  int n = (c0 & 0xE0) == 0xC0 ? 2 : (c0 & 0xF0) == 0xE0 ? 3 : (c0 & 0xF8) == 0xF0 ? 4 : 0;
  if (n == 0) return 0;
  if (static_cast<int>(b.size()) < n) return final ? 0 : -1;
  uint32_t cp = c0 & (0x7F >> n);
  for (int k = 1; k < n; ++k) {
    unsigned char c = static_cast<unsigned char>(b[k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  bool valid = cp >= kMin[n] && (cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF));
  return valid ? n : 0;
}
}  // namespace

SpTokenizer::SpTokenizer(const std::filesystem::path& file, const json& config, bool clean_up)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const std::string name = file.string();
  auto status = sp_->Load(name);
  if (!status.ok()) throw Error(name + ": cannot load SentencePiece model: " + status.ToString());
  piece_size_ = sp_->GetPieceSize();

  // Control pieces (<s>, </s>) and <unk> written in the text become their ids.
  std::vector<AddedToken> specials;
  for (int id = 0; id < piece_size_; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
      AddedToken t;
      t.content = sp_->IdToPiece(id);
      t.id = id;
      t.normalized = false;
      t.special = sp_->IsControl(id);
      specials.push_back(std::move(t));
    }
  }
  // tokenizer_config.json's added_tokens_decoder: {"32000": {"content": "<|im_start|>", ...}}.
  if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
    for (const auto& [key, t] : config["added_tokens_decoder"].items()) {
      AddedToken a;
      a.id = std::stoi(key);
      a.content = member(t, "content", "tokenizer_config.json: added_tokens_decoder").get<std::string>();
      a.special = bool_or(t, "special", false);
      a.lstrip = bool_or(t, "lstrip", false);
      a.rstrip = bool_or(t, "rstrip", false);
      a.single_word = bool_or(t, "single_word", false);
      a.normalized = false;
      if (a.id >= piece_size_) extra_[a.id] = a;
      specials.push_back(std::move(a));
    }
  }
  added_.build(std::move(specials), nullptr);
  add_bos_ = bool_or(config, "add_bos_token", true) && sp_->bos_id() >= 0;
  add_eos_ = bool_or(config, "add_eos_token", false) && sp_->eos_id() >= 0;
  if (clean_up) append_cleanup_stages(cleanup_);

  // Whether Decode drops the ▁ of the first piece (add_dummy_prefix or remove_extra_whitespaces)
  // and whether it keeps dropping while the text is empty (remove_extra_whitespaces): the model's
  // normalizer spec is not in the public API, so ask Decode itself.
  for (int id = 0; id < piece_size_; ++id) {
    const std::string& p = sp_->IdToPiece(id);
    if (sp_->IsControl(id) || sp_->IsUnknown(id) || sp_->IsByte(id)) continue;
    // A piece "▁x" with no other ▁: Decode gives "x" or " x".
    if (p.size() > kSpace.size() && p.compare(0, kSpace.size(), kSpace) == 0 &&
        p.find(kSpace, kSpace.size()) == std::string::npos) {
      strip_first_space_ = sp_->DecodeIds({id}).compare(0, 1, " ") != 0;
      int lone = sp_->PieceToId(std::string(kSpace));
      if (strip_first_space_ && sp_->IdToPiece(lone) == kSpace && !sp_->IsUnknown(lone)) {
        strip_while_empty_ = sp_->DecodeIds({lone, id}).compare(0, 1, " ") != 0;
      }
      break;
    }
  }
  unk_surface_ = sp_->unk_id() >= 0 ? sp_->DecodeIds({sp_->unk_id()}) : "";
}

SpTokenizer::~SpTokenizer() = default;

std::vector<int32_t> SpTokenizer::encode(std::string_view input, bool add_special_tokens) const {
  std::string text;
  if (is_valid_utf8(input)) text.assign(input);
  else utf8_lossy_append(input, text, false);
  Pieces pieces;
  if (!text.empty()) pieces.push_back({std::move(text), -1, true});
  added_.split(pieces, false);

  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_) ids.push_back(sp_->bos_id());
  std::vector<int> part;
  for (const Piece& p : pieces) {
    if (p.token >= 0) {
      ids.push_back(p.token);
      continue;
    }
    part.clear();
    auto status = sp_->Encode(p.text, &part);
    if (!status.ok()) throw Error("sentencepiece encode failed: " + status.ToString());
    ids.insert(ids.end(), part.begin(), part.end());
  }
  if (add_special_tokens && add_eos_) ids.push_back(sp_->eos_id());
  return ids;
}

std::string SpTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  // Runs of SentencePiece ids go to DecodeIds; tokens shown as text (added tokens; control tokens
  // when not skipped) sit between runs, and each run starts a new "sentence".
  std::string text;
  std::vector<int> run;
  auto flush = [&] {
    if (!run.empty()) text += sp_->DecodeIds(run);
    run.clear();
  };
  for (int32_t id : ids) {
    if (auto it = extra_.find(id); it != extra_.end()) {
      flush();
      if (!(skip_special_tokens && it->second.special)) text += it->second.content;
    } else if (id < 0 || id >= piece_size_) {
      continue;  // unknown ids are skipped
    } else if (sp_->IsControl(id) && !skip_special_tokens) {
      flush();
      text += sp_->IdToPiece(id);
    } else {
      run.push_back(id);
    }
  }
  flush();
  if (cleanup_.empty()) return text;
  Pipeline pipe(cleanup_);
  std::vector<Frag> items;
  items.push_back({std::move(text), Frag::Whole});
  return pipe.run(std::move(items), true);
}

namespace {
class SpDecodeState final : public DecodeState {
 public:
  SpDecodeState(const SpTokenizer& tok, bool skip) : tok_(tok), sp_(tok.processor()), skip_(skip), pipe_(tok.cleanup()) {}
  std::string push(int32_t id) override { return finish_text(step(id), false); }
  std::string flush() override {
    std::string out = end_run();
    reset_sentence();
    out = finish_text(std::move(out), true);
    pipe_ = Pipeline(tok_.cleanup());
    return out;
  }

 private:
  std::string step(int32_t id) {
    if (const AddedToken* extra = tok_.extra_token(id)) {
      std::string out = end_run();
      reset_sentence();
      if (!(skip_ && extra->special)) out += extra->content;
      return out;
    }
    if (id < 0 || id >= sp_.GetPieceSize()) return "";
    if (sp_.IsByte(id)) {
      bytes_.push_back(static_cast<char>(std::stoi(sp_.IdToPiece(id).substr(3, 2), nullptr, 16)));
      return take_bytes(false);
    }
    if (sp_.IsControl(id) && !skip_) {
      std::string out = end_run();
      reset_sentence();
      return out + sp_.IdToPiece(id);
    }
    std::string out = take_bytes(true);
    if (bos_ws_seen_ || !text_empty_) first_ = false;
    std::string piece;
    bos_ws_seen_ = false;
    if (sp_.IsControl(id)) {
      // invisible
    } else if (sp_.IsUnknown(id)) {
      piece = tok_.unk_surface();
    } else {
      std::string_view p = sp_.IdToPiece(id);
      if (first_ && tok_.strip_first_space() && p.substr(0, kSpace.size()) == kSpace) {
        p.remove_prefix(kSpace.size());
        bos_ws_seen_ = !tok_.strip_while_empty();
      }
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, kSpace.size(), kSpace) == 0) {
          piece += ' ';
          i += kSpace.size();
        } else {
          piece += p[i++];
        }
      }
    }
    text_empty_ &= piece.empty();
    return out + piece;
  }
  // Complete characters of the pending byte pieces; at the end of the run, the rest too
  // (one U+FFFD per invalid byte, as ProcessBytePieces does).
  std::string take_bytes(bool final) {
    std::string out;
    size_t i = 0;
    while (i < bytes_.size()) {
      int n = sp_char_len(std::string_view(bytes_).substr(i), final);
      if (n < 0) break;
      if (n == 0) {
        out += kReplacementChar;
        i += 1;
      } else {
        out.append(bytes_, i, n);
        i += n;
      }
    }
    bytes_.erase(0, i);
    text_empty_ &= out.empty();
    return out;
  }
  std::string end_run() { return take_bytes(true); }
  void reset_sentence() {
    first_ = true;
    bos_ws_seen_ = false;
    text_empty_ = true;
  }
  std::string finish_text(std::string text, bool finish) {
    if (tok_.cleanup().empty()) return text;
    std::vector<Frag> items;
    if (!text.empty()) items.push_back({std::move(text), Frag::Whole});
    return pipe_.run(std::move(items), finish);
  }

  const SpTokenizer& tok_;
  const sentencepiece::SentencePieceProcessor& sp_;
  bool skip_;
  Pipeline pipe_;
  std::string bytes_;
  bool first_ = true, bos_ws_seen_ = false, text_empty_ = true;
};
}  // namespace

std::unique_ptr<DecodeState> SpTokenizer::new_decode_state(bool skip_special_tokens) const {
  return std::make_unique<SpDecodeState>(*this, skip_special_tokens);
}

int32_t SpTokenizer::vocab_size() const {
  int32_t n = piece_size_;
  for (const auto& [id, t] : extra_) n = std::max(n, id + 1);
  return n;
}

std::optional<int32_t> SpTokenizer::token_to_id(std::string_view token) const {
  for (const auto& [id, t] : extra_) {
    if (t.content == token) return id;
  }
  int id = sp_->PieceToId(token);
  if (id < 0 || sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

std::string SpTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* t = extra_token(id)) return t->content;
  if (id < 0 || id >= piece_size_) return "";
  return sp_->IdToPiece(id);
}

bool SpTokenizer::is_special(int32_t id) const {
  if (const AddedToken* t = added_.by_id(id)) return t->special;
  return false;
}

const AddedToken* SpTokenizer::extra_token(int32_t id) const {
  auto it = extra_.find(id);
  return it == extra_.end() ? nullptr : &it->second;
}

}  // namespace stem::tok
