// Every fixture string encodes to the ids the Python `tokenizers` / `sentencepiece` packages give,
// decodes to their text, and the incremental detokenizer reproduces decode without ever
// emitting invalid UTF-8. Fixtures: tests/fixtures/make_tokenizer_fixtures.py.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "text/tokenizer.h"
#include "tests/catch.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kFixtures = fs::path(stem::test::fixtures_dir()) / "tokenizers";

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  std::stringstream buf;
  buf << in.rdbuf();
  return json::parse(buf.str());
}

const std::vector<std::string>& fixture_strings() {
  static const std::vector<std::string> strings = read_json(kFixtures / "strings.json").get<std::vector<std::string>>();
  return strings;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

std::string show(std::string_view s) { return json(std::string(s)).dump(); }
std::string show(const std::vector<int32_t>& ids) { return json(ids).dump(); }

// Streams `ids` through an IncrementalDetokenizer; returns "" on success or what went wrong.
std::string check_incremental(const stem::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip,
                              const std::string& expected) {
  stem::IncrementalDetokenizer detok(tok, skip);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = detok.push(id);
    if (!valid_utf8(piece)) return "emitted invalid UTF-8 " + show(piece);
    all += piece;
  }
  std::string rest = detok.flush();
  if (!valid_utf8(rest)) return "flushed invalid UTF-8";
  all += rest;
  if (all != expected) return "incremental " + show(all) + " != decode " + show(expected);
  return "";
}

struct Failures {
  size_t count = 0;
  std::vector<std::string> first;
  void add(const std::string& what) {
    if (++count <= 8) first.push_back(what);
  }
  void report(const std::string& name) const {
    for (const auto& f : first) UNSCOPED_INFO(name << ": " << f);
    CHECK(count == 0);
  }
};

void check_fixture(const stem::Tokenizer& tok, const std::string& name) {
  const json exp = read_json(kFixtures / name / "expected.json");
  const auto& strings = fixture_strings();
  const size_t n = exp["num_strings"].get<size_t>();
  REQUIRE(n <= strings.size());
  REQUIRE(exp["ids"].size() == n);
  const auto prefix = exp["special_prefix"].get<std::vector<int32_t>>();
  const auto suffix = exp["special_suffix"].get<std::vector<int32_t>>();
  Failures fails;

  auto check_decode = [&](const std::vector<int32_t>& ids, const std::string& what, const std::string& decoded,
                          const std::string& decoded_skip) {
    std::string got = tok.decode(ids, false);
    if (got != decoded) fails.add(what + ": decode " + show(got) + " != " + show(decoded));
    got = tok.decode(ids, true);
    if (got != decoded_skip) fails.add(what + ": decode(skip) " + show(got) + " != " + show(decoded_skip));
    for (bool skip : {false, true}) {
      std::string err = check_incremental(tok, ids, skip, skip ? decoded_skip : decoded);
      if (!err.empty()) fails.add(what + (skip ? " (skip): " : ": ") + err);
    }
  };

  for (size_t i = 0; i < n; ++i) {
    const std::string& text = strings[i];
    const std::string key = std::to_string(i);
    const auto ids = exp["ids"][i].get<std::vector<int32_t>>();
    auto got = tok.encode(text, false);
    if (got != ids) fails.add("string " + key + " " + show(text) + ": encode " + show(got) + " != " + show(ids));
    std::vector<int32_t> full = prefix;
    full.insert(full.end(), ids.begin(), ids.end());
    full.insert(full.end(), suffix.begin(), suffix.end());
    if (tok.encode(text, true) != full) fails.add("string " + key + ": encode with special tokens");
    std::string decoded = exp["decoded"].contains(key) ? exp["decoded"][key].get<std::string>() : text;
    std::string decoded_skip = exp["decoded_skip"].contains(key) ? exp["decoded_skip"][key].get<std::string>() : decoded;
    check_decode(ids, "string " + key, decoded, decoded_skip);
  }
  for (const json& w : exp["with_special"]) {
    size_t i = w["index"].get<size_t>();
    auto ids = exp["ids"][i].get<std::vector<int32_t>>();
    ids.insert(ids.begin(), prefix.begin(), prefix.end());
    ids.insert(ids.end(), suffix.begin(), suffix.end());
    check_decode(ids, "string " + std::to_string(i) + " with special tokens", w["decoded"], w["decoded_skip"]);
  }
  for (const json& r : exp["random_ids"]) {
    auto ids = r["ids"].get<std::vector<int32_t>>();
    check_decode(ids, "random ids " + show(ids), r["decoded"], r["decoded_skip"]);
  }
  fails.report(name);
}

