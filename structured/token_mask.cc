#include "structured/token_mask.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <map>

#include "text/tokenizer.h"
#include "text/tokenizer_hf.h"
#include "text/tokenizer_text.h"

namespace stem::structured {

namespace {

constexpr size_t kMaxCachedStates = 2048;  // masks of 6 KB for a 49K vocabulary: 12 MB at most

// "<0x0A>" -> 0x0A, else -1.
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

void set_bit(std::vector<uint32_t>& mask, int64_t id) { mask[static_cast<size_t>(id >> 5)] |= 1u << (id & 31); }

// Most signature words the refinement may compute (a grammar whose classes keep splitting
// everywhere, round after round, would cost states x K): past it, the grammar keeps one mask per
// exact state, as without sharing, rather than spend seconds partitioning.
constexpr size_t kMaxPartitionWork = 50'000'000;

// The bounds r whose classes are kept: 1..8, then steps of r/4 (a state r characters from a
// chain's bound walks the tokens longer than at least 4r/5 bytes), then K: 22 levels for K = 128.
std::vector<uint32_t> share_ladder(size_t k) {
  std::vector<uint32_t> levels;
  for (size_t r = 1; r < k; r += std::max<size_t>(1, r / 4)) levels.push_back(static_cast<uint32_t>(r));
  if (k > 0) levels.push_back(static_cast<uint32_t>(k));
  return levels;
}

// Bounded equivalence of the grammar's states (token_mask.h), by Moore's refinement: class_0 by
// (accept, has byte edges, calls: a class of its own), class_r by (class_{r-1}, for each byte the
// sorted classes_{r-1} its edges lead to). Returns the classes at each level of `levels`, or
// nothing when it would cost more than kMaxPartitionWork.
//
// Round r only looks at the states with an edge into a state whose class changed in round r-1:
// the others' successor classes are those they had, so each class's untouched members stay
// together and keep its id, and the touched members go to new classes by their signatures. (A
// chain of n positions splits near its bounds only, a few states a round: the refinement costs
// about the grammar's size, not size x K.)
std::vector<std::vector<int32_t>> partition(const Grammar& g, const std::vector<uint32_t>& levels) {
  const size_t n = g.num_states();
  // Each state's edges as disjoint byte intervals, each with the states it leads to; and the
  // states with an edge into each state.
  struct Interval {
    uint8_t lo, hi;
    uint32_t begin, end;  // into targets
  };
  std::vector<Interval> intervals;
  std::vector<uint32_t> interval_begin(n + 1, 0);
  std::vector<int32_t> targets;
  std::vector<int> cuts;
  std::vector<uint32_t> pred_begin(n + 1, 0);
  for (size_t s = 0; s < n; ++s) {
    interval_begin[s] = static_cast<uint32_t>(intervals.size());
    const auto& edges = g.state(static_cast<int32_t>(s)).edges;
    for (const ByteEdge& e : edges) ++pred_begin[static_cast<size_t>(e.to) + 1];
    cuts.clear();
    for (const ByteEdge& e : edges) {
      cuts.push_back(e.lo);
      cuts.push_back(e.hi + 1);
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      const int lo = cuts[c], hi = cuts[c + 1] - 1;
      const auto begin = static_cast<uint32_t>(targets.size());
      for (const ByteEdge& e : edges)
        if (e.lo <= lo && hi <= e.hi) targets.push_back(e.to);
      if (targets.size() > begin)
        intervals.push_back({static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), begin, static_cast<uint32_t>(targets.size())});
    }
  }
  interval_begin[n] = static_cast<uint32_t>(intervals.size());
  for (size_t s = 0; s < n; ++s) pred_begin[s + 1] += pred_begin[s];
  std::vector<int32_t> preds(pred_begin[n]);
  {
    std::vector<uint32_t> fill(pred_begin.begin(), pred_begin.end() - 1);
    for (size_t s = 0; s < n; ++s)
      for (const ByteEdge& e : g.state(static_cast<int32_t>(s)).edges)
        preds[fill[static_cast<size_t>(e.to)]++] = static_cast<int32_t>(s);
  }

