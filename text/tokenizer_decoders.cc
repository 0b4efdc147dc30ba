// tokenizer.json decoders as streaming stages: ByteLevel, Metaspace, Replace, ByteFallback, Fuse,
// Strip (and Sequence of them), plus transformers' clean_up_tokenization. Each stage gives, over a
// whole stream, exactly what the `tokenizers` decoder gives on the whole list of tokens; it only
// holds back what a later token could still change, so decode() and the incremental detokenizer
// are one implementation.
#include <tuple>

#include "text/tokenizer_hf.h"

namespace stem::tok {
namespace {

// A stage that needs each token complete: Begin/Cont pieces are gathered until the token ends.
class WholeTokenStage : public DecodeStage {
 public:
  void feed(Frag f, std::vector<Frag>& out) final {
    if (f.kind == Frag::Cont && open_) {
      buf_ += f.text;
      return;
    }
    close(out);
    if (f.kind == Frag::Whole) {
      on_token(f.text, out);
    } else {
      buf_ = std::move(f.text);
      open_ = true;
    }
  }
  void finish(std::vector<Frag>& out) final {
    close(out);
    on_finish(out);
  }

 protected:
  virtual void on_token(const std::string& token, std::vector<Frag>& out) = 0;
  virtual void on_finish(std::vector<Frag>& out) {}

 private:
  void close(std::vector<Frag>& out) {
    if (!open_) return;
    open_ = false;
    on_token(buf_, out);
    buf_.clear();
  }
  std::string buf_;
  bool open_ = false;
};

// ByteLevel: each token's characters back to bytes (or its own UTF-8 when some character is not
// a byte-level one), all tokens as one byte string, decoded lossily (String::from_utf8_lossy).
class ByteLevelStage final : public WholeTokenStage {
  void on_token(const std::string& t, std::vector<Frag>& out) override {
    size_t mark = pending_.size();
    bool all = true;
    for (size_t i = 0; i < t.size() && all;) {
      int b = byte_of_char(next_code_point(t, i));
      if (b < 0) all = false;
      else pending_.push_back(static_cast<char>(b));
    }
    if (!all) pending_.replace(mark, std::string::npos, t);
    std::string text;
    pending_.erase(0, utf8_lossy_append(pending_, text, /*hold_incomplete_tail=*/true));
    emit(std::move(text), out);
  }
  void on_finish(std::vector<Frag>& out) override {
    std::string text;
    utf8_lossy_append(pending_, text, false);
    pending_.clear();
    if (!text.empty()) emit(std::move(text), out);
  }
  void emit(std::string text, std::vector<Frag>& out) {
    out.push_back({std::move(text), first_ ? Frag::Begin : Frag::Cont});
    first_ = false;
  }
  std::string pending_;
  bool first_ = true;
};

// ByteFallback: a run of <0xXX> tokens becomes its UTF-8 text, or one U+FFFD per byte when the
// run is not valid UTF-8 as a whole (so the run is held until it ends).
class ByteFallbackStage final : public WholeTokenStage {
  void on_token(const std::string& t, std::vector<Frag>& out) override {
    int b = byte_token(t);
    if (b >= 0) {
      bytes_.push_back(static_cast<char>(b));
      return;
    }
    flush_bytes(out);
    out.push_back({t, Frag::Whole});
  }
  void on_finish(std::vector<Frag>& out) override { flush_bytes(out); }
  void flush_bytes(std::vector<Frag>& out) {
    if (bytes_.empty()) return;
    if (is_valid_utf8(bytes_)) {
      out.push_back({bytes_, Frag::Whole});
    } else {
      for (size_t i = 0; i < bytes_.size(); ++i) out.push_back({std::string(kReplacementChar), Frag::Whole});
    }
    bytes_.clear();
  }
  // "<0xAB>": six bytes, the two in the middle parsed like Rust's u8::from_str_radix(_, 16),
  // which also takes a leading '+'.
  static int byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (t[3] == '+') return hex(t[4]);
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
  std::string bytes_;
};

class FuseStage final : public DecodeStage {
 public:
  void feed(Frag f, std::vector<Frag>& out) override {
    out.push_back({std::move(f.text), first_ ? Frag::Begin : Frag::Cont});
    first_ = false;
  }
  void finish(std::vector<Frag>&) override {}

