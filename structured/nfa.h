// Internal to structured/: what the regex and GBNF compilers share. Sets of code points, their
// UTF-8 byte-range sequences, a small syntax tree (sets, sequences, alternatives, repetitions,
// calls of grammar rules), and a Thompson NFA built from it and emitted as Grammar states without
// empty edges.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "structured/grammar.h"
#include "structured/regex.h"

namespace stem::structured::detail {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// A set of code points: sorted, disjoint, non-adjacent inclusive ranges.
using CodeSet = std::vector<std::pair<uint32_t, uint32_t>>;

inline CodeSet normalized(CodeSet s) {
  std::sort(s.begin(), s.end());
  CodeSet out;
  for (const auto& r : s) {
    if (!out.empty() && r.first <= out.back().second + 1)
      out.back().second = std::max(out.back().second, r.second);
    else
      out.push_back(r);
  }
  return out;
}

inline CodeSet complement(const CodeSet& s) {
  CodeSet out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : s) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return out;
}

struct Node {
  enum Kind { Set, Concat, Alt, Repeat, Call } kind;
  CodeSet set;                // Set
  std::vector<size_t> kids;   // Concat, Alt; Repeat: one
  int64_t min = 0, max = -1;  // Repeat; max < 0: unbounded
  int32_t rule = -1;          // Call: the grammar rule's index
};

// UTF-8 byte-range sequences covering the code points [lo, hi] (surrogates left out): each a list
// of 1 to 4 (lo, hi) byte ranges.
using ByteSeq = std::vector<std::pair<uint8_t, uint8_t>>;