  // The classes as ranges of `order` (each state's place in it: where).
  std::vector<int32_t> cls(n), order(n), where(n);
  std::vector<uint32_t> class_begin, class_end;
  {
    std::map<std::pair<uint32_t, int64_t>, std::vector<int32_t>> initial;
    for (size_t s = 0; s < n; ++s) {
      const GrammarState& st = g.state(static_cast<int32_t>(s));
      const uint32_t flags = (st.accept ? 1u : 0u) | (st.edges.empty() ? 0u : 2u);
      initial[{flags, st.calls.empty() ? -1 : static_cast<int64_t>(s)}].push_back(static_cast<int32_t>(s));
    }
    uint32_t at = 0;
    for (const auto& [key, members] : initial) {
      class_begin.push_back(at);
      for (int32_t s : members) {
        cls[static_cast<size_t>(s)] = static_cast<int32_t>(class_end.size());
        where[static_cast<size_t>(s)] = static_cast<int32_t>(at);
        order[at++] = s;
      }
      class_end.push_back(at);
    }
  }

  // A state's successor classes: for each run of bytes, the sorted classes its edges lead to
  // (adjacent runs with the same classes merged, so that it does not depend on how edges were cut).
  std::vector<uint32_t> list, prev_list;
  auto signature = [&](int32_t s, std::vector<uint32_t>& sig) {
    int open_lo = -1, open_hi = -1;
    prev_list.clear();
    auto flush = [&]() {
      if (open_lo < 0) return;
      sig.push_back(static_cast<uint32_t>(open_lo) | static_cast<uint32_t>(open_hi) << 8 |
                    static_cast<uint32_t>(prev_list.size()) << 16);
      sig.insert(sig.end(), prev_list.begin(), prev_list.end());
    };
    for (uint32_t i = interval_begin[static_cast<size_t>(s)]; i < interval_begin[static_cast<size_t>(s) + 1]; ++i) {
      const Interval& iv = intervals[i];
      list.clear();
      for (uint32_t t = iv.begin; t < iv.end; ++t)
        list.push_back(static_cast<uint32_t>(cls[static_cast<size_t>(targets[t])]));
      std::sort(list.begin(), list.end());
      if (open_lo >= 0 && iv.lo == open_hi + 1 && list == prev_list) {
        open_hi = iv.hi;
        continue;
      }
      flush();
      open_lo = iv.lo;
      open_hi = iv.hi;
      prev_list.swap(list);
    }
    flush();
  };

