// Python's str operations on UTF-8 text. Python strings are sequences of code points, so lengths,
// indices and slices count code points, and whitespace is Unicode whitespace.
#pragma once
#include "text/utf8.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stem::jinja::text {

std::u32string decode(std::string_view utf8);
std::string encode(std::u32string_view cps);
inline void append_utf8(std::string& out, char32_t cp) { stem::append_utf8(out, static_cast<uint32_t>(cp)); }
bool is_ascii(std::string_view s);
int64_t length(std::string_view s);  // in code points

bool is_space(char32_t c);  // str.isspace()

// str.strip/lstrip/rstrip: with no `chars`, Unicode whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
// str.split / str.rsplit: with no `sep`, runs of whitespace and no empty parts.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view s);
std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
int64_t count(std::string_view s, std::string_view sub);
int64_t find(std::string_view s, std::string_view sub, bool from_right);  // code point index or -1

// Case mapping covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic; other scripts are
// left as they are (no chat template we render cases text in them).
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string swapcase(std::string_view s);
std::string capitalize(std::string_view s);  // str.capitalize()
std::string title(std::string_view s);       // str.title()
std::string jinja_title(std::string_view s);  // the |title filter, which splits words differently

bool is_cased_lower(char32_t c);
bool is_cased_upper(char32_t c);
bool all_chars(std::string_view s, bool (*pred)(char32_t));  // non-empty and every code point
bool is_digit(char32_t c);
bool is_alpha(char32_t c);
bool is_alnum(char32_t c);

}  // namespace stem::jinja::text
