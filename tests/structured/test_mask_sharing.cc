// Shared token masks (issue 19: the mask cost of a long maxLength or {m,n}): the masks that
// TokenGrammar shares between equivalent states, or completes from an r-equivalent state's mask
// with a walk of the long tokens only, equal the unshared trie walk and trying every token, at
// every step of walks through bounded strings (minLength / maxLength edges, escapes, multi-byte
// UTF-8, tokens longer than what the string has left, what follows the string), and a long
// bounded string costs the same few full walks whatever its bound.
#include <nlohmann/json.hpp>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "structured/ebnf.h"
#include "structured/json_schema.h"
#include "structured/regex.h"
#include "structured/token_mask.h"
#include "tests/catch.h"
#include "tests/structured/brute_force_mask.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace stem::structured {
namespace {

using nlohmann::json;

// A small vocabulary with what a string's chain must get right: single characters, JSON escapes
// whole and cut, 2-, 3- and 4-byte characters whole and as lone bytes, tokens that end the string
// and go on after it, and tokens up to 16 bytes (longer than the ends of the chains below).
std::shared_ptr<const TokenVocab> small_vocab() {
  static std::shared_ptr<const TokenVocab> v = [] {
    std::vector<std::string> t = {"a", "b", "s", "\"s\":", "a}", "ab]", "a,", "b\",", "c", "x", "y", "z", "0", "1",
                                  "9", "-", "_", " ", "\"", "\\", "n", "t",
                                  "u", "}", "]", ",", "{", "[", ":", "e", "\\n", "\\\"", "\\\\", "\\u00", "\\u0001",
                                  "\\u00e9", "\\t", "\\u", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "\xC3",
                                  "\xA9", "\xE4\xB8", "\xAD", "\x9F\x98\x80", "ab", "abc", "aaaa", "aaaaaaa", "a\"",
                                  "ab\"}", "\"}", "\",", "\"]", ",\"", "\xC3\xA9\xE4\xB8\xAD" "a",
                                  "\xE4\xB8\xAD\xE4\xB8\xAD\xE4\xB8\xAD", std::string(11, 'a'), std::string(13, 'b') + "\"",
                                  "a\\nbbbbbbbbb", "aaaaa\"}", std::string(16, 'a'), "bbbbbbbbbbbbbb\"}", "\"\"",
                                  "\\u001f\\u001F", "x\xF0\x9F\x98\x80x", "\n", "\x01"};
    t.emplace_back();  // EOS: no bytes
    const auto eos = static_cast<int32_t>(t.size() - 1);
    const auto size = static_cast<int64_t>(t.size()) + 3;  // ids past the tokenizer's: never allowed
    return std::make_shared<const TokenVocab>(std::move(t), std::vector<int32_t>{eos}, size);
  }();
  return v;
}

std::shared_ptr<const TokenVocab> fixture_vocab(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const TokenVocab>> cache;
  auto& v = cache[name];
  if (!v) {
    auto tok = load_tokenizer(test::fixtures_dir() + "/tokenizers/" + name);
    v = TokenVocab::from_tokenizer(*tok, tok->vocab_size());
  }
  return v;
}

// The token bits of a mask (EOS aside: the trie walk adds it where nothing else is allowed).
std::vector<uint32_t> without_eos(std::vector<uint32_t> mask, const TokenVocab& v) {
  for (int32_t id : v.eos_ids()) mask[static_cast<size_t>(id) >> 5] &= ~(1u << (id & 31));
  return mask;
}

std::vector<int32_t> allowed_ids(const uint32_t* mask, const TokenVocab& v) {
  std::vector<int32_t> ids;
  for (int64_t id = 0; id < v.mask_size(); ++id)
    if (mask_allows(mask, static_cast<int32_t>(id))) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<%02X>", c);
      out += buf;
    }
  }
  return out;
}

