// Unicode data for NFC (internal), generated into tokenizer_unicode_data.cc.
#pragma once
#include <cstddef>
#include <cstdint>

namespace stem::tok {
extern const uint32_t kCanonicalDecomposition[][4];
extern const size_t kCanonicalDecompositionSize;
extern const uint32_t kCombiningClassRanges[][3];
extern const size_t kCombiningClassRangesSize;
}  // namespace stem::tok