  std::vector<std::vector<int32_t>> out;
  std::vector<int32_t> changed(n);  // round 1 looks at every state
  for (size_t s = 0; s < n; ++s) changed[s] = static_cast<int32_t>(s);
  bool first = true;
  std::vector<uint32_t> stamp(n, 0);
  std::vector<int32_t> touched;
  std::vector<uint32_t> sig, sig_begin;
  struct Entry {
    int32_t cls, state;
    uint32_t sig;  // index into sig_begin
  };
  std::vector<Entry> entries;
  size_t work = 0;
  for (uint32_t r = 1; r <= levels.back(); ++r) {
    // The states to look at: those with an edge into a changed state (round 1: all).
    touched.clear();
    if (first) {
      touched = changed;
    } else {
      for (int32_t c : changed)
        for (uint32_t p = pred_begin[static_cast<size_t>(c)]; p < pred_begin[static_cast<size_t>(c) + 1]; ++p)
          if (stamp[static_cast<size_t>(preds[p])] != r) {
            stamp[static_cast<size_t>(preds[p])] = r;
            touched.push_back(preds[p]);
          }
    }
    first = false;
    sig.clear();
    sig_begin.clear();
    entries.clear();
    for (int32_t s : touched) {
      entries.push_back({cls[static_cast<size_t>(s)], s, static_cast<uint32_t>(sig_begin.size())});
      sig_begin.push_back(static_cast<uint32_t>(sig.size()));
      signature(s, sig);
    }
    sig_begin.push_back(static_cast<uint32_t>(sig.size()));
    work += sig.size() + touched.size();
    if (work > kMaxPartitionWork) return {};
    auto sig_less = [&](uint32_t a, uint32_t b) {
      return std::lexicographical_compare(sig.begin() + sig_begin[a], sig.begin() + sig_begin[a + 1],
                                          sig.begin() + sig_begin[b], sig.begin() + sig_begin[b + 1]);
    };
    auto sig_equal = [&](uint32_t a, uint32_t b) {
      return sig_begin[a + 1] - sig_begin[a] == sig_begin[b + 1] - sig_begin[b] &&
             std::equal(sig.begin() + sig_begin[a], sig.begin() + sig_begin[a + 1], sig.begin() + sig_begin[b]);
    };
    std::sort(entries.begin(), entries.end(), [&](const Entry& a, const Entry& b) {
      if (a.cls != b.cls) return a.cls < b.cls;
      return sig_less(a.sig, b.sig);
    });
    changed.clear();
    // Each touched class: the groups of equal signature. A touched state never has an untouched
    // one's signature (it leads to a state that got a new class last round, which no untouched
    // state does), so the untouched members keep the class (or, with none, the first group does)
    // and each other group becomes a new class.
    for (size_t i = 0; i < entries.size();) {
      const int32_t c = entries[i].cls;
      size_t j = i;
      while (j < entries.size() && entries[j].cls == c) ++j;
      bool kept = j - i < class_end[static_cast<size_t>(c)] - class_begin[static_cast<size_t>(c)];  // untouched members
      for (size_t a = i; a < j;) {
        size_t b = a;
        while (b < j && sig_equal(entries[a].sig, entries[b].sig)) ++b;
        if (!kept) {
          kept = true;
        } else {
          // Move entries[a..b) to the end of c's range, which becomes the new class.
          const auto fresh = static_cast<int32_t>(class_begin.size());
          uint32_t& end = class_end[static_cast<size_t>(c)];
          for (size_t k = a; k < b; ++k) {
            const int32_t s = entries[k].state;
            const uint32_t from = static_cast<uint32_t>(where[static_cast<size_t>(s)]), to = end - 1;
            const int32_t other = order[to];
            std::swap(order[from], order[to]);
            where[static_cast<size_t>(other)] = static_cast<int32_t>(from);
            where[static_cast<size_t>(s)] = static_cast<int32_t>(to);
            --end;
            cls[static_cast<size_t>(s)] = fresh;
            changed.push_back(s);
          }
          class_begin.push_back(end);
          class_end.push_back(end + static_cast<uint32_t>(b - a));
        }
        a = b;
      }
      i = j;
    }
    if (std::find(levels.begin(), levels.end(), r) != levels.end()) out.push_back(cls);
    if (changed.empty()) {  // no class split: none ever will
      while (out.size() < levels.size()) out.push_back(cls);
      break;
    }
  }
  return out;
}

}  // namespace

std::vector<std::vector<int32_t>> detail::bounded_classes(const Grammar& g, const std::vector<uint32_t>& levels) {
  return partition(g, levels);
}

TokenVocab::TokenVocab(std::vector<std::string> bytes, std::vector<int32_t> eos_ids, int64_t mask_size)
    : bytes_(std::move(bytes)), eos_(std::move(eos_ids)), mask_size_(mask_size) {
  if (bytes_.size() > static_cast<size_t>(mask_size_)) bytes_.resize(static_cast<size_t>(mask_size_));
  std::erase_if(eos_, [&](int32_t id) { return id < 0 || id >= mask_size_; });
  std::vector<int32_t> sorted;
  for (size_t id = 0; id < bytes_.size(); ++id)
    if (!bytes_[id].empty()) {
      sorted.push_back(static_cast<int32_t>(id));
      max_bytes_ = std::max(max_bytes_, bytes_[id].size());
    }
  by_length_ = sorted;
  std::stable_sort(by_length_.begin(), by_length_.end(),
                   [&](int32_t a, int32_t b) { return bytes_[static_cast<size_t>(a)].size() > bytes_[static_cast<size_t>(b)].size(); });
  std::sort(sorted.begin(), sorted.end(), [&](int32_t a, int32_t b) { return bytes_[static_cast<size_t>(a)] < bytes_[static_cast<size_t>(b)]; });
  build(sorted, 0, sorted.size(), 0);
}

size_t TokenVocab::longer_than(size_t r) const {
  return static_cast<size_t>(std::partition_point(by_length_.begin(), by_length_.end(),
                                                  [&](int32_t id) { return bytes(id).size() > r; }) -
                             by_length_.begin());
}