// Random walks under the shared masks; at every step the shared mask must equal the unshared
// walk's (a TokenGrammar that shares nothing) and, for its tokens, trying every token. Most steps
// prefer tokens without '"', so that walks reach far into the strings.
void check_walks(const Grammar& g, const std::shared_ptr<const TokenVocab>& v, int walks, int steps, bool brute) {
  auto shared = std::make_shared<TokenGrammar>(g, v);
  const TokenGrammar plain(g, v, false);
  REQUIRE_FALSE(shared->share_levels().empty());
  REQUIRE(plain.share_levels().empty());
  for (int w = 0; w < walks; ++w) {
    std::mt19937_64 rng(static_cast<uint64_t>(w) * 7919 + 1);
    TokenMatcher tm(shared);
    std::string text;
    for (int step = 0; step < steps && !tm.finished(); ++step) {
      INFO("walk " << w << " after " << printable(text));
      const uint32_t* got = tm.mask();
      const std::vector<uint32_t> want = plain.compute_mask(tm.matcher());
      REQUIRE(std::vector<uint32_t>(got, got + v->mask_words()) == want);
      if (brute) REQUIRE(without_eos(want, *v) == without_eos(brute_force_mask(*v, tm.matcher()), *v));
      std::vector<int32_t> ids = allowed_ids(got, *v);
      REQUIRE_FALSE(ids.empty());
      if (!tm.can_end() && ids.size() == v->eos_ids().size() && mask_allows(got, v->eos_ids()[0]))
        break;  // a dead end of the vocabulary (no token spells what must come): EOS only
      if (rng() % 8 != 0) {
        std::vector<int32_t> inside;
        for (int32_t id : ids)
          if (!v->bytes(id).empty() && v->bytes(id).find('"') == std::string::npos) inside.push_back(id);
        if (!inside.empty()) ids.swap(inside);
      }
      const int32_t id = ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)];
      REQUIRE(tm.accept(id));
      text += v->bytes(id);
    }
  }
}

json string_schema(int64_t min, int64_t max) {
  json s = {{"type", "string"}};
  if (min > 0) s["minLength"] = min;
  if (max >= 0) s["maxLength"] = max;
  return s;
}

TEST_CASE("shared masks equal the unshared walk and every token tried: bounded strings, small vocabulary") {
  auto v = small_vocab();
  REQUIRE(v->max_token_bytes() == 16);
  // Bounds below, at and above the longest token, minLength near and far from the start.
  const std::vector<std::pair<int64_t, int64_t>> bounds = {{0, 0},  {0, 1},   {1, 1},   {0, 5},   {3, 7},  {0, 15},
                                                           {0, 16}, {0, 17},  {16, 16}, {5, 40},  {17, 33}, {0, 60},
                                                           {40, 40}, {20, -1}, {0, -1},  {30, 90}};
  for (const auto& [min, max] : bounds) {
    INFO("minLength " << min << " maxLength " << max);
    check_walks(compile_json_schema(string_schema(min, max)), v, 6, 120, true);
    // What follows the string: an object's end, an array's next item.
    check_walks(compile_json_schema(json{{"type", "object"},
                                         {"additionalProperties", false},
                                         {"required", {"s"}},
                                         {"properties", {{"s", string_schema(min, max)}, {"t", {{"type", "integer"}}}}}}),
                v, 4, 120, true);
    check_walks(compile_json_schema(json{{"type", "array"}, {"items", string_schema(min, max)}, {"maxItems", 3}}), v, 4,
                120, true);
    // Two strings alive at once (several stacks in one matcher, each with its own chain).
    check_walks(compile_json_schema(json{{"anyOf", {string_schema(min, max), string_schema(0, max < 0 ? 23 : max + 7)}}}),
                v, 4, 120, true);
  }
}

