#include "structured/grammar.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>

namespace stem::structured {

namespace {
// Calls nested deeper than this are dropped (a JSON value nested this deep cannot go on).
constexpr size_t kMaxStack = 128;
// An ambiguous grammar can keep exponentially many derivations alive ("("+ expr with expr itself
// starting with "(": every way to split a run of '(' into levels is a stack): past these bounds
// further stacks and expansions are dropped. Every text still accepted is in the language (only
// derivations are dropped, never invented); the JSON-schema grammars stay far below them.
constexpr size_t kMaxStacks = 64;
constexpr int kMaxExpandSteps = 4096;
}  // namespace

int32_t Grammar::add_state(bool accept) {
  states_.emplace_back();
  states_.back().accept = accept;
  return static_cast<int32_t>(states_.size() - 1);
}

void Grammar::edge(int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
  states_[static_cast<size_t>(from)].edges.push_back({lo, hi, to});
}

void Grammar::call(int32_t from, int32_t rule, int32_t ret) {
  states_[static_cast<size_t>(from)].calls.push_back({rule, ret});
}

std::vector<int32_t> Grammar::literals(int32_t from, const std::vector<std::string>& strings) {
  std::map<std::pair<int32_t, uint8_t>, int32_t> next;  // this call's trie edges
  std::vector<int32_t> ends;
  for (const std::string& s : strings) {
    int32_t at = from;
    for (char c : s) {
      const auto b = static_cast<uint8_t>(c);
      auto [it, added] = next.try_emplace({at, b}, 0);
      if (added) {
        it->second = add_state();
        edge(at, b, it->second);
      }
      at = it->second;
    }
    ends.push_back(at);
  }
  return ends;
}

GrammarMatcher::GrammarMatcher(const Grammar& g) : g_(&g) {
  if (g.root() < 0) throw std::logic_error("grammar without a root rule");
  scratch_.assign(1, g.root());
  steps_ = 0;
  expand(scratch_, 0);
}

void GrammarMatcher::add_stack(const std::vector<int32_t>& stack) {
  for (size_t i = 0; i < offsets_.size(); ++i) {  // few stacks: a linear search dedupes them
    const size_t begin = offsets_[i], end = i + 1 < offsets_.size() ? offsets_[i + 1] : data_.size();
    if (end - begin == stack.size() && std::equal(stack.begin(), stack.end(), data_.begin() + begin)) return;
  }
  if (offsets_.size() >= kMaxStacks) {
    dropped_ = true;
    return;
  }
  offsets_.push_back(static_cast<uint32_t>(data_.size()));
  data_.insert(data_.end(), stack.begin(), stack.end());
}

// Follows calls and returns from the stack's top until every stack waits for a byte.
void GrammarMatcher::expand(std::vector<int32_t>& stack, int depth) {
  if (++steps_ > kMaxExpandSteps) {
    dropped_ = true;
    return;
  }
  const int32_t top = stack.back();
  const GrammarState& s = g_->state(top);
  if (!s.edges.empty()) add_stack(stack);
  if (!s.calls.empty() && (stack.size() >= kMaxStack || depth >= 4 * static_cast<int>(kMaxStack))) dropped_ = true;
  if (stack.size() < kMaxStack && depth < 4 * static_cast<int>(kMaxStack)) {
    for (const CallEdge& c : s.calls) {
      stack.back() = c.ret;
      stack.push_back(c.rule);
      expand(stack, depth + 1);
      stack.pop_back();
      stack.back() = top;
    }
  }
  if (s.accept) {
    if (stack.size() == 1) {
      done_ = true;
    } else {
      stack.pop_back();  // the caller's top is already its return state
      expand(stack, depth + 1);
      stack.push_back(top);
    }
  }
}

bool GrammarMatcher::advance_into(uint8_t byte, GrammarMatcher& into) const {
  into.g_ = g_;
  into.data_.clear();
  into.offsets_.clear();
  into.done_ = false;
  into.dropped_ = false;
  into.steps_ = 0;
  for (size_t i = 0; i < offsets_.size(); ++i) {
    const size_t begin = offsets_[i], end = i + 1 < offsets_.size() ? offsets_[i + 1] : data_.size();
    const GrammarState& s = g_->state(data_[end - 1]);
    for (const ByteEdge& e : s.edges) {
      if (byte < e.lo || byte > e.hi) continue;
      into.scratch_.assign(data_.begin() + static_cast<std::ptrdiff_t>(begin),
                           data_.begin() + static_cast<std::ptrdiff_t>(end));
      into.scratch_.back() = e.to;
      into.expand(into.scratch_, 0);
    }
  }
  return !into.offsets_.empty() || into.done_;
}

bool GrammarMatcher::advance(uint8_t byte) {
  GrammarMatcher next;
  if (!advance_into(byte, next)) return false;
  next.scratch_ = std::move(scratch_);
  *this = std::move(next);
  return true;
}

bool GrammarMatcher::advance(std::string_view bytes) {
  GrammarMatcher m = *this;
  for (char c : bytes)
    if (!m.advance(static_cast<uint8_t>(c))) return false;
  *this = std::move(m);
  return true;
}

std::string GrammarMatcher::key() const {
  std::string k(1, done_ ? '1' : '0');
  for (size_t i = 0; i < offsets_.size(); ++i) {
    const size_t begin = offsets_[i], end = i + 1 < offsets_.size() ? offsets_[i + 1] : data_.size();
    const auto n = static_cast<int32_t>(end - begin);
    k.append(reinterpret_cast<const char*>(&n), sizeof n);
    k.append(reinterpret_cast<const char*>(data_.data() + begin), (end - begin) * sizeof(int32_t));
  }
  return k;
}

}  // namespace stem::structured