void check_named(const std::string& name) {
  auto tok = stem::load_tokenizer(kFixtures / name);
  CHECK(tok->kind() == "tokenizer.json");
  check_fixture(*tok, name);
}

}  // namespace

TEST_CASE("tokenizer fixtures: GPT-2 (ByteLevel regex, \"a b\" merges)") { check_named("gpt2"); }
TEST_CASE("tokenizer fixtures: SmolLM2 style (Digits + ByteLevel)") { check_named("smollm2"); }
TEST_CASE("tokenizer fixtures: Llama-3 style (Split regex, ignore_merges, BOS, clean-up)") { check_named("llama3"); }
TEST_CASE("tokenizer fixtures: Qwen2 style (NFC, Split regex)") { check_named("qwen2"); }
TEST_CASE("tokenizer fixtures: Llama-2 HF style (Prepend/Replace, byte fallback, Strip decoder)") {
  check_named("llama2_hf");
}
TEST_CASE("tokenizer fixtures: Mistral style (Metaspace first, no split)") { check_named("mistral"); }
TEST_CASE("tokenizer fixtures: Metaspace split + Metaspace decoder") { check_named("metaspace_split"); }
TEST_CASE("tokenizer fixtures: every Split behaviour, invert, Strip/Replace normalizers") {
  check_named("split_behaviors");
}
TEST_CASE("tokenizer fixtures: added-token flags, no decoder, Roberta post-processor") { check_named("added_flags"); }
TEST_CASE("tokenizer fixtures: unk, continuing_subword_prefix, end_of_word_suffix, regex Replace decoder") {
  check_named("bpe_options");
}

TEST_CASE("tokenizer fixtures: SentencePiece BPE tokenizer.model with byte fallback (Llama-2's trainer settings)") {
  auto tok = stem::load_tokenizer(kFixtures / "sp_bpe" / "tokenizer.model");
  CHECK(tok->kind() == "sentencepiece");
  CHECK(tok->vocab_size() == 4000);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_ids() == std::vector<int32_t>{2});
  CHECK(tok->special_tokens().adds_bos);
  check_fixture(*tok, "sp_bpe");
}

TEST_CASE("tokenizer fixtures: real SmolLM2-135M-Instruct tokenizer.json") {
  const fs::path dir = fs::path(stem::test::source_dir()) / "models" / "cache" / "SmolLM2-135M-Instruct";
  if (!fs::exists(dir / "tokenizer.json")) SKIP((dir / "tokenizer.json").string() << " is not prepared (see models/prepare)");
  auto tok = stem::load_tokenizer(dir);
  check_fixture(*tok, "smollm2_real");
}

TEST_CASE("tokenizer special tokens come from tokenizer_config.json and generation_config.json") {
  auto id = [](const stem::Tokenizer& t, const char* s) { return t.token_to_id(s).value(); };
  auto llama3 = stem::load_tokenizer(kFixtures / "llama3");
  CHECK(llama3->bos_id() == id(*llama3, "<|begin_of_text|>"));
  CHECK(llama3->eos_ids() == std::vector<int32_t>{id(*llama3, "<|eot_id|>"), id(*llama3, "<|end_of_text|>")});
  CHECK(llama3->special_tokens().adds_bos);
  CHECK(llama3->special_tokens().clean_up_tokenization_spaces);
  CHECK(llama3->bos_token() == "<|begin_of_text|>");
  CHECK(llama3->eos_token() == "<|eot_id|>");
  CHECK(llama3->is_eos(id(*llama3, "<|end_of_text|>")));

  auto qwen2 = stem::load_tokenizer(kFixtures / "qwen2");
  CHECK_FALSE(qwen2->bos_id().has_value());
  CHECK(qwen2->eos_ids() == std::vector<int32_t>{id(*qwen2, "<|im_end|>"), id(*qwen2, "<|endoftext|>")});
  CHECK(qwen2->special_tokens().pad_id == id(*qwen2, "<|endoftext|>"));
  CHECK_FALSE(qwen2->special_tokens().adds_bos);

  auto llama2 = stem::load_tokenizer(kFixtures / "llama2_hf");
  CHECK(llama2->bos_id() == 1);
  CHECK(llama2->eos_ids() == std::vector<int32_t>{2});
  CHECK(llama2->special_tokens().unk_id == 0);
  CHECK(llama2->special_tokens().adds_bos);
  CHECK(llama2->is_special(1));
  CHECK_FALSE(llama2->is_special(3));  // <0x00>: in the vocabulary, not an added token
}