// Moore's refinement done plainly: every state, every round, each byte's multiset of successor
// classes; the classes renumbered by first appearance, so that partitions compare as vectors.
std::vector<std::vector<int32_t>> plain_classes(const Grammar& g, const std::vector<uint32_t>& levels) {
  const size_t n = g.num_states();
  auto renumber = [&](const std::vector<std::vector<uint32_t>>& sigs) {
    std::map<std::vector<uint32_t>, int32_t> ids;
    std::vector<int32_t> out(n);
    for (size_t s = 0; s < n; ++s) out[s] = ids.try_emplace(sigs[s], static_cast<int32_t>(ids.size())).first->second;
    return out;
  };
  std::vector<std::vector<uint32_t>> sigs(n);
  for (size_t s = 0; s < n; ++s) {
    const GrammarState& st = g.state(static_cast<int32_t>(s));
    sigs[s] = {st.accept ? 1u : 0u, st.edges.empty() ? 0u : 1u, st.calls.empty() ? 0u : static_cast<uint32_t>(s) + 1};
  }
  std::vector<int32_t> cls = renumber(sigs);
  std::vector<std::vector<int32_t>> out;
  for (uint32_t r = 1; r <= levels.back(); ++r) {
    for (size_t s = 0; s < n; ++s) {
      std::vector<uint32_t> sig{static_cast<uint32_t>(cls[s])};
      for (int b = 0; b < 256; ++b) {
        std::vector<uint32_t> to;
        for (const ByteEdge& e : g.state(static_cast<int32_t>(s)).edges)
          if (e.lo <= b && b <= e.hi) to.push_back(static_cast<uint32_t>(cls[static_cast<size_t>(e.to)]));
        std::sort(to.begin(), to.end());
        sig.push_back(static_cast<uint32_t>(to.size()));
        sig.insert(sig.end(), to.begin(), to.end());
      }
      sigs[s] = std::move(sig);
    }
    cls = renumber(sigs);
    if (std::find(levels.begin(), levels.end(), r) != levels.end()) out.push_back(cls);
  }
  return out;
}

std::vector<int32_t> first_appearance(const std::vector<int32_t>& cls) {
  std::map<int32_t, int32_t> ids;
  std::vector<int32_t> out;
  for (int32_t c : cls) out.push_back(ids.try_emplace(c, static_cast<int32_t>(ids.size())).first->second);
  return out;
}

TEST_CASE("the refinement that only looks around the last round's splits is Moore's, round by round") {
  const std::vector<uint32_t> levels = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 16, 20, 24};
  std::vector<std::pair<std::string, Grammar>> grammars;
  for (const auto& [min, max] : std::vector<std::pair<int64_t, int64_t>>{{0, 30}, {12, 40}, {5, 5}, {3, -1}})
    grammars.emplace_back("string " + std::to_string(min) + ".." + std::to_string(max),
                          compile_json_schema(json{{"type", "object"},
                                                   {"additionalProperties", false},
                                                   {"required", {"s"}},
                                                   {"properties", {{"s", string_schema(min, max)}, {"n", {{"type", "number"}}}}}}));
  for (const char* pattern : {"a{2,30}", "(\xC3\xA9|\xE4\xB8\xAD){3,20}", "(a|aa){4,24}", "[a-c0-9]{20,40}-x{1,3}"})
    grammars.emplace_back(std::string("regex ") + pattern, compile_regex(pattern));
  grammars.emplace_back("gbnf", compile_gbnf("root ::= x \"}\" x \"]\"\nx ::= [ab]{2,30}"));
  for (const auto& [name, g] : grammars) {
    INFO(name << ", " << g.num_states() << " states");
    const auto ours = detail::bounded_classes(g, levels);
    const auto plain = plain_classes(g, levels);
    REQUIRE(ours.size() == levels.size());
    for (size_t li = 0; li < levels.size(); ++li) {
      INFO("r = " << levels[li]);
      CHECK(first_appearance(ours[li]) == first_appearance(plain[li]));
    }
  }
}

