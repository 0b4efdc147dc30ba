// tokenizer.json pre-tokenizers: Sequence, Split (regex or string, five behaviours, invert),
// ByteLevel (GPT-2 regex, byte -> printable character mapping), Digits, Metaspace.
#include <algorithm>
#include <tuple>

#include "text/tokenizer_hf.h"

namespace stem::tok {

SplitBehavior parse_split_behavior(const json& j, const std::string& where) {
  std::string b = j.is_string() ? j.get<std::string>() : j.dump();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, "unknown split behavior '" + b + "'");
}

void split_pieces(Pieces& pieces, const Pattern& pattern, SplitBehavior behavior, bool invert) {
  Pieces out;
  out.reserve(pieces.size() * 2);
  std::vector<Span> m;
  std::vector<std::tuple<size_t, size_t, bool>> parts;  // start, end, removed
  for (Piece& piece : pieces) {
    if (piece.token >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    m.clear();
    parts.clear();
    pattern.find_matches(piece.text, m);
    if (invert) {
      for (Span& s : m) s.is_match = !s.is_match;
    }
    // The folds of NormalizedString::split, quirks included (e.g. a match right after a match is
    // not merged by MergedWithPrevious).
    bool prev = false;
    switch (behavior) {
      case SplitBehavior::Isolated:
      case SplitBehavior::Removed:
        for (const Span& s : m) parts.emplace_back(s.start, s.end, behavior == SplitBehavior::Removed && s.is_match);
        break;
      case SplitBehavior::Contiguous:
        for (const Span& s : m) {
          if (s.is_match == prev && !parts.empty()) std::get<1>(parts.back()) = s.end;
          else parts.emplace_back(s.start, s.end, false);
          prev = s.is_match;
        }
        break;
      case SplitBehavior::MergedWithPrevious:
        for (const Span& s : m) {
          if (s.is_match && !prev && !parts.empty()) std::get<1>(parts.back()) = s.end;
          else parts.emplace_back(s.start, s.end, false);
          prev = s.is_match;
        }
        break;
      case SplitBehavior::MergedWithNext:
        for (auto it = m.rbegin(); it != m.rend(); ++it) {
          if (it->is_match && !prev && !parts.empty()) std::get<0>(parts.back()) = it->start;
          else parts.emplace_back(it->start, it->end, false);
          prev = it->is_match;
        }
        std::reverse(parts.begin(), parts.end());
        break;
    }
    for (auto [s, e, removed] : parts) {
      if (removed || e <= s) continue;
      out.push_back({piece.text.substr(s, e - s), -1, piece.at_origin && s == 0});
    }
  }
  pieces = std::move(out);
}

const std::array<std::string, 256>& byte_to_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      append_utf8(t[b], printable ? static_cast<uint32_t>(b) : 256 + n++);
    }
    return t;
  }();
  return table;
}

int byte_of_char(uint32_t cp) {
  static const std::array<int, 512> table = [] {
    std::array<int, 512> t;
    t.fill(-1);
    const auto& chars = byte_to_chars();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      t[next_code_point(chars[b], i)] = b;
    }
    return t;
  }();
  return cp < 512 ? table[cp] : -1;
}

namespace {

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(Pieces& pieces) const override { split_pieces(pieces, *pattern_, behavior_, invert_); }

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void pre_tokenize(Pieces& pieces) const override {
    static const RegexPattern gpt2(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                                   "ByteLevel pre-tokenizer");
    if (add_prefix_space_) {
      for (Piece& p : pieces) {
        if (p.token < 0 && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (use_regex_) split_pieces(pieces, gpt2, SplitBehavior::Isolated, false);
    const auto& chars = byte_to_chars();
    for (Piece& p : pieces) {
      if (p.token >= 0) continue;
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += chars[b];
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void pre_tokenize(Pieces& pieces) const override {
    static const CharPattern numeric(&is_numeric);
    split_pieces(pieces, numeric, individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous, false);
  }

 private:
  bool individual_;
};

enum class PrependScheme { Always, First, Never };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : rep_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t i = 0;
    rep_cp_ = next_code_point(rep_, i);
  }
  void pre_tokenize(Pieces& pieces) const override {
    for (Piece& p : pieces) {
      if (p.token >= 0) continue;
      std::string t;
      t.reserve(p.text.size() + rep_.size());
      for (char c : p.text) {
        if (c == ' ') t += rep_;
        else t += c;
      }
      bool starts = t.compare(0, rep_.size(), rep_) == 0;
      if (!starts && (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && p.at_origin))) {
        t.insert(0, rep_);
      }
      p.text = std::move(t);
    }
    if (split_) split_pieces(pieces, CharPattern(rep_cp_), SplitBehavior::MergedWithNext, false);
  }

 private:
  std::string rep_;
  uint32_t rep_cp_;
  PrependScheme scheme_;
  bool split_;
};

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = member(j, "type", where).get<std::string>();
  std::string here = where + " " + type;
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const json& part : member(j, "pretokenizers", here)) {
      if (auto p = parse_pre_tokenizer(part, where)) parts.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(parse_pattern(member(j, "pattern", here), here),
                                               parse_split_behavior(member(j, "behavior", here), here),
                                               bool_or(j, "invert", false));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(bool_or(j, "add_prefix_space", true), bool_or(j, "use_regex", true));
  }
  if (type == "Digits") return std::make_unique<DigitsPreTokenizer>(bool_or(j, "individual_digits", false));
  if (type == "Metaspace") {
    std::string scheme = string_or(j, "prepend_scheme", "always");
    PrependScheme ps = scheme == "first" ? PrependScheme::First : scheme == "never" ? PrependScheme::Never
                                                                                    : PrependScheme::Always;
    if (scheme != "first" && scheme != "never" && scheme != "always") fail(here, "unknown prepend_scheme '" + scheme + "'");
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      ps = PrependScheme::Never;
    }
    std::string rep = string_or(j, "replacement", "\xE2\x96\x81");
    if (rep.empty()) fail(here, "empty replacement");
    return std::make_unique<MetaspacePreTokenizer>(rep, ps, bool_or(j, "split", true));
  }
  fail(where, "pre_tokenizer type '" + type +
                  "' is not supported (supported: Sequence, Split, ByteLevel, Digits, Metaspace)");
}

}  // namespace stem::tok
