// The BPE model of tokenizer.json: merges by rank (lowest rank first, then leftmost), byte
// fallback, unk (fused or not), ignore_merges, continuing_subword_prefix / end_of_word_suffix,
// and a per-word cache shared by all threads.
#include <cstdio>
#include <queue>

#include "text/tokenizer_hf.h"

namespace stem::tok {
namespace {
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kCacheShardCapacity = 8192;

std::optional<std::string> optional_string(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  return j[key].get<std::string>();
}
}  // namespace

Bpe::Bpe(const json& model, const std::string& where) {
  std::string type = model.contains("type") ? model["type"].get<std::string>() : "BPE";
  if (type != "BPE") fail(where, "model type '" + type + "' is not supported (only BPE)");
  const json& vocab = member(model, "vocab", where);
  if (!vocab.is_object()) fail(where, "vocab must be an object of token -> id");
  int32_t max_id = -1;
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = it.value().get<int32_t>();
    if (id < 0) fail(where, "vocab id of '" + it.key() + "' is negative");
    vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  vocab_r_.resize(max_id + 1);
  has_id_.resize(max_id + 1);
  for (const auto& [tok, id] : vocab_) {
    vocab_r_[id] = tok;
    has_id_[id] = true;
  }
  unk_token_ = optional_string(model, "unk_token");
  prefix_ = optional_string(model, "continuing_subword_prefix");
  suffix_ = optional_string(model, "end_of_word_suffix");
  fuse_unk_ = bool_or(model, "fuse_unk", false);
  byte_fallback_ = bool_or(model, "byte_fallback", false);
  ignore_merges_ = bool_or(model, "ignore_merges", false);
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0) {
    fail(where, "BPE dropout is for training; stemserve encodes deterministically");
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const json& merges = member(model, "merges", where);
  merges_.reserve(merges.size());
  size_t prefix_len = prefix_ ? prefix_->size() : 0;
  uint32_t rank = 0;
  for (const json& m : merges) {
    std::string a, b;
    if (m.is_string()) {  // "a b"
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        fail(where, "merge '" + s + "' is not two tokens separated by one space");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {  // ["a", "b"]
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(where, "merge " + m.dump() + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end()) fail(where, "merge '" + a + " " + b + "' uses a token not in vocab");
    std::string merged = a + b.substr(std::min(prefix_len, b.size()));
    auto im = vocab_.find(merged);
    if (im == vocab_.end()) fail(where, "merge '" + a + " " + b + "' makes '" + merged + "', which is not in vocab");
    // A later duplicate overwrites an earlier one, as collecting into a map does.
    merges_[(uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second)] = {rank++, im->second};
  }
  if (unk_token_ && !vocab_.count(*unk_token_)) fail(where, "unk_token '" + *unk_token_ + "' is not in vocab");
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(vocab_r_.size()) || !has_id_[id]) return nullptr;
  return &vocab_r_[id];
}

std::optional<int32_t> Bpe::unk_id() const {
  if (!unk_token_) return std::nullopt;
  return token_to_id(*unk_token_);
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() >= kMaxCachedWordBytes) {
    merge_word(word, out);
    return;
  }
  CacheShard& shard = cache_[std::hash<std::string_view>{}(word) % cache_.size()];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(word);
    if (it != shard.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t begin = out.size();
  merge_word(word, out);
  std::vector<int32_t> ids(out.begin() + begin, out.end());
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() >= kCacheShardCapacity) shard.map.clear();
  shard.map.emplace(std::string(word), std::move(ids));
}

void Bpe::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> syms;
  syms.reserve(w.size());
  auto add = [&](int32_t id) {
    int32_t n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  };
  int32_t unk = -1;  // a pending unk, so that consecutive ones can fuse
  std::string s;
  for (size_t i = 0; i < w.size();) {
    size_t start = i;
    next_code_point(w, i);
    s.assign(w.substr(start, i - start));
    if (start > 0 && prefix_) s.insert(0, *prefix_);
    if (i == w.size() && suffix_) s += *suffix_;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (unk >= 0) add(unk), unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : s) all &= byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : s) add(byte_ids_[b]);  // a pending unk stays pending, as upstream
        continue;
      }
    }
    if (unk_token_) {
      if (unk >= 0 && !fuse_unk_) add(unk);
      unk = vocab_.at(*unk_token_);
    }
  }
  if (unk >= 0) add(unk);
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Merge {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Merge& o) const {  // std::priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::vector<Merge> initial;
  for (size_t k = 0; k + 1 < syms.size(); ++k) {
    if (auto m = lookup(syms[k].id, syms[k + 1].id)) initial.push_back({m->first, int32_t(k), m->second});
  }
  std::priority_queue<Merge> queue(std::less<Merge>(), std::move(initial));
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    Symbol& left = syms[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = syms[left.next];
    auto m = lookup(left.id, right.id);
    if (!m || m->second != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (auto pm = lookup(syms[left.prev].id, left.id)) queue.push({pm->first, left.prev, pm->second});
    }
    if (left.next >= 0) {
      if (auto nm = lookup(left.id, syms[left.next].id)) queue.push({nm->first, top.pos, nm->second});
    }
  }
  for (const Symbol& sym : syms) {
    if (sym.alive) out.push_back(sym.id);
  }
}

}  // namespace stem::tok
