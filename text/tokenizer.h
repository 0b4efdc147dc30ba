// Tokenizers behind one interface: HF `tokenizer.json` (byte-level or Metaspace BPE, written here)
// and SentencePiece `tokenizer.model` (through libsentencepiece), plus the incremental
// detokenizer that turns a stream of generated ids into text.
//
// Behaviour follows the Python `tokenizers` package (encode, decode) and `sentencepiece`;
// tests/fixtures/tokenizers holds ids made by those packages and the tests compare exactly.
// Known limits: characters new in Unicode 15-16 may split differently in regex pre-tokenizers
// (PCRE2 10.42 has Unicode 14; the package's Oniguruma has 16).
//
// SentencePiece (`tokenizer.model`): encode splits the text at special tokens (<s>, </s>, <unk>,
// and tokenizer_config.json's added_tokens_decoder) and encodes each stretch with SentencePiece
// on its own, as Meta's Llama-2 reference and HF's slow tokenizer (legacy) do; add_bos_token
// (default true) / add_eos_token (default false) come from tokenizer_config.json. decode with
// skip_special_tokens is SentencePiece's DecodeIds; without it, control and added tokens are
// written out between runs that DecodeIds decodes (each run drops its leading space).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace stem {

// Turns a stream of token ids into text, one id at a time. push() returns only text that no
// later id can change (never half a UTF-8 character); flush() returns the rest at the end.
// The concatenation of all returned pieces equals Tokenizer::decode of all the ids.
class DecodeState {
 public:
  virtual ~DecodeState() = default;
  virtual std::string push(int32_t id) = 0;
  virtual std::string flush() = 0;
};

// Special-token facts gathered by the loader from the tokenizer itself, tokenizer_config.json
// and generation_config.json.
struct SpecialTokens {
  std::optional<int32_t> bos_id;
  std::vector<int32_t> eos_ids;   // config's eos_token first, then generation_config's
  std::optional<int32_t> pad_id;
  std::optional<int32_t> unk_id;
  bool adds_bos = false;          // encode(text, true) starts with bos_id
  bool clean_up_tokenization_spaces = false;  // transformers' decode-time clean-up
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // add_special_tokens: apply the post-processor (BOS etc.), like HF `tokenizer(text)`.
  // Special tokens written in the text (`<|im_start|>`, `<s>`) always become their ids.
  // Invalid UTF-8 in `text` is replaced by U+FFFD first.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  // Equals HF `tokenizer.decode(ids, skip_special_tokens=...)` (clean-up of tokenization spaces as
  // tokenizer_config.json says; off when it says nothing). Ids the tokenizer does not know are skipped.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  // A fresh streaming decoder; see DecodeState and IncrementalDetokenizer.
  virtual std::unique_ptr<DecodeState> new_decode_state(bool skip_special_tokens) const = 0;

  // Number of ids this tokenizer can produce or decode: 1 + the largest id of the vocabulary
  // and the added tokens (the model's embedding table may be larger).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  // The token's string as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>"); "" if unknown.
  virtual std::string id_to_token(int32_t id) const = 0;
  // Special: skipped by decode(..., skip_special_tokens=true) (<s>, <|im_end|>, ...).
  virtual bool is_special(int32_t id) const = 0;
  // "tokenizer.json" or "sentencepiece", for messages and logs.
  virtual std::string_view kind() const = 0;

  std::optional<int32_t> bos_id() const { return special_.bos_id; }
  const std::vector<int32_t>& eos_ids() const { return special_.eos_ids; }
  bool is_eos(int32_t id) const;
  // The BOS/EOS strings ("<s>", "<|im_end|>"); "" when there is none.
  std::string bos_token() const { return special_.bos_id ? id_to_token(*special_.bos_id) : ""; }
  std::string eos_token() const { return eos_ids().empty() ? "" : id_to_token(eos_ids()[0]); }
  const SpecialTokens& special_tokens() const { return special_; }

 protected:
  SpecialTokens special_;
  friend std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);
};

// Loads `tokenizer.json` when present (HF fast tokenizer), else `tokenizer.model` (SentencePiece),
// and `tokenizer_config.json` / `generation_config.json` beside it when present.
// `path` is a model directory or one of those two files. Throws stem::Error naming the file and
// the reason (missing, not JSON, unsupported model / normalizer / pre-tokenizer / decoder type).
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// Push generated ids one by one; get back only complete new text. After flush() the
// concatenation of everything returned equals tokenizer.decode(all ids, skip_special_tokens).
// Handles byte-level BPE, SentencePiece's ▁ and <0x..> byte tokens and its leading-space rule.
// Text is held back only while a later id can still change it: an incomplete UTF-8 character;
// a space that transformers' clean-up may remove (" ." -> "."); and, for tokenizer.json files
// with a ByteFallback decoder (HF Llama-2/Mistral), a whole run of <0x..> tokens, because HF
// turns every byte of the run into U+FFFD when any part of it is not valid UTF-8.
// Not thread-safe (one per sequence); the Tokenizer must outlive it.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  std::string push(int32_t id);
  std::string push(std::span<const int32_t> ids);
  std::string flush();  // at the end of the sequence; push() after flush() starts over
  void reset();         // drops what is held and starts over
  size_t num_tokens() const { return num_tokens_; }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::unique_ptr<DecodeState> state_;
  std::string held_;  // an incomplete UTF-8 tail (defensive: decode states never emit one)
  size_t num_tokens_ = 0;
  std::string release(std::string text);
};

}  // namespace stem