TEST_CASE("equal share keys at level r: the same tokens of at most r bytes, and complete_mask from either") {
  auto v = small_vocab();
  for (const auto& [min, max] : std::vector<std::pair<int64_t, int64_t>>{{0, 40}, {20, 45}, {3, 9}}) {
    for (const char* piece : {"a", "\xC3\xA9", "\\n"}) {
      INFO("minLength " << min << " maxLength " << max << " piece " << printable(piece));
      const Grammar g = compile_json_schema(string_schema(min, max));
      const TokenGrammar tg(g, v);
      const std::vector<uint32_t>& levels = tg.share_levels();
      REQUIRE(levels == std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 16});  // K = 16
      // The matchers at each position of the string (the piece repeated), and their masks.
      std::vector<GrammarMatcher> at;
      GrammarMatcher m(g);
      REQUIRE(m.advance('"'));
      while (true) {
        at.push_back(m);
        if (!m.advance(std::string_view(piece))) break;
      }
      REQUIRE(at.size() == static_cast<size_t>(max) + 1);
      std::vector<std::vector<uint32_t>> masks;
      for (const GrammarMatcher& x : at) masks.push_back(tg.compute_mask(x));
      size_t equal_keys = 0, top_equal = 0;
      for (size_t li = 0; li < levels.size(); ++li)
        for (size_t i = 0; i < at.size(); ++i)
          for (size_t j = 0; j < at.size(); ++j) {
            if (i == j || tg.share_key(at[i], li) != tg.share_key(at[j], li)) continue;
            INFO("positions " << i << " and " << j << ", r = " << levels[li]);
            ++equal_keys;
            top_equal += li + 1 == levels.size();
            for (size_t id = 0; id < v->num_tokens(); ++id)
              if (!v->bytes(static_cast<int32_t>(id)).empty() && v->bytes(static_cast<int32_t>(id)).size() <= levels[li])
                REQUIRE(mask_allows(masks[i].data(), static_cast<int32_t>(id)) ==
                        mask_allows(masks[j].data(), static_cast<int32_t>(id)));
            REQUIRE(tg.complete_mask(at[j], masks[i], li) == masks[j]);
          }
      CHECK(equal_keys > 0);
      // The positions past minLength and 16 or more characters (the longest token's bytes) from
      // maxLength share their class: every ordered pair of them.
      const auto far = static_cast<size_t>(std::max<int64_t>(0, max - 16 - min + 1));
      CHECK(top_equal >= far * (far > 0 ? far - 1 : 0));
    }
  }
}

TEST_CASE("shared masks equal the unshared walk: counted regex repetitions and patterns") {
  auto v = small_vocab();
  for (const char* pattern : {"a{2,30}", "[ab]{0,25}c", "(\xC3\xA9|\xE4\xB8\xAD){3,20}", "a{5,}b{0,18}", "(ab){0,12}a?",
                              "[a-c0-9]{20,40}-x{1,3}", "(a|aa){4,24}"}) {
    INFO("regex " << pattern);
    check_walks(compile_regex(pattern), v, 6, 100, true);
    INFO("as a schema pattern");
    check_walks(compile_json_schema(json{{"type", "string"}, {"pattern", pattern}}), v, 4, 100, true);
  }
  // A called rule whose chain accepts part-way (the caller's "}" may follow from its 2nd 'a' on):
  // its states differ by their accept flags, and tokens such as a"} cross the return.
  for (const char* gbnf : {"root ::= \"[\" [a-z]{0,40} \"]\"", "root ::= x{2,30}\nx ::= \"a\" | \"b\"",
                           "root ::= x \"}\" x \"]\"\nx ::= [ab]{2,30}", "root ::= \"{\" x* \"}\"\nx ::= [a\"]{0,25} \",\""}) {
    INFO("gbnf " << gbnf);
    check_walks(compile_gbnf(gbnf), v, 4, 100, true);
  }
}

// Feeds `piece` until the grammar refuses it (each mask checked against the unshared walk), then
// `end`; returns what the masks cost.
MaskStats walk_chain(const Grammar& g, const std::shared_ptr<const TokenVocab>& v, bool share, const std::string& piece,
                     const std::string& end, size_t* cached = nullptr) {
  auto tg = std::make_shared<TokenGrammar>(g, v, share);
  const TokenGrammar plain(g, v, false);
  auto id_of = [&](const std::string& bytes) {
    for (size_t id = 0; id < v->num_tokens(); ++id)
      if (v->bytes(static_cast<int32_t>(id)) == bytes) return static_cast<int32_t>(id);
    FAIL("no token " << bytes);
    return -1;
  };
  TokenMatcher tm(tg);
  REQUIRE(tm.accept(id_of("\"")));
  int pieces = 0;
  for (; pieces < 2000; ++pieces) {
    const uint32_t* got = tm.mask();
    REQUIRE(std::vector<uint32_t>(got, got + v->mask_words()) == plain.compute_mask(tm.matcher()));
    if (!mask_allows(got, id_of(piece))) break;
    REQUIRE(tm.accept(id_of(piece)));
  }
  INFO(pieces << " pieces");
  REQUIRE(tm.accept(id_of(end)));
  if (cached) *cached = tg->cached_states();
  return tg->stats();
}

