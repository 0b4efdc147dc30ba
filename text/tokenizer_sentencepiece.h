// SentencePiece `tokenizer.model` tokenizer (internal; use load_tokenizer).
#pragma once
#include <filesystem>
#include <map>

#include "text/tokenizer_hf.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace stem::tok {

class SpTokenizer final : public Tokenizer {
 public:
  // `config`: tokenizer_config.json (add_bos_token, add_eos_token, added_tokens_decoder) or null.
  SpTokenizer(const std::filesystem::path& file, const json& config, bool clean_up_tokenization_spaces);
  ~SpTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::unique_ptr<DecodeState> new_decode_state(bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  std::string_view kind() const override { return "sentencepiece"; }

  const sentencepiece::SentencePieceProcessor& processor() const { return *sp_; }
  const AddedToken* extra_token(int32_t id) const;  // an added token beyond the model's pieces
  const StageSpecs& cleanup() const { return cleanup_; }
  const std::string& unk_surface() const { return unk_surface_; }
  bool strip_first_space() const { return strip_first_space_; }
  bool strip_while_empty() const { return strip_while_empty_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int32_t piece_size_ = 0;
  AddedVocabulary added_;
  std::map<int32_t, AddedToken> extra_;
  bool add_bos_ = true, add_eos_ = false;
  StageSpecs cleanup_;
  std::string unk_surface_;
  bool strip_first_space_ = true, strip_while_empty_ = false;
};

}  // namespace stem::tok
