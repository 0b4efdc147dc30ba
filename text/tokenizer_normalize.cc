// tokenizer.json normalizers met in Llama-family tokenizers: NFC, Sequence, Prepend, Replace, Strip.
#include "text/tokenizer_hf.h"

namespace stem::tok {
namespace {

class NfcNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = nfc(s); }
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& s) const override {
    for (const auto& p : parts_) p->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& s) const override {
    std::vector<Span> spans;
    pattern_->find_matches(s, spans);
    std::string out;
    out.reserve(s.size());
    for (const Span& sp : spans) {
      if (sp.is_match) out += content_;
      else out.append(s, sp.start, sp.end - sp.start);
    }
    s = std::move(out);
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t begin = 0, end = s.size();
    if (left_) {
      while (begin < end) {
        size_t j = begin;
        if (!is_white_space(next_code_point(s, j))) break;
        begin = j;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t i = end - 1;
        while (i > begin && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
        size_t j = i;
        if (!is_white_space(next_code_point(s, j))) break;
        end = i;
      }
    }
    s = s.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

}  // namespace

// A Replace / Split `pattern`: {"String": "..."} or {"Regex": "..."}.
std::unique_ptr<Pattern> parse_pattern(const json& j, const std::string& where) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    return std::make_unique<LiteralPattern>(j["String"].get<std::string>());
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    return std::make_unique<RegexPattern>(j["Regex"].get<std::string>(), where);
  }
  fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + j.dump());
}

std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = member(j, "type", where).get<std::string>();
  std::string here = where + " " + type;
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const json& part : member(j, "normalizers", here)) {
      if (auto n = parse_normalizer(part, where)) parts.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(member(j, "prepend", here).get<std::string>());
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(parse_pattern(member(j, "pattern", here), here),
                                               member(j, "content", here).get<std::string>());
  }
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(bool_or(j, "strip_left", true), bool_or(j, "strip_right", true));
  }
  fail(where, "normalizer type '" + type +
                  "' is not supported (supported: NFC, Sequence, Prepend, Replace, Strip)");
}

}  // namespace stem::tok
