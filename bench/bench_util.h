// Small helpers the whole-model benchmarks share: comma lists, wall time, medians, and the
// "--flag value" loop.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace stem::bench {

// "8192,32768" -> {8192, 32768}; "" -> {} (a part of the benchmark skipped).
inline std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(std::stoll(item));
  return out;
}

// "a,b" -> {"a", "b"}.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Calls take(flag, value) for each "--flag value" pair; a flag without a value is an error. A
// flag that takes none is listed in `switches` and gets an empty value.
inline void parse_flags(int argc, char** argv, const std::vector<std::string>& switches,
                        const std::function<void(const std::string&, const std::string&)>& take) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (std::find(switches.begin(), switches.end(), k) != switches.end()) {
      take(k, "");
      continue;
    }
    if (i + 1 >= argc) throw Error(k + " needs a value");
    take(k, argv[++i]);
  }
}

}  // namespace stem::bench