inline int utf8_length(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

inline std::vector<uint8_t> utf8_encode(uint32_t cp) {
  const int n = utf8_length(cp);
  std::vector<uint8_t> b(static_cast<size_t>(n));
  static const uint8_t lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
  for (int k = n - 1; k > 0; --k) {
    b[static_cast<size_t>(k)] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    cp >>= 6;
  }
  b[0] = static_cast<uint8_t>(n == 1 ? cp : (lead[n] | cp));
  return b;
}

inline void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  if (lo > hi) return;
  if (lo <= 0xDFFF && hi >= 0xD800) {
    if (lo < 0xD800) utf8_sequences(lo, 0xD7FF, out);
    if (hi > 0xDFFF) utf8_sequences(0xE000, hi, out);
    return;
  }
  for (uint32_t edge : {0x7Fu, 0x7FFu, 0xFFFFu})
    if (lo <= edge && hi > edge) {
      utf8_sequences(lo, edge, out);
      utf8_sequences(edge + 1, hi, out);
      return;
    }
  const int n = utf8_length(lo);
  // Split until, from some byte on, every byte's range is full (80-BF): then each byte position
  // ranges independently.
  for (int k = 1; k < n; ++k) {
    const uint32_t m = (1u << (6 * k)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  const std::vector<uint8_t> a = utf8_encode(lo), b = utf8_encode(hi);
  ByteSeq seq;
  for (size_t k = 0; k < a.size(); ++k) seq.push_back({a[k], b[k]});
  out.push_back(std::move(seq));
}

// A Thompson NFA (byte-range and empty edges), made into a Grammar rule without empty edges.
class Nfa {
 public:
  explicit Nfa(bool json_string) : json_(json_string) {}

  int32_t state() {
    if (states_.size() >= kMaxRegexStates)
      throw RegexError("a pattern too large", "regex: the pattern compiles to more than " +
                                                  std::to_string(kMaxRegexStates) +
                                                  " states (repetitions nest too large); simplify it");
    states_.emplace_back();
    return static_cast<int32_t>(states_.size() - 1);
  }
  void eps(int32_t from, int32_t to) { states_[static_cast<size_t>(from)].eps.push_back(to); }
  void byte(int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
    states_[static_cast<size_t>(from)].edges.push_back({lo, hi, to});
  }

  // The path of one byte of a character; in a JSON string, an ASCII byte as JSON writes it.
  void char_byte(int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
    if (!json_ || lo >= 0x80) {
      byte(from, lo, hi, to);
      return;
    }
    // Raw: 0x20-0x7F but '"' and '\\'.
    for (auto [a, b] : {std::pair<int, int>{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x7F}}) {
      const int x = std::max<int>(a, lo), y = std::min<int>(b, hi);
      if (x <= y) byte(from, static_cast<uint8_t>(x), static_cast<uint8_t>(y), to);
    }
    const bool quote = lo <= '"' && hi >= '"', backslash = lo <= '\\' && hi >= '\\', control = lo < 0x20;
    if (!quote && !backslash && !control) return;
    const int32_t esc = state();
    byte(from, '\\', '\\', esc);
    if (quote) byte(esc, '"', '"', to);
    if (backslash) byte(esc, '\\', '\\', to);
    if (!control) return;
    const int c_hi = std::min<int>(hi, 0x1F);
    for (auto [c, letter] : {std::pair<int, char>{'\b', 'b'}, {'\f', 'f'}, {'\n', 'n'}, {'\r', 'r'}, {'\t', 't'}})
      if (c >= lo && c <= c_hi) byte(esc, static_cast<uint8_t>(letter), static_cast<uint8_t>(letter), to);
    // \u00XX, hex digits in either case.
    const int32_t u = state(), u0 = state(), u00 = state();
    byte(esc, 'u', 'u', u);
    byte(u, '0', '0', u0);
    byte(u0, '0', '0', u00);
    for (int high = 0; high <= 1; ++high) {
      const int x = std::max<int>(lo, high * 16), y = std::min<int>(c_hi, high * 16 + 15);
      if (x > y) continue;
      const int32_t h = state();
      byte(u00, static_cast<uint8_t>('0' + high), static_cast<uint8_t>('0' + high), h);
      const int xl = x & 15, yl = y & 15;
      // Low nibble xl..yl: digits, then a-f / A-F.
      if (xl <= 9) byte(h, static_cast<uint8_t>('0' + xl), static_cast<uint8_t>('0' + std::min(yl, 9)), to);
      if (yl >= 10) {
        const int from_l = std::max(xl, 10);
        byte(h, static_cast<uint8_t>('a' + from_l - 10), static_cast<uint8_t>('a' + yl - 10), to);
        byte(h, static_cast<uint8_t>('A' + from_l - 10), static_cast<uint8_t>('A' + yl - 10), to);
      }
    }
  }

  void set(int32_t from, const CodeSet& s, int32_t to) {
    std::vector<ByteSeq> seqs;
    for (const auto& [lo, hi] : s) utf8_sequences(lo, hi, seqs);
    for (const ByteSeq& seq : seqs) {
      int32_t at = from;
      for (size_t k = 0; k < seq.size(); ++k) {
        const int32_t next = k + 1 == seq.size() ? to : state();
        char_byte(at, seq[k].first, seq[k].second, next);
        at = next;
      }
    }
  }

  // Adds the node's automaton between `from` and `to`.
  void build(const std::vector<Node>& nodes, size_t id, int32_t from, int32_t to) {
    const Node& n = nodes[id];
    switch (n.kind) {
      case Node::Set:
        set(from, n.set, to);
        return;
      case Node::Call:
        states_[static_cast<size_t>(from)].calls.push_back({n.rule, to});
        return;
      case Node::Concat: {
        int32_t at = from;
        for (size_t k = 0; k < n.kids.size(); ++k) {
          const int32_t next = k + 1 == n.kids.size() ? to : state();
          build(nodes, n.kids[k], at, next);
          at = next;
        }
        if (n.kids.empty()) eps(from, to);
        return;
      }
      case Node::Alt:
        for (size_t kid : n.kids) {
          const int32_t a = state(), b = state();
          eps(from, a);
          build(nodes, kid, a, b);
          eps(b, to);
        }
        return;
      case Node::Repeat: {
        const size_t kid = n.kids[0];
        int32_t at = from;
        for (int64_t k = 0; k < n.min; ++k) {  // the copies that must be there
          const int32_t next = state();
          build(nodes, kid, at, next);
          at = next;
        }
        if (n.max < 0) {  // then any number: a loop
          const int32_t loop = state(), body_end = state();
          eps(at, loop);
          build(nodes, kid, loop, body_end);
          eps(body_end, loop);
          eps(loop, to);
          return;
        }
        // then up to max - min optional copies, each of which may end the repetition
        for (int64_t k = n.min; k < n.max; ++k) {
          eps(at, to);
          const int32_t next = state();
          build(nodes, kid, at, next);
          at = next;
        }
        eps(at, to);
        return;
      }
    }
  }

  // The automaton from `start` to `final` as Grammar states without empty edges; returns the
  // rule's start state.
  int32_t emit(Grammar& g, int32_t start, int32_t final_state) { return emit(g, {{start, final_state}})[0]; }

  // Several rules (each a start and a final state) that may call each other by index: their
  // Grammar start states.
  std::vector<int32_t> emit(Grammar& g, const std::vector<std::pair<int32_t, int32_t>>& rules) {
    std::vector<int32_t> map(states_.size(), -1);
    std::vector<bool> is_final(states_.size(), false);
    std::vector<int32_t> work;
    auto grammar_state = [&](int32_t s) {
      int32_t& m = map[static_cast<size_t>(s)];
      if (m < 0) {
        m = g.add_state();
        work.push_back(s);
      }
      return m;
    };
    std::vector<int32_t> roots;
    for (const auto& [start, final_state] : rules) {
      roots.push_back(grammar_state(start));
      is_final[static_cast<size_t>(final_state)] = true;
    }
    std::vector<uint32_t> seen(states_.size(), 0);
    uint32_t stamp = 0;
    std::vector<int32_t> stack, closure;
    while (!work.empty()) {
      const int32_t s = work.back();
      work.pop_back();
      ++stamp;
      closure.clear();
      stack.assign(1, s);
      seen[static_cast<size_t>(s)] = stamp;
      while (!stack.empty()) {
        const int32_t t = stack.back();
        stack.pop_back();
        closure.push_back(t);
        for (int32_t e : states_[static_cast<size_t>(t)].eps)
          if (seen[static_cast<size_t>(e)] != stamp) {
            seen[static_cast<size_t>(e)] = stamp;
            stack.push_back(e);
          }
      }
      const int32_t gs = map[static_cast<size_t>(s)];
      for (int32_t t : closure) {
        const State& st = states_[static_cast<size_t>(t)];
        if (is_final[static_cast<size_t>(t)]) g.set_accept(gs);
        for (const ByteEdge& e : st.edges) g.edge(gs, e.lo, e.hi, grammar_state(e.to));
        for (const auto& [rule, to] : st.calls) g.call(gs, roots.at(static_cast<size_t>(rule)), grammar_state(to));
      }
    }
    return roots;
  }

  // What a rule may reach without reading a byte: for each state, the states of its empty-edge
  // closure (the GBNF compiler's nullable and left-recursion checks).
  const std::vector<int32_t>& eps_of(int32_t s) const { return states_[static_cast<size_t>(s)].eps; }
  const std::vector<std::pair<int32_t, int32_t>>& calls_of(int32_t s) const {
    return states_[static_cast<size_t>(s)].calls;
  }

 private:
  struct State {
    std::vector<ByteEdge> edges;
    std::vector<int32_t> eps;
    std::vector<std::pair<int32_t, int32_t>> calls;  // (rule index, where to go on after it)
  };
  bool json_;
  std::vector<State> states_;
};

}  // namespace stem::structured::detail