 private:
  bool first_ = true;
};

// Replace with a literal pattern, streaming inside a token: only a tail that could still become a
// match is held back. Leftmost non-overlapping matches, as a regex built from the escaped literal.
class ReplaceLiteralStage final : public DecodeStage {
 public:
  ReplaceLiteralStage(std::string pattern, std::string content) : pat_(std::move(pattern)), rep_(std::move(content)) {}
  void feed(Frag f, std::vector<Frag>& out) override {
    if (f.kind == Frag::Whole) {
      close(out);
      std::string r = replace(f.text, /*final=*/true);
      out.push_back({std::move(r), Frag::Whole});
      return;
    }
    Frag::Kind kind = f.kind;
    if (f.kind == Frag::Begin || !open_) {
      close(out);
      open_ = true;
      kind = Frag::Begin;
    }
    out.push_back({replace(tail_ + f.text, false), kind});
  }
  void finish(std::vector<Frag>& out) override { close(out); }

 private:
  void close(std::vector<Frag>& out) {
    if (open_ && !tail_.empty()) out.push_back({tail_, Frag::Cont});
    tail_.clear();
    open_ = false;
  }
  std::string replace(const std::string& buf, bool final) {
    std::string result;
    size_t pos = 0;
    if (!pat_.empty()) {
      for (size_t p = buf.find(pat_); p != std::string::npos; p = buf.find(pat_, pos)) {
        result.append(buf, pos, p - pos);
        result += rep_;
        pos = p + pat_.size();
      }
    }
    size_t keep = 0;
    if (!final && !pat_.empty()) {
      // The longest proper prefix of the pattern that ends the buffer.
      for (size_t k = std::min(pat_.size() - 1, buf.size() - pos); k > 0; --k) {
        if (buf.compare(buf.size() - k, k, pat_, 0, k) == 0) {
          keep = k;
          break;
        }
      }
    }
    result.append(buf, pos, buf.size() - pos - keep);
    tail_ = buf.substr(buf.size() - keep);
    return result;
  }
  std::string pat_, rep_, tail_;
  bool open_ = false;
};

// Replace with a regex pattern: per whole token.
class ReplaceRegexStage final : public WholeTokenStage {
 public:
  ReplaceRegexStage(const RegexPattern& re, const std::string& content) : re_(re), rep_(content) {}
  void on_token(const std::string& t, std::vector<Frag>& out) override {
    std::vector<Span> spans;
    re_.find_matches(t, spans);
    std::string r;
    for (const Span& s : spans) r += s.is_match ? rep_ : t.substr(s.start, s.end - s.start);
    out.push_back({std::move(r), Frag::Whole});
  }

 private:
  const RegexPattern& re_;
  const std::string& rep_;
};

// Strip: up to `start` leading and `stop` trailing `content` characters of each token.
class StripStage final : public DecodeStage {
 public:
  StripStage(uint32_t content, size_t start, size_t stop) : c_(content), start_(start), stop_(stop) {}
  void feed(Frag f, std::vector<Frag>& out) override {
    if (f.kind != Frag::Cont || !open_) {
      held_.clear();
      stripped_ = 0;
      at_start_ = true;
      open_ = f.kind != Frag::Whole;
    }
    std::string r;
    for (size_t i = 0; i < f.text.size();) {
      size_t b = i;
      uint32_t cp = next_code_point(f.text, i);
      std::string_view ch(f.text.data() + b, i - b);
      if (at_start_ && stripped_ < start_ && cp == c_) {
        ++stripped_;
        continue;
      }
      at_start_ = false;
      if (stop_ == 0) {
        r += ch;
      } else if (cp == c_) {
        held_.emplace_back(ch);
        if (held_.size() > stop_) {
          r += held_.front();
          held_.erase(held_.begin());
        }
      } else {
        for (const auto& h : held_) r += h;
        held_.clear();
        r += ch;
      }
    }
    if (f.kind == Frag::Whole) held_.clear();  // a whole token ends here: its tail is stripped
    out.push_back({std::move(r), f.kind});
  }
  void finish(std::vector<Frag>&) override {
    held_.clear();
    open_ = false;
  }

 private:
  uint32_t c_;
  size_t start_, stop_;
  std::vector<std::string> held_;
  size_t stripped_ = 0;
  bool at_start_ = true, open_ = false;
};

// Metaspace: the replacement character becomes a space, except in the first token, where it is
// dropped (all of them) unless prepend_scheme is "never".
class MetaspaceStage final : public DecodeStage {
 public:
  MetaspaceStage(uint32_t rep, bool drop_in_first) : rep_(rep), drop_in_first_(drop_in_first) {}
  void feed(Frag f, std::vector<Frag>& out) override {
    if (f.kind != Frag::Cont) ++index_;
    std::string r;
    for (size_t i = 0; i < f.text.size();) {
      size_t b = i;
      uint32_t cp = next_code_point(f.text, i);
      if (cp != rep_) r.append(f.text, b, i - b);
      else if (!(index_ == 0 && drop_in_first_)) r += ' ';
    }
    out.push_back({std::move(r), f.kind});
  }
  void finish(std::vector<Frag>&) override {}