uint32_t TokenVocab::build(const std::vector<int32_t>& sorted, size_t begin, size_t end, size_t depth) {
  const auto idx = static_cast<uint32_t>(nodes_.size());
  nodes_.emplace_back();
  size_t i = begin;
  nodes_[idx].token_begin = static_cast<uint32_t>(tokens_.size());
  while (i < end && bytes(sorted[i]).size() == depth) tokens_.push_back(sorted[i++]);
  nodes_[idx].token_end = static_cast<uint32_t>(tokens_.size());
  if (nodes_[idx].token_end > nodes_[idx].token_begin) nodes_[idx].max_len = static_cast<uint32_t>(depth);
  std::vector<std::pair<size_t, size_t>> groups;
  while (i < end) {
    const char b = bytes(sorted[i])[depth];
    size_t j = i;
    while (j < end && bytes(sorted[j])[depth] == b) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  const auto first = static_cast<uint32_t>(children_.size());
  children_.resize(children_.size() + groups.size());
  nodes_[idx].child_begin = first;
  nodes_[idx].child_end = first + static_cast<uint32_t>(groups.size());
  for (size_t k = 0; k < groups.size(); ++k) {
    const uint8_t b = static_cast<uint8_t>(bytes(sorted[groups[k].first])[depth]);
    const uint32_t child = build(sorted, groups[k].first, groups[k].second, depth + 1);
    children_[first + k] = {b, child};
    nodes_[idx].max_len = std::max(nodes_[idx].max_len, nodes_[child].max_len);
  }
  return idx;
}

std::shared_ptr<const TokenVocab> TokenVocab::from_tokenizer(const Tokenizer& tok, int64_t mask_size) {
  // A byte-level vocabulary spells the space byte as "Ġ"; the others spell it as "▁".
  const bool byte_level = tok.kind() != "sentencepiece" && tok.token_to_id("\xC4\xA0").has_value();
  std::vector<std::string> bytes(static_cast<size_t>(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_special(id)) continue;
    const std::string t = tok.id_to_token(id);
    std::string& out = bytes[static_cast<size_t>(id)];
    if (const int b = byte_token(t); b >= 0) {
      out.assign(1, static_cast<char>(b));
      continue;
    }
    for (size_t i = 0; i < t.size();) {
      const size_t at = i;
      const uint32_t cp = tok::next_code_point(t, i);
      if (byte_level) {
        const int b = tok::byte_of_char(cp);
        if (b < 0) {  // not a byte-level token (an added token written as text): its own UTF-8
          out = t;
          break;
        }
        out.push_back(static_cast<char>(b));
      } else if (cp == 0x2581) {
        out.push_back(' ');
      } else {
        out.append(t, at, i - at);
      }
    }
  }
  return std::make_shared<TokenVocab>(std::move(bytes), tok.eos_ids(), mask_size);
}

void apply_mask(float* logits, int64_t vocab, const uint32_t* mask) {
  if (!mask) return;
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  for (int64_t w = 0; w * 32 < vocab; ++w) {
    const uint32_t bits = mask[w];
    if (bits == ~0u) continue;
    const int64_t end = std::min<int64_t>(32, vocab - w * 32);
    for (int64_t j = 0; j < end; ++j)
      if (!((bits >> j) & 1u)) logits[w * 32 + j] = kMinusInf;
  }
}

TokenGrammar::TokenGrammar(Grammar grammar, std::shared_ptr<const TokenVocab> vocab, bool share_masks)
    : grammar_(std::move(grammar)), vocab_(std::move(vocab)) {
  const size_t k = vocab_->max_token_bytes();
  if (!share_masks || k == 0) return;
  levels_ = share_ladder(k);
  classes_ = partition(grammar_, levels_);
  if (classes_.empty()) {
    levels_.clear();
    return;
  }
  level_masks_.resize(levels_.size() - 1);
}

size_t TokenGrammar::walk(const GrammarMatcher& m, size_t shorter, std::vector<uint32_t>& mask, bool& dropped) const {
  dropped |= m.dropped();
  const TokenVocab& v = *vocab_;
  const auto& nodes = v.nodes();
  const auto& children = v.children();
  const auto& tokens = v.tokens();
  if (nodes.empty() || nodes[0].max_len <= shorter) return 0;
  std::vector<GrammarMatcher> at(v.max_token_bytes() + 1);
  size_t reached = 0;
  // Depth-first over the trie; at[d] is the matcher after the d bytes leading to the node.
  std::function<void(uint32_t, const GrammarMatcher&, size_t)> go = [&](uint32_t node, const GrammarMatcher& cur,
                                                                        size_t depth) {
    const TokenVocab::Node& n = nodes[node];
    for (uint32_t c = n.child_begin; c < n.child_end; ++c) {
      const TokenVocab::Node& child = nodes[children[c].node];
      if (child.max_len <= shorter) continue;  // only tokens the caller has already
      GrammarMatcher& next = at[depth + 1];
      const bool ok = cur.advance_into(children[c].byte, next);
      dropped |= next.dropped();
      if (!ok) continue;
      ++reached;
      if (depth + 1 > shorter)
        for (uint32_t t = child.token_begin; t < child.token_end; ++t) set_bit(mask, tokens[t]);
      go(children[c].node, next, depth + 1);
    }
  };
  go(0, m, 0);
  return reached;
}

namespace {
// EOS when the value is complete (or, defensively, when no token could go on); `mask` holds the
// tokens allowed.
void add_eos(const TokenVocab& v, const GrammarMatcher& m, std::vector<uint32_t>& mask) {
  const bool any = std::any_of(mask.begin(), mask.end(), [](uint32_t w) { return w != 0; });
  if (m.can_end() || !any)
    for (int32_t id : v.eos_ids()) set_bit(mask, id);
}
}  // namespace

std::vector<uint32_t> TokenGrammar::compute_mask(const GrammarMatcher& m, bool* dropped) const {
  std::vector<uint32_t> mask(vocab_->mask_words(), 0);
  bool d = false;
  walk(m, 0, mask, d);
  if (dropped) *dropped = d;
  add_eos(*vocab_, m, mask);
  return mask;
}

std::string TokenGrammar::share_key(const GrammarMatcher& m, size_t li) const {
  const std::vector<int32_t>& cls = classes_.at(li);
  // Each stack as (its length, the states below the top, the top's class); sorted and deduplicated,
  // since the mask is the union over the stacks.
  auto entry = [&](size_t i, std::string& e) {
    const auto [data, len] = m.stack(i);
    const auto n = static_cast<int32_t>(len);
    e.append(reinterpret_cast<const char*>(&n), sizeof n);
    e.append(reinterpret_cast<const char*>(data), (len - 1) * sizeof(int32_t));
    const int32_t c = cls[static_cast<size_t>(data[len - 1])];
    e.append(reinterpret_cast<const char*>(&c), sizeof c);
  };
  std::string key(1, m.can_end() ? '1' : '0');
  if (m.num_stacks() == 1) {  // the common case: nothing to sort
    entry(0, key);
    return key;
  }
  std::vector<std::string> stacks(m.num_stacks());
  for (size_t i = 0; i < stacks.size(); ++i) entry(i, stacks[i]);
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  for (const std::string& e : stacks) key += e;
  return key;
}

std::vector<uint32_t> TokenGrammar::complete_mask(const GrammarMatcher& m, const std::vector<uint32_t>& base,
                                                  size_t li) const {
  size_t reached = 0;
  bool dropped = false;
  return complete(m, base, levels_.at(li), reached, dropped);
}

std::vector<uint32_t> TokenGrammar::complete(const GrammarMatcher& m, const std::vector<uint32_t>& base, size_t r,
                                             size_t& reached, bool& dropped) const {
  const TokenVocab& v = *vocab_;
  std::vector<uint32_t> mask = base;
  // Keep base's tokens of at most r bytes (an r-equivalent state allows the same ones), drop the
  // longer ones and the EOS ids, then walk for the longer ones.
  const auto& ids = v.by_length();
  for (size_t i = 0, n = v.longer_than(r); i < n; ++i)
    mask[static_cast<size_t>(ids[i]) >> 5] &= ~(1u << (ids[i] & 31));
  for (int32_t id : v.eos_ids()) {
    mask[static_cast<size_t>(id) >> 5] &= ~(1u << (id & 31));
    const std::string& b = v.bytes(id);
    if (static_cast<size_t>(id) < v.num_tokens() && !b.empty() && b.size() <= r) {  // an EOS id that is also text
      GrammarMatcher copy = m;
      if (copy.advance(b)) set_bit(mask, id);
      dropped |= copy.dropped();
    }
  }
  reached = walk(m, r, mask, dropped);
  add_eos(v, m, mask);
  return mask;
}

const uint32_t* TokenGrammar::mask(const GrammarMatcher& m, std::vector<uint32_t>& spill) {
  // Exact keys ('x') where masks are not shared, and for a matcher that went past the matcher's
  // bounds, or once any walk did (two equivalent states may then drop different derivations).
  const bool share = !levels_.empty() && !m.dropped() && !unshared_.load(std::memory_order_relaxed);
  std::string key(1, share ? 's' : 'x');
  key += share ? share_key(m, levels_.size() - 1) : m.key();
  const std::vector<uint32_t>* base = nullptr;
  size_t base_level = 0;
  std::vector<std::string> level_keys(share ? levels_.size() - 1 : 0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.lookups;
    if (auto it = cache_.find(key); it != cache_.end()) return it->second->data();
  }
  // A miss: the deepest level at which a computed mask shares m's key gives the short tokens.
  for (size_t li = level_keys.size(); li-- > 0;) level_keys[li] = share_key(m, li);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t li = level_keys.size(); li-- > 0 && !base;)
      if (auto it = level_masks_[li].find(level_keys[li]); it != level_masks_[li].end()) {
        base = it->second;
        base_level = li;
      }
  }
  size_t reached = 0;
  bool dropped = false;
  auto mask = std::make_unique<std::vector<uint32_t>>();
  if (base) *mask = complete(m, *base, levels_[base_level], reached, dropped);
  if (!base || dropped) {
    if (dropped) base = nullptr;
    *mask = std::vector<uint32_t>(vocab_->mask_words(), 0);
    reached += walk(m, 0, *mask, dropped);
    add_eos(*vocab_, m, *mask);
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++(base ? stats_.partial_walks : stats_.full_walks);
  stats_.walked_nodes += reached;
  if (dropped) {
    ++stats_.dropped_walks;
    unshared_ = true;
    if (share) key = "x" + m.key();
    level_keys.clear();
  }
  // Masks handed out must stay valid while their sequences run: a full cache stops growing
  // rather than dropping entries (the state is then recomputed each time it recurs).
  if (cache_.size() >= kMaxCachedStates) {
    spill = std::move(*mask);
    return spill.data();
  }
  const std::vector<uint32_t>* kept = cache_.emplace(std::move(key), std::move(mask)).first->second.get();
  for (size_t li = 0; li < level_keys.size(); ++li) level_masks_[li].emplace(std::move(level_keys[li]), kept);
  return kept->data();
}

size_t TokenGrammar::cached_states() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

MaskStats TokenGrammar::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

TokenMatcher::TokenMatcher(std::shared_ptr<TokenGrammar> grammar)
    : grammar_(std::move(grammar)), matcher_(grammar_->grammar()) {}

const uint32_t* TokenMatcher::mask() {
  if (!finished_) return grammar_->mask(matcher_, spill_);
  if (eos_only_.empty()) {
    eos_only_.assign(grammar_->vocab().mask_words(), 0);
    for (int32_t id : grammar_->vocab().eos_ids()) set_bit(eos_only_, id);
  }
  return eos_only_.data();
}

bool TokenMatcher::accept(int32_t token) {
  const TokenVocab& v = grammar_->vocab();
  const bool eos = std::find(v.eos_ids().begin(), v.eos_ids().end(), token) != v.eos_ids().end();
  if (finished_) return eos;
  if (eos) {
    if (!matcher_.can_end()) return false;
    finished_ = true;
    return true;
  }
  if (token < 0 || static_cast<size_t>(token) >= v.num_tokens() || v.bytes(token).empty()) return false;
  return matcher_.advance(v.bytes(token));
}

}  // namespace stem::structured
