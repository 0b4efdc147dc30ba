// Regular expressions (a subset) compiled to the byte-level Grammar of structured output, for
// `structured_outputs.regex` / `guided_regex` (the whole text matches) and JSON schema string
// `pattern`, `minLength` and `maxLength` (the string's decoded characters match). Characters are
// Unicode code points, matched as their UTF-8 bytes; every text the grammar accepts is valid UTF-8.
//
// The subset (Python's `re` syntax for it):
//   literals; escaped punctuation (\. \* \( \\ \/ ...); \n \t \r \f \v \0 \xHH \uHHHH
//   .            any character but \n
//   [abc] [a-z] [^...]   classes with ranges and negation; \d \w \s \D \W \S inside them too
//   \d \w \s     [0-9], [A-Za-z0-9_], [ \t\n\r\f\v] (ASCII); \D \W \S their complements
//   (...) (?:...) (?P<name>...) (?<name>...)   groups (capturing or not: the same language)
//   a|b          alternation (an empty side matches the empty string)
//   * + ? {m} {m,} {m,n} {,n}   repetition, n and m at most kMaxRegexRepeat; a lazy `?` after
//                quantifiers is accepted (it does not change which texts match)
//   ^ $          only at the very start / end (the match is always of the whole text)
// Anything else (backreferences, lookaround, word boundaries \b \B, \A \Z, inline flags (?i),
// possessive quantifiers, Unicode properties \p{...}, POSIX classes [[:alpha:]], a '{' that does
// not start a repetition, anchors inside the pattern) throws RegexError naming the construct.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "structured/grammar.h"

namespace stem::structured {

// Most repetitions of one {m,n} (and of the length bounds minLength / maxLength).
constexpr int64_t kMaxRegexRepeat = 1000;
// Most automaton states one pattern may compile to (the copies of repeated parts included).
constexpr size_t kMaxRegexStates = 100000;

class RegexError : public std::runtime_error {
 public:
  // `construct`: what was refused ("lookahead '(?='", "backreference '\\1'", ...); the message says
  // where in the pattern (a 0-based byte offset).
  RegexError(std::string construct, const std::string& message)
      : std::runtime_error(message), construct_(std::move(construct)) {}
  const std::string& construct() const { return construct_; }

 private:
  std::string construct_;
};

// Checks and parses the pattern; throws RegexError. (Used to refuse a bad pattern early.)
void check_regex(std::string_view pattern);

// The grammar of the texts that the whole pattern matches.
Grammar compile_regex(std::string_view pattern);

// The grammar of exactly these strings (`structured_outputs.choice`): their alternation.
Grammar compile_choice(const std::vector<std::string>& choices);

// Adds to `g` a rule (returns its start state) accepting the JSON string literals ("..." with
// JSON's escapes for '"', '\\' and control characters) whose decoded characters the pattern
// matches in full.
int32_t add_json_string_regex(Grammar& g, std::string_view pattern);

// Adds a rule accepting the JSON strings of min_chars to max_chars characters (max_chars < 0: no
// upper bound); both at most kMaxRegexRepeat.
int32_t add_json_string_length(Grammar& g, int64_t min_chars, int64_t max_chars);

}  // namespace stem::structured