 private:
  uint32_t rep_;
  bool drop_in_first_;
  long index_ = -1;
};

// No decoder: tokens joined by " ".
class JoinStage final : public DecodeStage {
 public:
  void feed(Frag f, std::vector<Frag>& out) override {
    if (f.kind != Frag::Cont && !first_) f.text.insert(0, " ");
    first_ = false;
    out.push_back(std::move(f));
  }
  void finish(std::vector<Frag>&) override {}

 private:
  bool first_ = true;
};

template <typename Stage, typename... Args>
class Spec final : public StageSpec {
 public:
  explicit Spec(Args... args) : args_(std::move(args)...) {}
  std::unique_ptr<DecodeStage> make() const override {
    return std::apply([](const auto&... a) { return std::make_unique<Stage>(a...); }, args_);
  }

 private:
  std::tuple<Args...> args_;
};

class ReplaceRegexSpec final : public StageSpec {
 public:
  ReplaceRegexSpec(const std::string& pattern, std::string content, const std::string& where)
      : re_(pattern, where), content_(std::move(content)) {}
  std::unique_ptr<DecodeStage> make() const override { return std::make_unique<ReplaceRegexStage>(re_, content_); }

 private:
  RegexPattern re_;
  std::string content_;
};

uint32_t single_char(const std::string& s, const std::string& where) {
  size_t i = 0;
  uint32_t cp = s.empty() ? 0 : next_code_point(s, i);
  if (s.empty() || i != s.size()) fail(where, "expected a single character, got '" + s + "'");
  return cp;
}

}  // namespace

void parse_decoder(const json& j, const std::string& where, StageSpecs& out) {
  if (j.is_null()) {
    out.push_back(std::make_unique<Spec<JoinStage>>());
    return;
  }
  std::string type = member(j, "type", where).get<std::string>();
  std::string here = where + " " + type;
  if (type == "Sequence") {
    for (const json& d : member(j, "decoders", here)) {
      if (d.is_null()) continue;
      parse_decoder(d, where, out);
    }
  } else if (type == "ByteLevel") {
    out.push_back(std::make_unique<Spec<ByteLevelStage>>());
  } else if (type == "ByteFallback") {
    out.push_back(std::make_unique<Spec<ByteFallbackStage>>());
  } else if (type == "Fuse") {
    out.push_back(std::make_unique<Spec<FuseStage>>());
  } else if (type == "Strip") {
    uint32_t c = single_char(member(j, "content", here).get<std::string>(), here);
    out.push_back(std::make_unique<Spec<StripStage, uint32_t, size_t, size_t>>(
        c, member(j, "start", here).get<size_t>(), member(j, "stop", here).get<size_t>()));
  } else if (type == "Replace") {
    const json& p = member(j, "pattern", here);
    std::string content = member(j, "content", here).get<std::string>();
    if (p.is_object() && p.contains("String")) {
      out.push_back(std::make_unique<Spec<ReplaceLiteralStage, std::string, std::string>>(
          p["String"].get<std::string>(), content));
    } else if (p.is_object() && p.contains("Regex")) {
      out.push_back(std::make_unique<ReplaceRegexSpec>(p["Regex"].get<std::string>(), content, here));
    } else {
      fail(here, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
  } else if (type == "Metaspace") {
    uint32_t rep = single_char(string_or(j, "replacement", "\xE2\x96\x81"), here);
    std::string scheme = string_or(j, "prepend_scheme", "always");
    bool never = scheme == "never" ||
                 (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>());
    out.push_back(std::make_unique<Spec<MetaspaceStage, uint32_t, bool>>(rep, !never));
  } else {
    fail(where, "decoder type '" + type +
                    "' is not supported (supported: ByteLevel, Metaspace, Sequence, Replace, ByteFallback, Fuse, Strip)");
  }
}

void append_cleanup_stages(StageSpecs& out) {
  out.push_back(std::make_unique<Spec<FuseStage>>());
  static const char* kPairs[][2] = {{" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},
                                    {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},
                                    {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& p : kPairs) {
    out.push_back(std::make_unique<Spec<ReplaceLiteralStage, std::string, std::string>>(p[0], p[1]));
  }
}

Pipeline::Pipeline(const StageSpecs& specs) {
  for (const auto& s : specs) stages_.push_back(s->make());
}

std::string Pipeline::run(std::vector<Frag> items, bool finish) {
  std::vector<Frag> next;
  for (auto& stage : stages_) {
    next.clear();
    for (Frag& f : items) stage->feed(std::move(f), next);
    if (finish) stage->finish(next);
    std::swap(items, next);
  }
  std::string text;
  for (const Frag& f : items) text += f.text;
  return text;
}

}  // namespace stem::tok
