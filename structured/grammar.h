// A byte-level grammar as a set of small automata ("rules") that may call each other: a
// pushdown automaton. A state has byte-range edges, call edges (run rule R, then go on at a return
// state) and an accept flag (the rule may end here and return to its caller). JSON schemas compile
// to it (json_schema.h); GrammarMatcher runs it over bytes, nondeterministically: its state is the
// set of call stacks still alive, so alternatives (anyOf, enum values, keys sharing a prefix) need
// no determinization.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stem::structured {

struct ByteEdge {
  uint8_t lo, hi;  // inclusive range
  int32_t to;
};
struct CallEdge {
  int32_t rule;  // the called rule's start state
  int32_t ret;   // where this rule goes on when the callee accepts
};
struct GrammarState {
  std::vector<ByteEdge> edges;
  std::vector<CallEdge> calls;
  bool accept = false;
};

class Grammar {
 public:
  // Building: states are ids into states(); a rule is named by its start state.
  int32_t add_state(bool accept = false);
  void edge(int32_t from, uint8_t lo, uint8_t hi, int32_t to);
  void edge(int32_t from, uint8_t byte, int32_t to) { edge(from, byte, byte, to); }
  void call(int32_t from, int32_t rule, int32_t ret);
  void set_accept(int32_t s) { states_[static_cast<size_t>(s)].accept = true; }
  // Each string as a path from `from`; paths share their common prefixes (a trie, so keys and
  // enum values are matched deterministically). Returns the state each string ends in.
  std::vector<int32_t> literals(int32_t from, const std::vector<std::string>& strings);
  void set_root(int32_t rule) { root_ = rule; }

  int32_t root() const { return root_; }
  const GrammarState& state(int32_t s) const { return states_[static_cast<size_t>(s)]; }
  size_t num_states() const { return states_.size(); }

 private:
  std::vector<GrammarState> states_;
  int32_t root_ = -1;
};

// Where a grammar is after some bytes: every call stack (outermost first, the current state
// last) whose top state has byte edges, and whether the root rule may end here.
class GrammarMatcher {
 public:
  GrammarMatcher() = default;
  explicit GrammarMatcher(const Grammar& g);

  // Consumes one byte; false (and the matcher unchanged) when no stack takes it.
  bool advance(uint8_t byte);
  bool advance(std::string_view bytes);  // all or nothing
  // `into` becomes this matcher after `byte` (its buffers reused); false when nothing takes it.
  bool advance_into(uint8_t byte, GrammarMatcher& into) const;
  // The root rule could end here (the value is complete).
  bool can_end() const { return done_; }
  // Some byte could still follow.
  bool can_continue() const { return !offsets_.empty(); }
  // The last step (or the start) went past the bounds above (grammar.cc) and dropped stacks.
  bool dropped() const { return dropped_; }
  // The state as bytes: equal keys, equal futures (the token-mask cache's key).
  std::string key() const;
  // The live call stacks (outermost state first, the current state last; each top has byte
  // edges): TokenGrammar keys its shared masks by them.
  size_t num_stacks() const { return offsets_.size(); }
  std::pair<const int32_t*, size_t> stack(size_t i) const {
    const size_t begin = offsets_[i], end = i + 1 < offsets_.size() ? offsets_[i + 1] : data_.size();
    return {data_.data() + begin, end - begin};
  }

 private:
  void expand(std::vector<int32_t>& stack, int depth);
  void add_stack(const std::vector<int32_t>& stack);

  const Grammar* g_ = nullptr;
  std::vector<int32_t> data_;      // the stacks, one after another
  std::vector<uint32_t> offsets_;  // start of each stack in data_ (its end: the next one's start)
  bool done_ = false;
  bool dropped_ = false;
  int steps_ = 0;  // expansions in the current step (bounded: grammar.cc)
  std::vector<int32_t> scratch_;
};

}  // namespace stem::structured
