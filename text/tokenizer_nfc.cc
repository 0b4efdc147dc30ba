// Unicode NFC (canonical decomposition, canonical ordering, canonical composition) for the
// NFC normalizer of Qwen2-style tokenizers. Tables: tokenizer_unicode_data.cc.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "text/tokenizer_text.h"
#include "text/tokenizer_unicode_data.h"

namespace stem::tok {
namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr uint32_t kSCount = kLCount * kNCount;

struct NfcTables {
  std::unordered_map<uint32_t, std::pair<uint32_t, uint32_t>> decomposition;
  std::unordered_map<uint64_t, uint32_t> composition;
  // Code points at or above U+0300 that may change under NFC or change their neighbours:
  // non-zero combining class, not NFC themselves, or the second half of a composition.
  std::unordered_set<uint32_t> unsafe;

  NfcTables() {
    for (size_t i = 0; i < kCanonicalDecompositionSize; ++i) {
      const uint32_t* row = kCanonicalDecomposition[i];
      decomposition[row[0]] = {row[1], row[2]};
      if (row[3]) {
        composition[(uint64_t(row[1]) << 32) | row[2]] = row[0];
        unsafe.insert(row[2]);
      } else {
        unsafe.insert(row[0]);
      }
    }
    for (uint32_t v = kVBase; v < kVBase + kVCount; ++v) unsafe.insert(v);
    for (uint32_t t = kTBase + 1; t < kTBase + kTCount; ++t) unsafe.insert(t);
  }
};

const NfcTables& tables() {
  static const NfcTables t;
  return t;
}

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  size_t lo = 0, hi = kCombiningClassRangesSize;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kCombiningClassRanges[mid][1] < cp) lo = mid + 1;
    else hi = mid;
  }
  if (lo < kCombiningClassRangesSize && kCombiningClassRanges[lo][0] <= cp) {
    return static_cast<uint8_t>(kCombiningClassRanges[lo][2]);
  }
  return 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto& d = tables().decomposition;
  auto it = d.find(cp);
  if (it == d.end()) {
    out.push_back(cp);
    return;
  }
  decompose(it->second.first, out);
  if (it->second.second) decompose(it->second.second, out);
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto& c = tables().composition;
  auto it = c.find((uint64_t(a) << 32) | b);
  return it == c.end() ? 0 : it->second;
}

bool quick_check_yes(std::string_view s) {
  bool any_high = false;
  for (unsigned char b : s) any_high |= b >= 0xCC;  // a lead byte of U+0300 or above
  if (!any_high) return true;
  const auto& unsafe = tables().unsafe;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = next_code_point(s, i);
    if (cp < 0x300) continue;
    if (combining_class(cp) != 0 || unsafe.count(cp)) return false;
  }
  return true;
}

}  // namespace

std::string nfc(std::string_view s) {
  if (quick_check_yes(s)) return std::string(s);
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(next_code_point(s, i), cps);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }

  // Canonical composition: a character composes with the last starter unless blocked.
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  ptrdiff_t starter = -1;
  for (uint32_t cp : cps) {
    uint8_t cc = combining_class(cp);
    if (starter >= 0) {
      bool adjacent = static_cast<ptrdiff_t>(out.size()) - 1 == starter;
      uint8_t last_cc = adjacent ? 0 : combining_class(out.back());
      if (adjacent || (last_cc != 0 && last_cc < cc)) {
        if (uint32_t composite = compose_pair(out[starter], cp)) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<ptrdiff_t>(out.size());
    out.push_back(cp);
  }
  std::string result;
  result.reserve(s.size());
  for (uint32_t cp : out) append_utf8(result, cp);
  return result;
}

}  // namespace stem::tok
