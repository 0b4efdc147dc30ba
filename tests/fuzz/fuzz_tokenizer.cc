// The tokenizers on arbitrary input: the default model's tokenizer.json (byte-level BPE), a
// Metaspace BPE tokenizer.json (Llama-2 style, tests/fixtures) and a SentencePiece BPE
// tokenizer.model with byte fallback (tests/fixtures/tokenizers/sp_bpe). The first byte picks the tokenizer and the
// mode:
//   encode: the rest is text (any bytes, invalid UTF-8 included); every id is in the vocabulary,
//           and decoding the ids works.
//   decode: the rest is little-endian int32 ids (any value, negative and unknown ones included);
//           the incremental detokenizer's pieces join to exactly what decode() gives.
#include <cstring>
#include <memory>
#include <vector>

#include "text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace fs = std::filesystem;

namespace {

std::vector<std::unique_ptr<stem::Tokenizer>> load_all() {
  std::vector<std::unique_ptr<stem::Tokenizer>> out;
  const fs::path model = stem::fuzz::default_model_dir();
  out.push_back(stem::load_tokenizer(fs::exists(model / "tokenizer.json")
                                         ? model
                                         : stem::fuzz::source_dir() / "tests/fixtures/tokenizers/smollm2"));
  out.push_back(stem::load_tokenizer(stem::fuzz::source_dir() / "tests/fixtures/tokenizers/llama2_hf"));
  out.push_back(stem::load_tokenizer(stem::fuzz::source_dir() / "tests/fixtures/tokenizers/sp_bpe/tokenizer.model"));
  return out;
}

const std::vector<std::unique_ptr<stem::Tokenizer>>& tokenizers() {
  static const auto all = load_all();
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto& all = tokenizers();
  const uint8_t mode = data[0];
  const stem::Tokenizer& tok = *all[(mode >> 2) % all.size()];
  const bool special = mode & 1;
  ++data, --size;
  if (!(mode & 2)) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    std::vector<int32_t> ids;
    stem::fuzz::expect_ok_or_error([&] { ids = tok.encode(text, special); });
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
    stem::fuzz::expect_ok_or_error([&] { (void)tok.decode(ids, !special); });
    return 0;
  }
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  // Mostly ids near the vocabulary, so that decoding does real work; the raw values too.
  if (mode & 0x40)
    for (int32_t& id : ids) id = static_cast<int32_t>(static_cast<uint32_t>(id) % (tok.vocab_size() + 16u)) - 8;
  std::string whole;
  bool decoded = false;
  stem::fuzz::expect_ok_or_error([&] {
    whole = tok.decode(ids, special);
    decoded = true;
  });
  stem::fuzz::expect_ok_or_error([&] {
    stem::IncrementalDetokenizer inc(tok, special);
    std::string pieces;
    for (int32_t id : ids) pieces += inc.push(id);
    pieces += inc.flush();
    if (decoded) FUZZ_CHECK(pieces == whole);
  });
  return 0;
}
