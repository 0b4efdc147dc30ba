// The long-context evaluation's scores, as RULER and the code-completion benchmarks define them
// (bench/eval/report.py has the same definitions in Python and checks the two agree):
//   RULER string_match_all: the fraction of the references found in the prediction, both lowered
//     (a substring test: "the numbers are 123 and 456" finds both of ["123", "456"]);
//   next-line completion: the prediction's first non-blank line against the reference line, both
//     stripped of surrounding white space: exact match, and edit similarity
//     1 − Levenshtein(a, b) / max(|a|, |b|) over bytes (1 when both are empty).
#pragma once
#include <string>
#include <vector>

namespace stem::eval {

double string_match_all(const std::string& prediction, const std::vector<std::string>& references);

// The first line of `text` with a non-blank character, stripped.
std::string first_line(const std::string& text);
std::string strip(const std::string& text);
size_t levenshtein(const std::string& a, const std::string& b);
double edit_similarity(const std::string& a, const std::string& b);

}  // namespace stem::eval