TEST_CASE("a long maxLength costs the same few full walks whatever its bound") {
  auto v = small_vocab();
  std::vector<size_t> full;
  for (int64_t n : {60, 200, 1000}) {
    INFO("maxLength " << n);
    const Grammar g = compile_json_schema(string_schema(0, n));
    size_t cached = 0;
    const MaskStats shared = walk_chain(g, v, true, "a", "\"", &cached);
    const MaskStats plain = walk_chain(g, v, false, "a", "\"");
    CHECK(plain.full_walks == static_cast<size_t>(n) + 1);  // one per position, before
    CHECK(plain.partial_walks == 0);
    // One full walk for the positions 16 or more characters from the end (16 bytes: the longest
    // token), one for the last (only '"' may follow: it shares no prefix with the others); the 15
    // between are completed from the first by walking the tokens longer than what they have left.
    CHECK(shared.full_walks == 2);
    CHECK(shared.partial_walks == 15);
    CHECK(cached == 17);
    full.push_back(shared.full_walks + shared.partial_walks);
  }
  CHECK(full[0] == full[2]);
  // With a minLength the positions near the start differ too (the string may not end there), and
  // a piece of two characters (an escape, a 2-byte character) crosses the chain two bytes a step.
  for (const char* piece : {"ab", "\\n", "\xC3\xA9", "\\u001f\\u001F", "\\\""}) {
    INFO(printable(piece));
    const MaskStats a = walk_chain(compile_json_schema(string_schema(40, 300)), v, true, piece, "\"");
    const MaskStats b = walk_chain(compile_json_schema(string_schema(40, 900)), v, true, piece, "\"");
    CHECK(a.full_walks == b.full_walks);
    CHECK(a.partial_walks == b.partial_walks);
    CHECK(a.full_walks + a.partial_walks <= 40);
  }
}

TEST_CASE("a grammar whose walks go past the matcher's bounds stops sharing") {
  // Each 'a' read keeps every split of the run alive: past kMaxStacks live states the matcher
  // drops some, and from the first walk that does, masks are computed per exact state.
  auto v = small_vocab();
  const Grammar g = compile_regex("(a|aa|aaa|aaaa|aaaaa|aaaaaa|aaaaaaa){0,200}b");
  auto shared = std::make_shared<TokenGrammar>(g, v);
  const TokenGrammar plain(g, v, false);
  GrammarMatcher m(g);
  std::vector<uint32_t> spill;
  bool any_dropped = false;
  for (int i = 0; i < 120; ++i) {
    INFO(i << " a's");
    bool dropped = false;
    const uint32_t* got = shared->mask(m, spill);
    const std::vector<uint32_t> want = plain.compute_mask(m, &dropped);
    any_dropped |= dropped;
    if (!any_dropped) CHECK(std::vector<uint32_t>(got, got + v->mask_words()) == want);
    REQUIRE(m.advance(static_cast<uint8_t>('a')));
  }
  REQUIRE(any_dropped);
  CHECK(shared->stats().dropped_walks > 0);
  // After that, every mask is the exact state's own walk.
  const size_t before = shared->stats().full_walks;
  const uint32_t* got = shared->mask(m, spill);
  CHECK(std::vector<uint32_t>(got, got + v->mask_words()) == plain.compute_mask(m));
  CHECK(shared->stats().full_walks == before + 1);
}

TEST_CASE("shared masks equal the unshared walk and every token tried: a real vocabulary") {
  // SmolLM2's tokens on strings whose bounds straddle its longest token, and Qwen2's on one;
  // every step's mask checked against the unshared walk.
  auto v = fixture_vocab("smollm2");
  const size_t k = v->max_token_bytes();
  const auto kl = static_cast<int64_t>(k);
  for (const auto& [min, max] : std::vector<std::pair<int64_t, int64_t>>{{0, kl + 20}, {kl / 2, kl - 3}, {3, 2 * kl}}) {
    INFO("smollm2, longest token " << k << ", minLength " << min << " maxLength " << max);
    check_walks(compile_json_schema(json{{"type", "object"},
                                         {"additionalProperties", false},
                                         {"required", {"s"}},
                                         {"properties", {{"s", string_schema(min, max)}}}}),
                v, 2, 60, false);
  }
  check_walks(compile_json_schema(string_schema(2, 40)), fixture_vocab("qwen2"), 1, 30, false);
}

}  // namespace
}  // namespace stem::structured
