#include "bench/eval/eval_score.h"

#include <algorithm>
#include <cctype>

namespace stem::eval {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

double string_match_all(const std::string& prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0;
  const std::string p = lower(prediction);
  double found = 0;
  for (const std::string& r : references) found += p.find(lower(r)) != std::string::npos ? 1 : 0;
  return found / static_cast<double>(references.size());
}

std::string strip(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const size_t a = text.find_first_not_of(space);
  if (a == std::string::npos) return "";
  return text.substr(a, text.find_last_not_of(space) - a + 1);
}

std::string first_line(const std::string& text) {
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find('\n', at), text.size());
    std::string line = strip(text.substr(at, end - at));
    if (!line.empty()) return line;
    at = end + 1;
  }
  return "";
}

size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

double edit_similarity(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  return n == 0 ? 1.0 : 1.0 - static_cast<double>(levenshtein(a, b)) / static_cast<double>(n);
}

}  // namespace stem::eval
