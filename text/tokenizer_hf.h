// The parts of an HF `tokenizer.json` tokenizer (internal): added tokens, normalizers,
// pre-tokenizers, the BPE model, the streaming decoders, and the tokenizer that joins them.
// Each part mirrors the Python `tokenizers` package (the Rust crate) closely enough that ids and
// decoded text are identical; comments name the places where that takes care.
#pragma once
#include <array>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "text/tokenizer.h"
#include "text/tokenizer_text.h"

namespace stem::tok {

using nlohmann::json;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// Errors while reading tokenizer.json name the file and the part: "<file>: pre_tokenizer: ...".
[[noreturn]] void fail(const std::string& where, const std::string& why);
// json helpers that fail with a message naming `where`.
const json& member(const json& j, const char* key, const std::string& where);
std::string string_or(const json& j, const char* key, const std::string& fallback);
bool bool_or(const json& j, const char* key, bool fallback);

// A Replace / Split `pattern`: {"String": "..."} or {"Regex": "..."}.
std::unique_ptr<Pattern> parse_pattern(const json& j, const std::string& where);

// ---- Pieces of text between the steps ---------------------------------------------------------
struct Piece {
  std::string text;
  int32_t token = -1;      // >= 0: an added token, final
  bool at_origin = false;  // starts at offset 0 of the input (Metaspace prepend_scheme "first")
};
using Pieces = std::vector<Piece>;

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_split_behavior(const json& j, const std::string& where);
// NormalizedString::split on every piece that is not a token; empty results are dropped.
void split_pieces(Pieces& pieces, const Pattern& pattern, SplitBehavior behavior, bool invert);

// ---- Added tokens ------------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  std::string decode_form;  // the normalized content for normalized tokens (what decode sees)
};

class Normalizer;
class AddedVocabulary {
 public:
  void build(std::vector<AddedToken> tokens, const Normalizer* normalizer);
  // Splits each non-token piece at the added tokens of one kind (normalized or not),
  // leftmost-longest, with the single_word / lstrip / rstrip rules of AddedVocabulary::find_matches.
  void split(Pieces& pieces, bool normalized) const;
  const AddedToken* by_id(int32_t id) const;
  std::optional<int32_t> by_content(std::string_view content) const;
  bool is_special_content(std::string_view s) const { return special_contents_.find(s) != special_contents_.end(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool has_normalized() const { return !norm_.nodes.empty(); }

 private:
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
      int32_t token = -1;                                   // index into tokens_
    };
    std::vector<Node> nodes;
    std::array<bool, 256> first{};
    void add(std::string_view s, int32_t token);
    // Longest token starting at text[pos]: its index and length, or -1.
    int32_t longest(std::string_view text, size_t pos, size_t& len) const;
  };
  void split_one(const Piece& piece, const Trie& trie, Pieces& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  StringMap<int32_t> by_content_;
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents_;
  Trie raw_, norm_;
};

// ---- Normalizers and pre-tokenizers -----------------------------------------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
// nullptr for a JSON null.
std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& where);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& where);

// GPT-2's byte <-> printable character mapping used by ByteLevel.
const std::array<std::string, 256>& byte_to_chars();
// The byte a byte-level character stands for, or -1.
int byte_of_char(uint32_t cp);

// ---- BPE model ---------------------------------------------------------------------------------
class Bpe {
 public:
  Bpe(const json& model, const std::string& where);
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(vocab_r_.size()) - 1; }
  std::optional<int32_t> unk_id() const;

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringMap<int32_t> vocab_;
  std::vector<std::string> vocab_r_;
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (a,b) -> (rank, merged)
  std::optional<std::string> unk_token_, prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // <0xXX> tokens for byte_fallback, -1 if absent

  struct CacheShard {
    std::mutex mu;
    StringMap<std::vector<int32_t>> map;
  };
  mutable std::array<CacheShard, 16> cache_;
};

// ---- Streaming decoders ------------------------------------------------------------------------
// HF decoders turn a list of token strings into a list of strings; a stream of them here.
// Whole: a complete token. Begin/Cont: a token that comes in pieces (after Fuse or ByteLevel,
// everything is one token); it ends at the next Whole/Begin or at finish().
struct Frag {
  enum Kind { Whole, Begin, Cont };
  std::string text;
  Kind kind;
};
class DecodeStage {
 public:
  virtual ~DecodeStage() = default;
  virtual void feed(Frag f, std::vector<Frag>& out) = 0;
  virtual void finish(std::vector<Frag>& out) = 0;
};
// Immutable description of a stage (parsed once); make() gives fresh state for one stream.
class StageSpec {
 public:
  virtual ~StageSpec() = default;
  virtual std::unique_ptr<DecodeStage> make() const = 0;
};
using StageSpecs = std::vector<std::unique_ptr<StageSpec>>;
// Appends the stages of a `decoder` (flattening Sequence); a JSON null joins tokens with " ".
void parse_decoder(const json& j, const std::string& where, StageSpecs& out);
// transformers' clean_up_tokenization: ten replacements, in order, over the whole text.
void append_cleanup_stages(StageSpecs& out);

class Pipeline {
 public:
  explicit Pipeline(const StageSpecs& specs);
  std::string run(std::vector<Frag> items, bool finish);

 private:
  std::vector<std::unique_ptr<DecodeStage>> stages_;
};

// ---- The tokenizer -----------------------------------------------------------------------------
class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const json& j, const std::string& file, bool clean_up_tokenization_spaces);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::unique_ptr<DecodeState> new_decode_state(bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  std::string_view kind() const override { return "tokenizer.json"; }

  // What decode() hands to the decoders for `id`: nullptr when unknown or skipped.
  const std::string* decode_string(int32_t id, bool skip_special_tokens) const;
  const StageSpecs& stages() const { return stages_; }
  // Replaces the post-processor's template (transformers' LlamaTokenizerFast does, from
  // add_bos_token / add_eos_token).
  void set_template(std::vector<int32_t> prefix, std::vector<int32_t> suffix) {
    prefix_ = std::move(prefix);
    suffix_ = std::move(suffix);
  }
  std::optional<int32_t> unk_id() const { return model_->unk_id(); }

 private:
  AddedVocabulary added_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Bpe> model_;
  std::vector<int32_t> prefix_, suffix_;  // the post-processor's single-sequence template
  StageSpecs stages_;
};

}  // namespace stem::tok
